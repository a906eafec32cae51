"""Interrupted `llmjax train` processes: SIGTERM and Ctrl-C save and say how to resume, and a
run killed with SIGKILL at any moment resumes to the bit-identical end of the uninterrupted
run (params, optimizer state and metrics records)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from llmjax.train.metrics import TIMING_FIELDS, read_metrics

TIMING = TIMING_FIELDS
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(word_corpus):
    return word_corpus


def train_command(corpus: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "llmjax",
        "train",
        "--preset",
        "test-tiny",
        "--data",
        str(corpus),
        "--steps",
        str(steps),
        "--out",
        str(out),
        "--no-progress",
        "--set",
        "train.log_every=7",  # logging windows that span checkpoints
        "--set",
        "train.checkpoint_every=10",
        "--set",
        "train.eval_every=30",
        "--set",
        "train.eval_batches=1",
        *extra,
    ]


def resume_command(out: Path) -> list[str]:
    """The command an interrupted run prints."""
    return [sys.executable, "-m", "llmjax", "train", "--resume", "--out", str(out), "--no-progress"]


def start(command: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def run(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    process = start(command)
    out, err = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def wait_for_training(process: subprocess.Popen, metrics: Path, timeout: float = 120) -> None:
    """Until the first train record is written (the loop is running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if metrics.exists() and any(r.get("split") == "train" for r in read_metrics(metrics)):
            return
        time.sleep(0.05)
    raise AssertionError("training did not start")


def final_state(out: Path, step: int) -> dict:
    """Every array of the checkpoint at `step`: params, optimizer state, model state."""
    with ocp.PyTreeCheckpointer() as reader:
        return reader.restore((out / "checkpoints" / str(step) / "default").absolute())


def records(out: Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(out / "metrics.jsonl")
    ]


def assert_same_run(a: Path, b: Path, step: int) -> None:
    import jax

    jax.tree.map(np.testing.assert_array_equal, final_state(a, step), final_state(b, step))
    assert records(a) == records(b)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_finishes_the_step_saves_and_prints_the_resume_command(corpus, tmp_path, sig):
    out = tmp_path / "run"
    process = start(train_command(corpus, out, 5000))
    wait_for_training(process, out / "metrics.jsonl")
    process.send_signal(sig)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + sig, err
    assert "Traceback" not in err
    name = signal.Signals(sig).name
    assert f"stopped by {name} after step" in err
    assert f"Resume with: llmjax train --resume --out {out}" in err
    stopped = int(err.split("after step ")[1].split()[0])
    assert 7 <= stopped < 5000
    assert (out / "checkpoints" / str(stopped) / "default").is_dir()
    assert (out / "loss.png").is_file()


def wait_for_step(process: subprocess.Popen, metrics: Path, step: int, timeout: float = 120):
    """Until a record at `step` or later is written (or the process ends)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.exists() and any(r["step"] >= step for r in read_metrics(metrics)):
            return
        time.sleep(0.01)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_ends_bit_identical(corpus, tmp_path):
    steps = 160
    reference = tmp_path / "reference"
    done = run(train_command(corpus, reference, steps))
    assert done.returncode == 0, done.stderr
    # Two kills during start-up (before any checkpoint), eight during training: after a
    # random step's record, plus a random delay, so they land mid-step, mid-save, mid-eval.
    rng = np.random.default_rng(13)
    startup = [("startup", float(t)) for t in rng.uniform(0.3, 4.0, size=2)]
    training = [
        (int(s), float(t))
        for s, t in zip(rng.integers(1, steps, 8), rng.uniform(0, 0.3, 8), strict=True)
    ]
    for trial, (when, delay) in enumerate([*startup, *training]):
        out = tmp_path / f"killed{trial}"
        process = start(train_command(corpus, out, steps))
        if when != "startup":
            wait_for_training(process, out / "metrics.jsonl")
            wait_for_step(process, out / "metrics.jsonl", when)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
        entries = [p.name for p in (out / "checkpoints").glob("*")]
        saved = sorted(int(n) for n in entries if n.isdigit())
        unfinished = sum("orbax-checkpoint-tmp" in n for n in entries)
        print(
            f"trial {trial}: killed after {when} + {delay:.2f} s; steps on disk {saved}, "
            f"unfinished saves {unfinished}"
        )
        if (out / "config.json").exists():
            resumed = run(resume_command(out))
        else:  # killed before it wrote its config: nothing to resume, the same command again
            resumed = run(train_command(corpus, out, steps))
        assert resumed.returncode == 0, (when, delay, resumed.stderr)
        assert "Traceback" not in resumed.stderr
        assert_same_run(reference, out, steps)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_run_resumes_bit_identical(corpus, tmp_path, sig):
    steps = 120
    reference = tmp_path / "reference"
    assert run(train_command(corpus, reference, steps)).returncode == 0
    out = tmp_path / "run"
    process = start(train_command(corpus, out, steps))
    wait_for_training(process, out / "metrics.jsonl")
    process.send_signal(sig)
    process.communicate(timeout=120)
    assert process.returncode == 128 + sig
    resumed = run(resume_command(out))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(reference, out, steps)
