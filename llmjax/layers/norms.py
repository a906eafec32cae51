"""Normalization layers, registered by name: layernorm, rmsnorm, rmsnorm_plus1 (Gemma),
batchnorm; and the RMSNorm of queries and keys (QK-norm)."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmjax.layers.common import dtype_of
from llmjax.registry import Registry

NORMS: Registry = Registry("norm")


def _scale_init(axis: str = "embed"):
    return nn.with_logical_partitioning(nn.initializers.ones, (axis,))


def _bias_init():
    return nn.with_logical_partitioning(nn.initializers.zeros, ("embed",))


@NORMS.register("layernorm")
def layernorm(cfg, *, deterministic: bool, name: str) -> nn.Module:
    del deterministic
    return nn.LayerNorm(
        epsilon=cfg.norm_eps,
        use_bias=cfg.use_bias,
        dtype=dtype_of(cfg.dtype),
        param_dtype=dtype_of(cfg.param_dtype),
        scale_init=_scale_init(),
        bias_init=_bias_init(),
        name=name,
    )


@NORMS.register("rmsnorm")
def rmsnorm(cfg, *, deterministic: bool, name: str) -> nn.Module:
    del deterministic
    return nn.RMSNorm(
        epsilon=cfg.norm_eps,
        dtype=dtype_of(cfg.dtype),
        param_dtype=dtype_of(cfg.param_dtype),
        scale_init=_scale_init(),
        name=name,
    )


class OffsetRMSNorm(nn.Module):
    """RMSNorm whose scale is stored as an offset from one: x / rms(x) * (1 + w), computed in
    float32 and cast back (Gemma's RMSNorm; a new layer, w = 0, is the identity scale)."""

    epsilon: float
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    axes: tuple[str, ...] = ("embed",)  # logical names of the normalized (last) axes

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n = len(self.axes)
        shape = x.shape[x.ndim - n :]
        init = nn.with_logical_partitioning(nn.initializers.zeros, self.axes)
        w = self.param("scale", init, shape, self.param_dtype)
        reduce = tuple(range(x.ndim - n, x.ndim))
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=reduce, keepdims=True) + self.epsilon)
        return (y * (1.0 + w.astype(jnp.float32))).astype(self.dtype)


@NORMS.register("rmsnorm_plus1")
def rmsnorm_plus1(cfg, *, deterministic: bool, name: str) -> nn.Module:
    del deterministic
    return OffsetRMSNorm(cfg.norm_eps, dtype_of(cfg.dtype), dtype_of(cfg.param_dtype), name=name)


def head_rmsnorm(cfg, *, name: str, heads: str = "heads") -> nn.Module:
    """The QK-norm of [B, T, heads, H] queries or keys, an RMSNorm of the model's kind (Gemma's
    offset scale under norm=rmsnorm_plus1). qk_norm_scope="head": over each head's H, one
    learned scale [H] shared by the heads (Qwen3, Gemma 3); "all": over all heads' heads x H
    values together, a scale per value [heads, H] (OLMo 2's norm of the whole projection)."""
    whole = cfg.qk_norm_scope == "all"
    axes = (heads, "head_dim") if whole else ("head_dim",)
    if cfg.norm == "rmsnorm_plus1":
        return OffsetRMSNorm(
            cfg.norm_eps, dtype_of(cfg.dtype), dtype_of(cfg.param_dtype), axes=axes, name=name
        )
    return nn.RMSNorm(
        epsilon=cfg.norm_eps,
        dtype=dtype_of(cfg.dtype),
        param_dtype=dtype_of(cfg.param_dtype),
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, axes),
        reduction_axes=(-2, -1) if whole else -1,
        feature_axes=(-2, -1) if whole else -1,
        name=name,
    )


@NORMS.register("batchnorm")
def batchnorm(cfg, *, deterministic: bool, name: str) -> nn.Module:
    # Statistics over batch *and* length: in training a position sees its batch-mates and its
    # own future, which is exactly why transformers use LayerNorm (see the study sheet, Q13).
    # At eval time running averages are used, so inference is causal.
    return nn.BatchNorm(
        use_running_average=deterministic,
        momentum=0.99,
        epsilon=cfg.norm_eps,
        use_bias=cfg.use_bias,
        dtype=dtype_of(cfg.dtype),
        param_dtype=dtype_of(cfg.param_dtype),
        scale_init=_scale_init(),
        bias_init=_bias_init(),
        name=name,
    )
