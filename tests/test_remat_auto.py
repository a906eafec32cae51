"""model.remat=auto: what it picks per platform and shape, that it says so, and that the pick
changes memory, not numbers."""

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.config import PRESETS
from llmjax.models import build_model, init_model
from llmjax.models import remat as remat_mod


@pytest.fixture(autouse=True)
def _fresh_log(monkeypatch):
    monkeypatch.setattr(remat_mod, "_said", set())


def test_default_is_auto():
    assert PRESETS["nano"].model.remat == "auto"
    assert PRESETS["medium"].model.remat == "auto"


def test_cpu_picks_by_activation_size():
    nano, medium = PRESETS["nano"], PRESETS["medium"]
    small = remat_mod.layer_activation_bytes(nano.model, nano.data.batch_size, nano.seq_len)
    big = remat_mod.layer_activation_bytes(medium.model, medium.data.batch_size, medium.seq_len)
    assert small < remat_mod.CPU_REMAT_FROM_BYTES < big
    # d=384, T=256, batch 64: [B, T, .] tensors plus the two [B, H, T, T] attention maps
    assert big == 4 * 64 * 256 * (10 * 384 + 3 * 1536 + 2 * 6 * 256)
    assert remat_mod.choose(nano.model, nano.data.batch_size, nano.seq_len) == "none"
    assert remat_mod.choose(medium.model, 64, 256) == "dots_no_batch"


def test_choice_is_logged_once_per_shape(caplog):
    cfg = PRESETS["medium"].model
    with caplog.at_level(logging.INFO, logger="llmjax.models"):
        for _ in range(3):
            remat_mod.choose(cfg, 64, 256)
        remat_mod.choose(cfg, 2, 256)
    lines = [r.getMessage() for r in caplog.records if r.name == "llmjax.models"]
    assert len(lines) == 2
    assert "model.remat=auto chose dots_no_batch" in lines[0] and "batch 64 x 256" in lines[0]
    assert "chose none" in lines[1]


@pytest.mark.parametrize("backend,limit,want", [
    ("gpu", 80e9, "none"), ("gpu", 4e9, "dots_no_batch"), ("tpu", 1e8, "full"), ("gpu", 0, "none"),
])  # fmt: skip
def test_accelerators_pick_by_device_memory(monkeypatch, backend, limit, want):
    cfg = PRESETS["medium"].model  # 6 layers x ~755 MB at batch 64
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    monkeypatch.setattr(remat_mod, "_device_memory", lambda: limit)
    assert remat_mod.choose(cfg, 64, 256) == want


def _grad_and_memory(cfg, params, tokens):
    model = build_model(cfg)

    def loss(p):
        return model.apply({"params": p}, tokens).logits.mean()

    step = jax.jit(jax.value_and_grad(loss)).lower(params).compile()
    value, grads = step(params)
    return value, grads, step.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("unroll", [1, 2], ids=["rolled", "unrolled"])
def test_auto_above_threshold_recomputes_with_same_numbers(monkeypatch, unroll):
    """Forced over the threshold, auto is dots_no_batch: same loss and gradients as keeping
    everything, less temporary memory, also when the scan is unrolled (where XLA would merge the
    recomputation away without a barrier; a fully unrolled stack, unroll = n_layers, keeps
    everything whatever the policy)."""
    base = dataclasses.replace(
        PRESETS["test-tiny"].model, vocab_size=61, n_layers=4, scan_unroll=unroll, remat="none"
    )
    params, _ = init_model(base, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (8, 32), 0, base.vocab_size, jnp.int32)
    v0, g0, mem0 = _grad_and_memory(base, params, tokens)
    monkeypatch.setattr(remat_mod, "CPU_REMAT_FROM_BYTES", 0)
    v1, g1, mem1 = _grad_and_memory(dataclasses.replace(base, remat="auto"), params, tokens)
    np.testing.assert_allclose(v0, v1, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), g0, g1)
    assert mem1 < mem0
