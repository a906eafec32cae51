"""`auto`: the backend's fused kernel where one applies, else flash (long inputs) or xla.

GPU: cuDNN's fused attention through `jax.nn.dot_product_attention(implementation="cudnn")`
(half precision only). TPU: the Pallas flash-attention kernel (plain causal or full masks, no
ALiBi). Each fused kernel returns None for inputs it cannot serve, and auto then falls back, so
no backend is ever required. The fallback is exact either way. Neither fused kernel has a logit
soft cap, so a capped call always takes the fallback.
"""

import logging
from collections.abc import Callable

import jax
import jax.numpy as jnp

from llmjax.attention.core import alibi_bias, register_attention
from llmjax.attention.flash import flash_attention
from llmjax.attention.masks import Mask
from llmjax.attention.xla import xla_attention
from llmjax.registry import Registry
from llmjax.typing import Array, Float

log = logging.getLogger(__name__)

# backend name (jax.default_backend()) -> fn(q, k, v, mask, alibi_slopes, scale) -> out | None
FUSED: Registry[Callable] = Registry("fused attention kernel")
# From this many query-key pairs on, the fallback is flash: xla's T x S logits cost too much.
FLASH_FROM_PAIRS = 2048 * 2048
# What fused kernels raise at trace time for shapes, dtypes or versions they do not support.
_UNSUPPORTED = (ValueError, NotImplementedError, TypeError, RuntimeError, ImportError)


@FUSED.register("gpu")
def cudnn_attention(q, k, v, mask: Mask, alibi_slopes, scale):
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        return None  # cuDNN's fused attention takes half precision only
    bias = None
    if alibi_slopes is not None:
        bias = alibi_bias(mask, jnp.asarray(alibi_slopes, jnp.float32)).astype(q.dtype)
    kwargs = dict(bias=bias, scale=scale, implementation="cudnn")
    if mask.plain and mask.causal and mask.extra is None:
        window = None if mask.window is None else (mask.window - 1, 0)
        kwargs.update(is_causal=True, local_window_size=window)
    else:
        kwargs.update(mask=mask.dense()[:, None])
    try:
        return jax.nn.dot_product_attention(q, k, v, **kwargs)
    except _UNSUPPORTED as e:
        log.info("cuDNN attention does not apply (%s); falling back", e)
        return None


@FUSED.register("tpu")
def pallas_tpu_attention(q, k, v, mask: Mask, alibi_slopes, scale):
    # The kernel masks by index (causal) only: serve the plain lower triangle or no mask at all.
    plain = mask.plain or (not mask.causal and mask.q_segments is None and mask.kv_valid is None)
    if not plain or mask.window is not None or mask.extra is not None or alibi_slopes is not None:
        return None
    try:
        from jax.experimental.pallas.ops.tpu.flash_attention import flash_attention as pallas

        groups = q.shape[2] // k.shape[2]
        k, v = (jnp.repeat(x, groups, axis=2) for x in (k, v))
        out_BxNxTxH = pallas(
            *(x.transpose(0, 2, 1, 3) for x in (q, k, v)),
            causal=mask.causal,
            sm_scale=q.shape[-1] ** -0.5 if scale is None else scale,
        )
        return out_BxNxTxH.transpose(0, 2, 1, 3)
    except _UNSUPPORTED as e:
        log.info("Pallas TPU attention does not apply (%s); falling back", e)
        return None


@register_attention("auto")
def auto_attention(
    q_BxTxNxH: Float[Array, "B T N H"],
    k_BxSxKxH: Float[Array, "B S K H"],
    v_BxSxKxH: Float[Array, "B S K H"],
    mask: Mask,
    *,
    alibi_slopes: Float[Array, " N"] | None = None,
    scale: float | None = None,
    logit_softcap: float | None = None,
) -> Float[Array, "B T N H"]:
    backend = jax.default_backend()
    if backend in FUSED and logit_softcap is None:
        out = FUSED.get(backend)(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask, alibi_slopes, scale)
        if out is not None:
            return out
    long = q_BxTxNxH.shape[1] * k_BxSxKxH.shape[1] >= FLASH_FROM_PAIRS
    fallback = flash_attention if long else xla_attention
    return fallback(
        q_BxTxNxH,
        k_BxSxKxH,
        v_BxSxKxH,
        mask,
        alibi_slopes=alibi_slopes,
        scale=scale,
        logit_softcap=logit_softcap,
    )
