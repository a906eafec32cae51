"""Positional encodings against their published formulas and defining properties."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from llmjax.config import ModelConfig, RopeScaling
from llmjax.layers.positions import alibi_slopes, apply_rope, rope_frequencies, sinusoidal


def test_sinusoidal_matches_vaswani():
    pos = jnp.arange(10)[None]
    pe = np.asarray(sinusoidal(pos, 16))[0]
    for p in range(10):
        for i in range(8):
            angle = p / 10000 ** (2 * i / 16)
            assert math.isclose(pe[p, 2 * i], math.sin(angle), abs_tol=1e-5)
            assert math.isclose(pe[p, 2 * i + 1], math.cos(angle), abs_tol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    cfg = ModelConfig(position="rope", d_model=64, n_heads=4)
    inv_freq, mag = rope_frequencies(cfg)
    q = jax.random.normal(jax.random.key(0), (1, 1, 1, 16))
    k = jax.random.normal(jax.random.key(1), (1, 1, 1, 16))

    def score(m, n):
        qm = apply_rope(q, jnp.asarray([[m]]), inv_freq, mag)
        kn = apply_rope(k, jnp.asarray([[n]]), inv_freq, mag)
        return float((qm * kn).sum())

    assert math.isclose(score(3, 1), score(10, 8), rel_tol=1e-4)
    assert math.isclose(score(7, 7), score(0, 0), rel_tol=1e-4)
    assert not math.isclose(score(3, 1), score(3, 2), rel_tol=1e-3)
    # A rotation keeps norms.
    rotated = apply_rope(q, jnp.asarray([[5]]), inv_freq, mag)
    np.testing.assert_allclose(jnp.linalg.norm(rotated), jnp.linalg.norm(q), rtol=1e-5)


def test_rope_frequencies_and_linear_scaling():
    cfg = ModelConfig(position="rope", d_model=64, n_heads=4, rope_theta=10000.0)
    inv_freq, _ = rope_frequencies(cfg)
    np.testing.assert_allclose(inv_freq, 1 / 10000 ** (np.arange(0, 16, 2) / 16), rtol=1e-6)
    scaled = ModelConfig(
        position="rope", d_model=64, n_heads=4, rope_scaling=RopeScaling(kind="linear", factor=4.0)
    )
    np.testing.assert_allclose(rope_frequencies(scaled)[0], inv_freq / 4, rtol=1e-6)


def test_alibi_slopes_follow_the_paper():
    np.testing.assert_allclose(alibi_slopes(8), [2.0 ** -(i + 1) for i in range(8)], rtol=1e-6)
    # 12 heads: the 8 slopes of 8 heads, then every other slope of 16 heads.
    expected = [2 ** -(i + 1) for i in range(8)] + [2 ** -(0.5 + i) for i in range(4)]
    np.testing.assert_allclose(alibi_slopes(12), expected, rtol=1e-6)
