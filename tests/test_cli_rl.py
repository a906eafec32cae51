"""`llmjax ppo` and `llmjax grpo`: a few steps end to end, resuming, and each bad input as one
line with exit status 2."""

from __future__ import annotations

import json

import pytest

from llmjax.cli import main
from llmjax.config import PRESETS, apply_overrides, load_config
from llmjax.train.fit import fit

SMALL = [
    "--max-new-tokens", "8",
    "--prompts-per-rollout", "2",
    "--group-size", "2",
    "--set", "rl.minibatches=2",
    "--set", "rl.ppo_epochs=1",
    "--set", "train.eval_every=1000",
    "--set", "train.mfu=false",
    "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A byte-level base model whose context holds a chat-template prompt and a short reply."""
    root = tmp_path_factory.mktemp("cli-rl")
    corpus = root / "text.txt"
    corpus.write_text("What is 2 + 3? 5\n" * 200)
    cfg = apply_overrides(
        PRESETS["test-tiny"],
        [f"data.path={corpus}", "model.max_seq_len=64", "train.steps=2", "train.eval_every=2"],
    )
    fit(cfg, root / "base", progress=False)
    return root / "base"


def _last_json(capsys) -> dict:
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


@pytest.mark.slow
def test_ppo_runs_a_few_steps_and_resumes(base, tmp_path, capsys):
    out = tmp_path / "ppo"
    argv = ["ppo", "--init-from", str(base), "--reward", "arith", "--prompts", "arith"]
    assert main([*argv, "--out", str(out), "--steps", "4", "--kl-coef", "0.02", *SMALL]) == 0
    record = _last_json(capsys)
    assert record["steps"] == 4 and 0.0 <= record["reward"] <= 1.0
    cfg = load_config(out / "config.json")
    assert cfg.train.objective == "ppo" and cfg.model.value_head
    assert (cfg.rl.reward, cfg.rl.prompts, cfg.rl.kl_coef) == ("arith", "arith", 0.02)
    assert cfg.data.batch_size == 2  # 2 prompts x 2 completions in 2 minibatches
    changed = ["ppo", "--resume", "--out", str(out), "--kl-coef", "0.5"]
    assert main(changed) == 2
    assert "keeps the rl settings" in capsys.readouterr().err
    assert main(["ppo", "--resume", "--out", str(out), "--steps", "6", "--no-progress"]) == 0
    assert _last_json(capsys)["steps"] == 6
    steps = [
        r["step"]
        for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        if r.get("split") == "rl"
    ]
    assert steps == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_grpo_on_a_prompt_file_with_a_count_reward(base, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("hi", "yo", "ok")))
    out = tmp_path / "grpo"
    argv = ["grpo", "--init-from", str(base), "--reward", "count:o", "--prompts", str(prompts)]
    assert main([*argv, "--out", str(out), "--steps", "2", *SMALL]) == 0
    record = _last_json(capsys)
    assert record["steps"] == 2
    cfg = load_config(out / "config.json")
    assert cfg.train.objective == "grpo" and cfg.rl.prompts == str(prompts)


def test_grpo_on_the_builtin_prompts_with_the_gold_reward(base, tmp_path, capsys):
    out = tmp_path / "grpo"
    argv = ["grpo", "--init-from", str(base), "--reward", "gold", "--prompts", "builtin"]
    assert main([*argv, "--out", str(out), "--steps", "2", *SMALL]) == 0
    assert 0.0 <= _last_json(capsys)["reward"] <= 1.5  # the gold reward's range
    cfg = load_config(out / "config.json")
    assert (cfg.rl.reward, cfg.rl.prompts) == ("gold", "builtin")


def _raising(prompts, completions):
    raise RuntimeError("reward server down")


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--reward", "arith", "--prompts", "arith", "--set", "rl.minibatches=3"],
         ["equal minibatches", "divisor of 4"]),
        (["--reward", "arith", "--prompts", "arith", "--max-new-tokens", "60"],
         ["longer than the context", "rl.max_new_tokens"]),
        (["--reward", "tests.test_cli_rl:_raising", "--prompts", "arith"],
         ["reward server down", "What is"]),
        (["--reward", "bogus", "--prompts", "arith"], ["not a reward spec", "arith, gold, count"]),
        (["--reward", "count:xy", "--prompts", "arith"], ["one character"]),
        (["--prompts", "arith"], ["--reward SPEC"]),
        (["--reward", "arith", "--prompts", "{tmp}/none.jsonl"], ["no such file"]),
        (["--reward", "arith", "--prompts", "arith", "--steps", "3"],
         ["train.steps=3", "multiple of the 2"]),
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_one_line(base, tmp_path, capsys, extra, words):
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    argv = ["ppo", "--init-from", str(base), "--out", str(tmp_path / "r"), "--steps", "2"]
    code = main([*argv, *SMALL, *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("llmjax ppo: error:"), err
    for word in words:
        assert word.replace("{tmp}", str(tmp_path)) in err[0], (word, err[0])


def test_resume_refuses_a_new_reward(base, tmp_path, capsys):
    code = main(["grpo", "--resume", "--out", str(tmp_path), "--reward", "arith"])
    assert code == 2
    assert "drop --reward" in capsys.readouterr().err
