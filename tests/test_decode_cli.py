"""`llmjax sample`: a subprocess smoke test on a freshly trained run, --help, bad input."""

import json
import os
import subprocess
import sys

import pytest

from llmjax.cli import main


def _run(*args):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.run(
        [sys.executable, "-m", "llmjax", *args], capture_output=True, text=True, env=env,
        timeout=600,
    )  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from llmjax import apply_overrides, fit, get_preset

    tmp = tmp_path_factory.mktemp("decode-cli")
    data = tmp / "text.txt"
    data.write_text("to be or not to be, that is the question.\n" * 300)
    cfg = apply_overrides(
        get_preset("test-tiny"), [f"data.path={data}", "train.steps=4", "train.eval_every=4"]
    )
    fit(cfg, tmp / "run", progress=False)
    return tmp / "run"


def test_sample_subprocess(run_dir):
    proc = _run(
        "sample", "--run", str(run_dir), "--prompt", "to be", "--prompt", "or", "--num-samples",
        "2", "--max-new-tokens", "6", "--top-k", "20", "--top-p", "0.9", "--seed", "3", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["prompt"] for r in records] == ["to be", "to be", "or", "or"]
    for r in records:
        assert 1 <= len(r["tokens"]) <= 6 and len(r["log_probs"]) == len(r["tokens"])
        assert r["finish_reason"] in ("stop", "length")
        assert all(lp <= 0 for lp in r["log_probs"])
    # Streaming text, greedy, with a stop string and no cache.
    proc = _run(
        "sample", "--run", str(run_dir), "--prompt", "to be", "--max-new-tokens", "8",
        "--temperature", "0", "--stop", "zzz", "--no-cache",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("to be") and proc.stdout.endswith("\n")


def test_sample_in_process_beam_and_defaults(run_dir, capsys):
    # 200 tokens by default, past the context (test-tiny: 32 tokens) by cropping it; so is a
    # prompt longer than the context.
    assert main(["sample", "--run", str(run_dir), "--json", "--temperature", "0"]) == 0
    (record,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert record["prompt"] == "" and len(record["tokens"]) <= 200
    argv = ["sample", "--run", str(run_dir), "--prompt", "x" * 40, "--max-new-tokens", "5"]
    assert main([*argv, "--json", "--ignore-eos"]) == 0
    (record,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(record["tokens"]) == 5
    argv = ["sample", "--run", str(run_dir), "--prompt", "to", "--num-beams", "3"]
    assert main([*argv, "--max-new-tokens", "5", "--json"]) == 0
    (record,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert "score" in record and len(record["tokens"]) <= 5


def test_help_describes_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in (
        "--temperature", "--top-k", "--top-p", "--min-p", "--typical-p", "--repetition-penalty",
        "--presence-penalty", "--frequency-penalty", "--no-repeat-ngram-size", "--num-beams",
        "--length-penalty", "--stop", "--stop-token-id", "--ignore-eos", "--seed",
        "--max-new-tokens", "--min-new-tokens", "--num-samples", "--prompt-file", "--no-cache",
        "--padding", "--json", "--no-stream",
    ):  # fmt: skip
        assert option in text
    assert "ties with the k-th" in text and "(0, 1]" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--top-p", "1.5"], "top_p=1.5 is out of range; valid: (0, 1]"),
        (["--top-k", "-1"], "top_k=-1 is out of range; valid: >= 0"),
        (["--temperature", "-1"], "temperature=-1.0 is out of range; valid: >= 0"),
        (["--min-p", "2"], "min_p=2.0 is out of range; valid: [0, 1]"),
        (["--num-beams", "0"], "num_beams=0 is out of range"),
        (["--num-samples", "0"], "--num-samples=0 is out of range"),
    ],
)
def test_bad_input_exits_2_with_a_message(run_dir, args, message, capsys):
    assert main(["sample", "--run", str(run_dir), *args]) == 2
    assert message in capsys.readouterr().err


def test_unknown_run_directory(tmp_path, capsys):
    assert main(["sample", "--run", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
