"""Positional encodings (learned, sinusoidal, RoPE, ALiBi, none) as pure functions.

A position scheme can enter the model in three places, and `PositionEncoding` says which:
added to the token embeddings (learned, sinusoidal), rotating queries and keys (RoPE), or as a
per-head linear bias on attention logits (ALiBi). Without any, a causal transformer can still
infer order a little from the causal mask itself ("none").
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llmjax.layers.common import constrain, dtype_of, param
from llmjax.registry import Registry
from llmjax.typing import Array, Float, Int

POSITIONS: Registry = Registry("position encoding")
ROPE_SCALINGS: Registry = Registry("rope scaling")
# Kinds whose frequencies also depend on how long the sequence is: kind -> fn(inv_freq, seq_len_B,
# cfg) -> inv_freq [B, 1, H/2], applied after the kind's ROPE_SCALINGS entry.
ROPE_LENGTH_SCALINGS: Registry = Registry("rope scaling by sequence length")


@dataclass(frozen=True)
class PositionEncoding:
    """Where a position scheme acts: an embedding module, a q/k rotation, or ALiBi slopes."""

    embedding: type[nn.Module] | None = None  # Module(cfg)(positions_BxT) -> BxTxD
    rotate: Callable | None = None  # rotate(x_BxTxNxH, positions_BxT, cfg) -> same shape
    slopes: Callable | None = None  # slopes(cfg) -> Float[N] per-head ALiBi slopes
    # Whether positions beyond max_seq_len are meaningful (a learned table has no rows there).
    extrapolates: bool = True


# ----------------------------------------------------------------------------- sinusoidal


def sinusoidal(positions_BxT: Int[Array, "B T"], d_model: int) -> Float[Array, "B T D"]:
    """Vaswani et al.: PE[p, 2i] = sin(p / 10000^(2i/D)), PE[p, 2i+1] = cos(same)."""
    half = d_model // 2
    freq = jnp.exp(-math.log(10_000.0) * jnp.arange(half, dtype=jnp.float32) * 2 / d_model)
    angle_BxTxHalf = positions_BxT[..., None].astype(jnp.float32) * freq
    pe = jnp.stack([jnp.sin(angle_BxTxHalf), jnp.cos(angle_BxTxHalf)], axis=-1)
    pe = pe.reshape(*positions_BxT.shape, 2 * half)
    if d_model % 2:
        pe = jnp.pad(pe, [(0, 0)] * (pe.ndim - 1) + [(0, 1)])
    return pe


class SinusoidalEmbedding(nn.Module):
    """Adds fixed sinusoids; no parameters."""

    cfg: object

    def __call__(self, positions_BxT: jax.Array) -> jax.Array:
        return sinusoidal(positions_BxT, self.cfg.d_model).astype(dtype_of(self.cfg.dtype))


class LearnedEmbedding(nn.Module):
    """A trained table of max_seq_len position vectors (GPT-2's `wpe`)."""

    cfg: object

    @nn.compact
    def __call__(self, positions_BxT: jax.Array) -> jax.Array:
        cfg = self.cfg
        table_PxD = param(
            self,
            "embedding",
            (cfg.max_seq_len, cfg.d_model),
            (None, "embed"),
            nn.initializers.normal(cfg.init_std),
            cfg.param_dtype,
        )
        # Gathered whole before the lookup (see Embedder.encode).
        table_PxD = constrain(table_PxD, (None, None))
        return jnp.take(table_PxD, positions_BxT, axis=0).astype(dtype_of(cfg.dtype))


# ----------------------------------------------------------------------------- RoPE


def rope_frequencies(cfg) -> tuple[np.ndarray, float]:
    """Inverse frequencies (H/2,) after the configured scaling, and the cos/sin magnitude."""
    head_dim = cfg.rotary_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    scale_fn = ROPE_SCALINGS.get(cfg.rope_scaling.kind)
    inv_freq, magnitude = scale_fn(inv_freq, cfg)
    return np.asarray(inv_freq, np.float32), float(magnitude)


@ROPE_SCALINGS.register("none")
def _no_scaling(inv_freq: np.ndarray, cfg) -> tuple[np.ndarray, float]:
    return inv_freq, 1.0


@ROPE_SCALINGS.register("linear")
def _linear_scaling(inv_freq: np.ndarray, cfg) -> tuple[np.ndarray, float]:
    """Position interpolation (Chen et al. 2023): positions are divided by the factor."""
    return inv_freq / cfg.rope_scaling.factor, 1.0


@ROPE_SCALINGS.register("llama3")
def _llama3_scaling(inv_freq: np.ndarray, cfg) -> tuple[np.ndarray, float]:
    """Llama 3.1: wavelengths longer than original/low_freq_factor are interpolated by the
    factor, those shorter than original/high_freq_factor kept, a linear ramp in between."""
    s = cfg.rope_scaling
    original = s.original_max_seq_len or cfg.max_seq_len
    rotations = original * inv_freq / (2 * math.pi)  # turns over the original context
    keep = np.clip(
        (rotations - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor), 0.0, 1.0
    )
    return (1.0 - keep) * inv_freq / s.factor + keep * inv_freq, 1.0


@ROPE_SCALINGS.register("ntk")
def _ntk_scaling(inv_freq: np.ndarray, cfg) -> tuple[np.ndarray, float]:
    """NTK-aware scaling (bloc97, 2023): theta -> theta * factor^(H / (H - 2)).

    The highest frequency is kept (local order stays sharp) while the lowest is slowed by the
    full factor, so the slowest rotation never turns further than it did in training.
    """
    head_dim = cfg.rotary_dim
    exponent = np.arange(0, head_dim, 2, dtype=np.float64) / (head_dim - 2)
    return inv_freq * cfg.rope_scaling.factor ** (-exponent), 1.0


def _yarn_correction_dim(rotations: float, head_dim: int, theta: float, length: int) -> float:
    """The dimension index whose wavelength fits `rotations` times into `length` tokens."""
    return head_dim * math.log(length / (rotations * 2 * math.pi)) / (2 * math.log(theta))


@ROPE_SCALINGS.register("yarn")
def _yarn_scaling(inv_freq: np.ndarray, cfg) -> tuple[np.ndarray, float]:
    """YaRN (Peng et al. 2023): interpolate low frequencies, keep high ones, ramp between.

    Dimensions rotating more than beta_fast times over the original context keep their
    frequency, those rotating fewer than beta_slow times are divided by the factor, and a linear
    ramp blends the band in between; cos/sin are scaled by 0.1 ln(factor) + 1 so attention
    logits keep their magnitude (the same as HF transformers' "yarn").
    """
    sc, head_dim = cfg.rope_scaling, cfg.rotary_dim
    low = math.floor(
        _yarn_correction_dim(sc.beta_fast, head_dim, cfg.rope_theta, sc.original_max_seq_len)
    )
    high = math.ceil(
        _yarn_correction_dim(sc.beta_slow, head_dim, cfg.rope_theta, sc.original_max_seq_len)
    )
    low, high = max(low, 0), min(high, head_dim - 1)
    ramp = (np.arange(head_dim // 2, dtype=np.float64) - low) / ((high - low) or 1e-3)
    extrapolate = 1.0 - np.clip(ramp, 0.0, 1.0)  # 1: keep the frequency, 0: interpolate it
    scaled = inv_freq / sc.factor * (1.0 - extrapolate) + inv_freq * extrapolate
    return scaled, 0.1 * math.log(sc.factor) + 1.0


@ROPE_SCALINGS.register("dynamic")
def _dynamic_base(inv_freq: np.ndarray, cfg) -> tuple[np.ndarray, float]:
    """Dynamic NTK keeps the plain frequencies up to the original context (see below)."""
    return inv_freq, 1.0


@ROPE_LENGTH_SCALINGS.register("dynamic")
def _dynamic_ntk(inv_freq: np.ndarray, seq_len_B: Int[Array, " B"], cfg) -> jax.Array:
    """Dynamic NTK (emozilla, 2023; HF transformers' "dynamic"): past the original context L0,
    a sequence of length L uses base theta * (factor * L / L0 - factor + 1)^(H / (H - 2)).

    L is each row's largest position + 1 in this call: a one-token decoding step uses the
    frequencies of the sequence so far while the cached keys keep the ones they were rotated
    with, as transformers does (which takes the largest position over the whole batch; here a
    row never depends on its neighbours). At or below L0 the frequencies are the plain ones.
    """
    sc, head_dim = cfg.rope_scaling, cfg.rotary_dim
    original = sc.original_max_seq_len or cfg.max_seq_len
    length_B = jnp.maximum(seq_len_B, original).astype(jnp.float32)
    base_B = cfg.rope_theta * (sc.factor * length_B / original - (sc.factor - 1)) ** (
        head_dim / (head_dim - 2)
    )
    exponent = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    scaled_BxHalf = 1.0 / base_B[:, None] ** exponent
    # At L0 the formula gives the plain frequencies; use those exactly (no float32 rounding).
    at_original_B = seq_len_B <= original
    inv_freq_BxHalf = jnp.where(at_original_B[:, None], jnp.asarray(inv_freq), scaled_BxHalf)
    return inv_freq_BxHalf[:, None, :]


# kind -> check(scaling) returning a problem to report, or None (RopeScaling validation).
ROPE_SCALING_CHECKS: dict[str, Callable] = {
    "yarn": lambda sc: (
        None
        if sc.original_max_seq_len
        else "RopeScaling(kind='yarn') needs original_max_seq_len, the context length the model "
        "was trained at (e.g. model.rope_scaling.original_max_seq_len=2048)"
    ),
}


def apply_rope(
    x_BxTxNxH: Float[Array, "B T N H"],
    positions_BxT: Int[Array, "B T"],
    inv_freq: np.ndarray | Float[Array, "B 1 Half"],
    magnitude: float = 1.0,
) -> Float[Array, "B T N H"]:
    """Rotates pairs (x[i], x[i + H/2]) by angle position * inv_freq[i] (GPT-NeoX/HF layout);
    `inv_freq` is shared (H/2,) or per row (B, 1, H/2)."""
    angle_BxTxHalf = positions_BxT[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)
    cos = (jnp.cos(angle_BxTxHalf) * magnitude)[:, :, None, :]
    sin = (jnp.sin(angle_BxTxHalf) * magnitude)[:, :, None, :]
    x = x_BxTxNxH.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxTxNxH.dtype)


def rope(x_BxTxNxH: jax.Array, positions_BxT: jax.Array, cfg) -> jax.Array:
    """RoPE on the first cfg.rotary_dim dims of each head (all of them by default)."""
    inv_freq, magnitude = rope_frequencies(cfg)
    kind = cfg.rope_scaling.kind
    if kind in ROPE_LENGTH_SCALINGS:
        seq_len_B = jnp.max(positions_BxT, axis=1) + 1  # padding (-1) never counts
        inv_freq = ROPE_LENGTH_SCALINGS.get(kind)(inv_freq, seq_len_B, cfg)
    rot = cfg.rotary_dim
    if rot == x_BxTxNxH.shape[-1]:
        return apply_rope(x_BxTxNxH, positions_BxT, inv_freq, magnitude)
    rotated = apply_rope(x_BxTxNxH[..., :rot], positions_BxT, inv_freq, magnitude)
    return jnp.concatenate([rotated, x_BxTxNxH[..., rot:]], axis=-1)


# ----------------------------------------------------------------------------- ALiBi


def alibi_slopes(n_heads: int) -> np.ndarray:
    """Press et al. 2022: geometric slopes 2^(-8i/n); non-powers of two interleave."""

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        slopes = power_of_two(n_heads)
    else:
        closest = 2 ** math.floor(math.log2(n_heads))
        slopes = power_of_two(closest) + power_of_two(2 * closest)[0::2][: n_heads - closest]
    return np.asarray(slopes, np.float32)


# ----------------------------------------------------------------------------- registry

POSITIONS.register("none")(PositionEncoding())
POSITIONS.register("learned")(PositionEncoding(embedding=LearnedEmbedding, extrapolates=False))
POSITIONS.register("sinusoidal")(PositionEncoding(embedding=SinusoidalEmbedding))
POSITIONS.register("rope")(PositionEncoding(rotate=rope))
POSITIONS.register("alibi")(PositionEncoding(slopes=lambda cfg: alibi_slopes(cfg.n_heads)))
