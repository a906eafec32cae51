"""Mixed precision: compute dtypes in every layer, dynamic loss scaling, unsupported backends."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.config import PRESETS, ConfigError, apply_overrides
from llmjax.models import build_model, init_model
from llmjax.train.precision import (
    DynamicLossScale,
    PrecisionError,
    check_compute_dtype,
    gradient_fidelity,
)
from llmjax.train.setup import build_training

# ----------------------------------------------------------------------------- dtypes


def _dots(jaxpr):
    """Every dot_general in a jaxpr, sub-jaxprs (scan, remat, custom rules) included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, list | tuple) else [value]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _dots(inner)


@pytest.mark.parametrize(
    "variant",
    [
        {},
        dict(mlp="swiglu", norm="rmsnorm", position="rope", tie_embeddings=False, n_kv_heads=2),
        dict(attention="reference", position="alibi", scan_layers=False),
    ],
    ids=["gpt", "llama", "reference-alibi-loop"],
)
def test_every_matmul_computes_in_bfloat16_and_logits_come_out_float32(tiny_model, variant):
    cfg = dataclasses.replace(tiny_model, dtype="bfloat16", **variant)
    params, _ = init_model(cfg, jax.random.key(0))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))  # param_dtype
    model = build_model(cfg)
    tokens = jnp.zeros((2, 8), jnp.int32)
    jaxpr = jax.make_jaxpr(lambda p: model.apply({"params": p}, tokens).logits)(params)
    dots = list(_dots(jaxpr.jaxpr))
    assert len(dots) >= 4 * cfg.n_layers
    for eqn in dots:
        assert [v.aval.dtype for v in eqn.invars] == [jnp.bfloat16] * 2, eqn
    assert jaxpr.out_avals[0].dtype == jnp.float32
    # The output projection accumulates in float32 (tied or untied).
    assert dots[-1].outvars[0].aval.dtype == jnp.float32


def test_bfloat16_params_when_asked(tiny_model):
    cfg = dataclasses.replace(tiny_model, dtype="bfloat16", param_dtype="bfloat16")
    params, _ = init_model(cfg, jax.random.key(0))
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}


# ----------------------------------------------------------------------------- loss scale


def test_loss_scale_halves_on_overflow_and_grows_after_good_steps():
    scaler = DynamicLossScale(init=2.0**4, growth_interval=3, min_scale=1.0)
    state = scaler.init_state()
    yes, no = jnp.asarray(True), jnp.asarray(False)
    state = scaler.update(state, grads_finite=no, loss_finite=yes)  # overflow: halve
    assert float(state.scale) == 8.0 and int(state.streak) == 0
    for _ in range(3):
        state = scaler.update(state, grads_finite=yes, loss_finite=yes)
    assert float(state.scale) == 16.0 and int(state.good_steps) == 0  # grew after 3 good steps
    state = scaler.update(state, grads_finite=no, loss_finite=no)  # the loss itself: counts
    assert int(state.streak) == 1 and float(state.scale) == 16.0
    state = scaler.update(state, grads_finite=yes, loss_finite=yes)
    assert int(state.streak) == 0
    # At the minimum scale an overflow is no longer the scale's fault.
    low = scaler.init_state().replace(scale=jnp.asarray(1.0))
    low = scaler.update(low, grads_finite=no, loss_finite=yes)
    assert float(low.scale) == 1.0 and int(low.streak) == 1


@pytest.fixture(scope="module")
def fp16_training():
    """A float16 run whose first scale (2^30) overflows the backward pass for sure."""
    cfg = apply_overrides(
        PRESETS["test-tiny"],
        [
            "model.dtype=float16",
            "model.attention=reference",  # XLA:CPU cannot compile the xla kernel in float16
            "model.vocab_size=61",
            "train.loss_scale=dynamic",
            "train.loss_scale_init=1073741824",
            "train.mfu=false",
        ],
    )
    training = build_training(cfg)
    return training, training.train_step()


def _batch(mask_value=1.0):
    tokens = np.random.default_rng(0).integers(0, 61, (4, 33)).astype(np.int32)
    mask = np.full((4, 32), mask_value, np.float32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": mask}


def test_fp16_loss_scaling_recovers_from_overflow_without_counting_it(fp16_training):
    training, step = fp16_training
    state = training.init_state()
    start = jax.device_get(state.params)
    scales, skipped, applied = [], [], 0
    while applied < 2:
        assert len(scales) < 40, f"the scale never recovered: {scales}"
        before = jax.device_get(state.params)
        state, metrics = step(state, _batch())
        m = jax.device_get(metrics)
        scales.append(float(m["loss_scale"]))
        assert int(m["nonfinite_streak"]) == 0  # overflows never count towards divergence
        if int(m["nonfinite_total"]) > len(skipped):  # a skipped step leaves params untouched
            skipped.append(len(scales))
            jax.tree.map(np.testing.assert_array_equal, before, jax.device_get(state.params))
        else:
            applied += 1
    assert scales[0] == 2.0**30 and skipped[0] == 1
    assert all(b == a / 2 for a, b in zip(scales[: len(skipped)], scales[1:], strict=False))
    after = jax.device_get(state.params)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(after))
    changed = jax.tree.map(lambda a, b: bool((a != b).any()), start, after)
    assert any(jax.tree.leaves(changed))


def test_a_non_finite_loss_still_counts_towards_divergence(fp16_training):
    training, step = fp16_training
    # At the minimum scale, so that the good step after the bad ones is applied, not skipped.
    at_min = training.scaler.init_state().replace(scale=jnp.asarray(1.0))
    state = training.init_state().replace(loss_scale=at_min)
    for expected in (1, 2):
        state, metrics = step(state, _batch(mask_value=np.nan))
        assert int(metrics["nonfinite_streak"]) == expected
    state, metrics = step(state, _batch())
    assert int(metrics["nonfinite_streak"]) == 0


# ----------------------------------------------------------------------------- bad input


def test_fp16_on_a_backend_without_support_says_what_to_use():
    with pytest.raises(PrecisionError, match="not supported on tpu.*bfloat16"):
        check_compute_dtype("float16", "reference", backend="tpu")
    # XLA:CPU has no float16 dot with float32 accumulation, which the xla kernel asks for.
    with pytest.raises(PrecisionError, match="'xla' does not compile in float16.*reference"):
        check_compute_dtype("float16", "xla", backend="cpu")
    check_compute_dtype("float16", "reference", backend="cpu")
    check_compute_dtype("bfloat16", "xla", backend="tpu")
    cfg = apply_overrides(PRESETS["test-tiny"], ["model.dtype=float16"])
    with pytest.raises(PrecisionError, match="float16 is not supported on cpu"):
        build_training(cfg)


def test_unknown_loss_scale_mode_lists_the_choices():
    with pytest.raises(ConfigError, match="valid choices: auto, dynamic, none"):
        apply_overrides(PRESETS["test-tiny"], ["train.loss_scale=static"])


def test_gradient_fidelity_counts_underflow():
    ref = {"a": np.array([1e-3, 2e-6, 0.0, -5e-7], np.float32)}
    low = {"a": np.array([1e-3, 0.0, 0.0, 0.0], np.float32)}
    out = gradient_fidelity(ref, low)
    assert out["underflow"] == pytest.approx(2 / 3)
    assert not out["nonfinite"]
    assert out["rel_error"] == pytest.approx(np.hypot(2e-6, 5e-7) / np.linalg.norm(ref["a"]))
