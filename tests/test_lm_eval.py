"""The lm-evaluation-harness adapter: an llmjax run through lm-eval gives the numbers lm-eval's
own `hf` model gives on the same weights (a random GPT-2 and its conversion), on tasks defined
in local YAML over local JSONL: every request type, per-sample log-likelihoods to 1e-4."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

from tests.hf_helpers import CONTEXT, build_tokenizer_json, make_hf_model  # noqa: E402

WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "rain", "stone"]


def _docs(rng, n, make):
    return [make(rng) for _ in range(n)]


def _write_tasks(root):
    rng = np.random.default_rng(0)

    def words(k):
        return " ".join(rng.choice(WORDS, size=k))

    files = {
        "mc": _docs(
            rng,
            12,
            lambda r: {
                "context": words(4),
                "choices": [words(1), words(2), words(3)],
                "gold": int(r.integers(3)),
            },
        ),  # fmt: skip
        "cont": _docs(rng, 10, lambda r: {"context": words(3), "continuation": " " + words(2)}),
        "roll": _docs(rng, 4, lambda r: {"text": words(int(r.integers(5, 60)))}),
        "gen": _docs(rng, 6, lambda r: {"context": words(3), "target": words(1)}),
    }
    specs = {
        "mc": "output_type: multiple_choice\ndoc_to_text: '{{context}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{gold}}'\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n",
        "cont": "output_type: loglikelihood\ndoc_to_text: '{{context}}'\n"
        "doc_to_target: '{{continuation}}'\ntarget_delimiter: ''\n"
        "metric_list:\n  - metric: perplexity\n  - metric: acc\n",
        "roll": "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n"
        "  - metric: bits_per_byte\n",
        "gen": "output_type: generate_until\ndoc_to_text: '{{context}}'\n"
        "doc_to_target: '{{target}}'\ngeneration_kwargs:\n  until: ['\\n']\n"
        "  max_gen_toks: 8\n  do_sample: false\nmetric_list:\n  - metric: exact_match\n",
    }
    for name, docs in files.items():
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps(d) + "\n" for d in docs))
        (root / f"{name}.yaml").write_text(
            f"task: llmjax_test_{name}\ndataset_path: json\n"
            f"dataset_kwargs:\n  data_files:\n    test: {path}\ntest_split: test\n{specs[name]}"
        )
    return [f"llmjax_test_{n}" for n in files]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from llmjax.hf import convert_from_hf
    from llmjax.hf.load import load_tokenizer_file

    root = tmp_path_factory.mktemp("lmeval")
    tok_json = build_tokenizer_json(root / "tokenizer.json")
    vocab = load_tokenizer_file(tok_json, 10_000).vocab_size
    hf_dir = root / "hf"
    model = make_hf_model("gpt2", vocab_size=vocab, seed=1)
    model.save_pretrained(hf_dir, safe_serialization=True)
    (hf_dir / "tokenizer.json").write_text(tok_json.read_text())
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>", "model_max_length": CONTEXT}))  # fmt: skip
    run = convert_from_hf(hf_dir, root / "run")
    task_dir = root / "tasks"
    task_dir.mkdir()
    return {"hf": hf_dir, "run": run, "tasks": _write_tasks(task_dir), "task_dir": task_dir}


def _evaluate(model, model_args, setup):
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=setup["tasks"],
        task_manager=TaskManager(include_path=str(setup["task_dir"])),
        log_samples=True,
        batch_size=4,
        device="cpu",
    )


@pytest.mark.slow
def test_adapter_equals_hf_through_lm_eval(setup, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import llmjax.lm_eval  # noqa: F401  (registers "llmjax")

    ours = _evaluate("llmjax", f"run={setup['run']}", setup)
    theirs = _evaluate("hf", f"pretrained={setup['hf']},dtype=float32", setup)
    for task in setup["tasks"]:
        a, b = ours["samples"][task], theirs["samples"][task]
        assert len(a) == len(b) > 0
        for x, y in zip(sorted(a, key=lambda s: s["doc_id"]), sorted(b, key=lambda s: s["doc_id"]),
                        strict=True):  # fmt: skip
            for rx, ry in zip(x["resps"], y["resps"], strict=True):
                if isinstance(ry[0], str):
                    assert rx[0] == ry[0]
                elif isinstance(ry[0], list | tuple):
                    assert rx[0][0] == pytest.approx(ry[0][0], abs=1e-4)
                    assert bool(rx[0][1]) == bool(ry[0][1])
                else:
                    assert rx[0] == pytest.approx(ry[0], abs=1e-4)
        for metric, value in theirs["results"][task].items():
            if isinstance(value, float) and "stderr" not in metric:
                assert ours["results"][task][metric] == pytest.approx(value, rel=1e-4, abs=1e-4)


@pytest.mark.slow
def test_command_line_runs_lm_eval_with_the_model(setup, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "llmjax.lm_eval", "run", "--model", "llmjax", "--model_args",
         f"run={setup['run']}", "--include_path", str(setup["task_dir"]), "--tasks",
         "llmjax_test_mc", "--output_path", str(out), "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = list(out.rglob("results_*.json"))
    assert written and "llmjax_test_mc" in json.loads(written[0].read_text())["results"]
    bad = subprocess.run(
        [sys.executable, "-m", "llmjax.lm_eval", "run", "--model", "llmjax", "--model_args",
         f"run={tmp_path / 'nowhere'}", "--include_path", str(setup["task_dir"]), "--tasks",
         "llmjax_test_mc"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert bad.returncode != 0
    assert "Traceback" not in bad.stderr and "nowhere" in bad.stderr


@pytest.mark.slow
def test_bench_eval_quick(tmp_path):
    from experiments.bench_eval import main

    report = main(["--quick", "--out-dir", str(tmp_path)])
    assert report["requests"] == 160 and report["max_abs_loglik_diff"] < 1e-4
    assert set(report["median_s"]) == {"llmjax", "hf"}
    assert (tmp_path / "bench_eval" / "metrics.json").exists()
