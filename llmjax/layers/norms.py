"""Normalization layers, registered by name: layernorm, rmsnorm, batchnorm; and the per-head
RMSNorm of queries and keys (QK-norm)."""

import flax.linen as nn

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


def head_rmsnorm(cfg, *, name: str) -> nn.Module:
    """RMSNorm over each head's last axis (H), one learned scale [H] shared by the heads: the
    QK-norm of OLMo 2 / Gemma 3, applied to [B, T, heads, H] queries and keys."""
    return nn.RMSNorm(
        epsilon=cfg.norm_eps,
        dtype=dtype_of(cfg.dtype),
        param_dtype=dtype_of(cfg.param_dtype),
        scale_init=_scale_init("head_dim"),
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
