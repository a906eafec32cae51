"""Two real processes (4 CPU devices each, joined by jax.distributed) train like one process."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from llmjax.cli import main
from llmjax.runs import load_run

MESH = "data=2,fsdp=2,tensor=2"


def _train_args(corpus, out):
    return [
        "train", "--preset", "test-tiny", "--data", str(corpus), "--out", str(out),
        "--steps", "4", "--mesh", MESH, "--no-progress",
        "--set", "data.batch_size=8", "--set", "model.n_heads=8", "--set", "optim.eps=1e-6",
        "--set", "train.checkpoint_every=2", "--set", "train.eval_every=4",
        "--set", "train.eval_batches=1", "--set", "train.log_every=1", "--set", "train.mfu=false",
    ]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one(tiny_text_file, tmp_path):
    flags = os.environ.get("XLA_FLAGS", "").replace("device_count=8", "device_count=4")
    env = {**os.environ, "XLA_FLAGS": flags, "LLMJAX_COMPILE_CACHE": "off"}
    command = [sys.executable, "-m", "llmjax.cli", *_train_args(tiny_text_file, tmp_path / "multi")]
    command += ["--coordinator", f"localhost:{_free_port()}", "--num-processes", "2"]
    procs = [
        subprocess.Popen(
            [*command, "--process-id", str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    # Process 0 alone reports and writes the metrics; every process wrote its checkpoint shards.
    assert '"steps": 4' in outputs[0] and '"steps": 4' not in outputs[1]

    assert main(_train_args(tiny_text_file, tmp_path / "single")) == 0  # 8 devices, one process
    multi, single = load_run(tmp_path / "multi"), load_run(tmp_path / "single")
    assert multi.step == single.step == 4
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
        single.params,
        multi.params,
    )
    lines = (tmp_path / "multi" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len((tmp_path / "single" / "metrics.jsonl").read_text().splitlines())
