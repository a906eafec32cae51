"""`llmjax eval --step N` evaluates that checkpoint of a run, and names the steps it has when
N is not one of them."""

import dataclasses
import json

import jax.numpy as jnp
import pytest

from llmjax.cli import main
from llmjax.config import Config, DataConfig, save_config
from llmjax.data import ByteTokenizer
from llmjax.runs import Checkpointer, RunDir
from tests.hf_helpers import random_params


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory):
    from llmjax.config import PRESETS

    tmp = tmp_path_factory.mktemp("eval-step")
    model = dataclasses.replace(PRESETS["test-tiny"].model, vocab_size=ByteTokenizer().vocab_size)
    cfg = Config(model=model, data=DataConfig(tokenizer="byte", batch_size=2))
    run = RunDir(tmp / "run")
    run.path.mkdir()
    save_config(cfg, run.config)
    ByteTokenizer().save(run.path)
    with Checkpointer(run.checkpoints, keep=None, async_save=False) as ckpt:
        for step in (1, 2):  # different weights at each step
            weights = {"params": random_params(model, step), "model_state": {}, "opt_state": None}
            ckpt.save(step, {"step": jnp.asarray(step, jnp.int32), **weights})
    text = tmp / "text.txt"
    text.write_text("to be or not to be, that is the question.\n" * 8)
    return run.path, text


def test_eval_step_chooses_the_checkpoint(two_step_run, capsys):
    run, text = two_step_run
    rows = {}
    for step in (None, 1, 2):
        argv = ["eval", "--run", str(run), "--text", str(text), "--window", "32"]
        assert main(argv + ([] if step is None else ["--step", str(step)])) == 0
        (rows[step],) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [rows[s]["step"] for s in (None, 1, 2)] == [2, 1, 2]
    assert rows[1]["loss"] != rows[2]["loss"] and rows[None]["loss"] == rows[2]["loss"]


def test_eval_of_a_missing_step_names_the_steps_there_are(two_step_run, capsys):
    run, text = two_step_run
    assert main(["eval", "--run", str(run), "--text", str(text), "--step", "5"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "no intact checkpoint for step 5" in err and "available: [1, 2]" in err
