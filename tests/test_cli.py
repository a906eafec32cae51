"""The `llmjax` command line, in a subprocess (as users run it) and in-process for errors."""

import json
import os
import subprocess
import sys

import pytest

from llmjax.cli import main


def _run(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.run(
        [sys.executable, "-m", "llmjax", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    data = tmp / "text.txt"
    data.write_text("to be or not to be, that is the question.\n" * 400)
    out = tmp / "run"
    proc = _run(
        "train",
        "--preset",
        "test-tiny",
        "--data",
        str(data),
        "--steps",
        "4",
        "--set",
        "train.eval_every=2",
        "--out",
        str(out),
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 4 and summary["run"] == str(out)
    return out, data


def test_train_sample_eval_in_a_subprocess(trained_run):
    out, data = trained_run
    sample = _run(
        "sample", "--run", str(out), "--prompt", "to be", "--max-new-tokens", "8", "--seed", "1"
    )
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("to be") and len(sample.stdout.strip()) > len("to be")
    ev = _run("eval", "--run", str(out), "--data", str(data), "--batches", "2")
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    assert result["step"] == 4 and result["loss"] > 0 and result["bits_per_byte"] > 0


def test_resume_continues_a_run(trained_run):
    out, _ = trained_run
    # The run's saved config is the base: no need to repeat --preset or --data.
    argv = ["train", "--out", str(out), "--resume", "--steps", "6", "--no-progress"]
    assert main(argv) == 0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 6
    assert main([*argv, "--preset", "nano"]) == 2  # a preset cannot replace a run's config


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--preset", "nope"], "unknown preset 'nope'; valid presets"),
        (["train", "--set", "model.n_layers=x"], "model.n_layers expects an integer"),
        (["train", "--set", "model.d_model=130"], "d_model=130 is not divisible by n_heads=4"),
        (["train", "--data", "/no/such/file.txt", "--out", "{tmp}/r"], "/no/such/file.txt"),
        (["train", "--resume"], "--resume needs --out"),
        (["sample", "--run", "{tmp}/missing"], "does not exist"),
        (["eval", "--run", "{tmp}"], "not an llmjax run directory"),
    ],
)
def test_bad_input_exits_2_with_a_message(argv, message, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_existing_out_directory_is_refused(trained_run, capsys):
    out, _ = trained_run
    assert main(["train", "--preset", "test-tiny", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_help_lists_subcommands():
    proc = _run("--help")
    assert proc.returncode == 0
    for command in ("train", "sample", "eval", "presets"):
        assert command in proc.stdout
