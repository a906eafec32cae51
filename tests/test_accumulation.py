"""Gradient accumulation: micro-batches summed inside the step equal the large batch."""

import dataclasses

import jax
import numpy as np
import pytest

from llmjax.config import PRESETS, ConfigError, apply_overrides
from llmjax.train.setup import build_training
from llmjax.train.step import split_micro_batches


def _cfg(*overrides):
    cfg = apply_overrides(
        PRESETS["test-tiny"],
        ["model.n_heads=8", "model.vocab_multiple=8", "data.batch_size=8", "optim.eps=1e-6",
         "optim.warmup_steps=0", "optim.schedule=constant", "train.mfu=false", *overrides],
    )  # fmt: skip
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=61))


def _batch():
    """Rows with very different numbers of unmasked tokens, so every micro-batch has its own
    token count: a mean of per-micro-batch means would weight tokens unequally."""
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 61, (8, 33)).astype(np.int32)
    lengths = np.array([32, 3, 17, 1, 30, 8, 25, 12])
    mask = (np.arange(32)[None] < lengths[:, None]).astype(np.float32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": mask}


def _train(cfg, steps=2):
    training = build_training(cfg)
    state, step = training.init_state(), training.train_step()
    batch = _batch()
    for _ in range(steps):
        state, metrics = step(state, training.parallel.put(batch, batch["inputs"].shape))
    return float(metrics["loss"]), jax.device_get(training.parallel.host_state(state).params)


@pytest.fixture(scope="module")
def large_batch():
    return _train(_cfg())


def _assert_same(a, b):
    assert a[0] == pytest.approx(b[0], abs=1e-5)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-5), a[1], b[1])


def test_micro_batches_are_strided_rows():
    micro = split_micro_batches({"x": np.arange(8)[:, None]}, 4)["x"]
    assert micro.shape == (4, 2, 1)
    assert micro[:, :, 0].tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]


def test_accumulation_equals_the_large_batch(large_batch):
    _assert_same(large_batch, _train(_cfg("train.grad_accum=4")))
    # The equality is not an accident of equal micro-batch sizes:
    mask = np.asarray(split_micro_batches(_batch(), 4)["mask"])
    counts = mask.sum(axis=(1, 2))
    assert len(set(counts.tolist())) == 4


@pytest.mark.slow
def test_accumulation_on_a_mesh_equals_the_large_batch(large_batch):
    """Each micro-batch (4 rows) still splits over data x fsdp = 4 devices."""
    _assert_same(
        large_batch, _train(_cfg("train.grad_accum=2", "parallel.mesh=data=2,fsdp=2,tensor=2"))
    )


def test_batch_must_divide_into_micro_batches():
    with pytest.raises(ConfigError, match=r"batch_size=8 is not divisible by train.grad_accum=3"):
        _cfg("train.grad_accum=3")
