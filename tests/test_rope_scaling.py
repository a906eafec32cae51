"""RoPE scaling kinds against their published formulas, their validation, and models running
beyond the length they were trained at (RoPE, ALiBi; a learned table cannot)."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.config import ConfigError, ModelConfig, RopeScaling
from llmjax.layers.positions import rope_frequencies
from llmjax.models import build_model, init_model


def _rope_cfg(kind, factor=4.0, original=64, head_dim=32, theta=10_000.0):
    scaling = RopeScaling(kind=kind, factor=factor, original_max_seq_len=original)
    return ModelConfig(
        d_model=4 * head_dim, n_heads=4, position="rope", rope_theta=theta, rope_scaling=scaling
    )


def _base_inv_freq(head_dim=32, theta=10_000.0):
    return 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim)


def test_linear_and_ntk_scaling_formulas():
    inv_freq, magnitude = rope_frequencies(_rope_cfg("linear"))
    np.testing.assert_allclose(inv_freq, _base_inv_freq() / 4.0, rtol=1e-6)
    assert magnitude == 1.0
    # NTK-aware: the same RoPE with base theta * factor^(d / (d - 2)).
    inv_freq, magnitude = rope_frequencies(_rope_cfg("ntk"))
    np.testing.assert_allclose(
        inv_freq, _base_inv_freq(theta=10_000.0 * 4.0 ** (32 / 30)), rtol=1e-6
    )
    assert magnitude == 1.0
    assert inv_freq[0] == 1.0 and math.isclose(inv_freq[-1], _base_inv_freq()[-1] / 4, rel_tol=1e-6)


def test_yarn_scaling_formula():
    """YaRN (Peng et al. 2023, reference code find_correction_range / linear_ramp_mask)."""
    d, theta, factor, original, fast, slow = 32, 10_000.0, 4.0, 64, 32.0, 1.0

    def correction_dim(rotations):
        return d * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(correction_dim(fast)), 0)
    high = min(math.ceil(correction_dim(slow)), d - 1)
    ramp = np.clip((np.arange(d // 2) - low) / (high - low), 0, 1)
    base = _base_inv_freq()
    expected = base / factor * ramp + base * (1 - ramp)
    inv_freq, magnitude = rope_frequencies(_rope_cfg("yarn"))
    np.testing.assert_allclose(inv_freq, expected, rtol=1e-6)
    assert math.isclose(magnitude, 0.1 * math.log(4.0) + 1.0)
    # High frequencies are kept, the lowest are interpolated by the full factor.
    assert inv_freq[0] == base[0] and math.isclose(inv_freq[-1], base[-1] / factor, rel_tol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kind="ntk", factor=0.5), "factor must be >= 1"),
        (dict(kind="linear", factor=0.99), "factor must be >= 1"),
        (dict(kind="yarn", factor=4.0), "original_max_seq_len"),
        (dict(kind="yarn", factor=4.0, original_max_seq_len=0), "original_max_seq_len"),
        (dict(kind="nope"), "valid choices"),
    ],
)
def test_bad_rope_scaling_is_rejected(kwargs, match):
    """Values are checked by RopeScaling itself; the kind and its own needs when the model is
    built (a config imports no registry)."""
    with pytest.raises(ConfigError, match=match):
        build_model(ModelConfig(position="rope", rope_scaling=RopeScaling(**kwargs)))


def _logits(cfg, params, tokens):
    return jax.jit(lambda p, x: build_model(cfg).apply({"params": p}, x).logits)(params, tokens)


def test_alibi_and_rope_run_beyond_the_trained_length_but_a_learned_table_cannot(tiny_model):
    long_tokens = jnp.ones((1, 4 * tiny_model.max_seq_len), jnp.int32)
    alibi = dataclasses.replace(tiny_model, position="alibi")
    params, _ = init_model(alibi, jax.random.key(0))
    assert np.isfinite(_logits(alibi, params, long_tokens)).all()

    rope = dataclasses.replace(tiny_model, position="rope")
    params, _ = init_model(rope, jax.random.key(0))
    yarn = dataclasses.replace(
        rope, rope_scaling=RopeScaling("yarn", 4.0, original_max_seq_len=rope.max_seq_len)
    )
    plain, scaled = _logits(rope, params, long_tokens), _logits(yarn, params, long_tokens)
    assert np.isfinite(scaled).all() and not np.allclose(plain, scaled)

    params, _ = init_model(tiny_model, jax.random.key(0))  # position="learned"
    with pytest.raises(ValueError, match="longer than the learned position table"):
        _logits(tiny_model, params, long_tokens)
