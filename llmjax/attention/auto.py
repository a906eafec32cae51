"""`auto`: the backend's fused kernel where one applies, else flash (long inputs) or xla.

CPU: llmjax's fused causal kernel (llmjax.attention.cpu_fused: a C++ custom call, built on
first use) for the plain causal mask. GPU: cuDNN's fused attention through
`jax.nn.dot_product_attention(implementation="cudnn")` (half precision only): causal and
windowed masks by index (`is_causal`, `local_window_size`), any other mask (packed segments,
padding) as a dense mask. TPU: Pallas splash attention
(llmjax.attention.splash: GQA without repeating K/V, windows, packed segments, soft cap). Each
fused kernel returns None for inputs it cannot serve, and auto then falls back, so no backend
is ever required; the fallback is exact either way. Which kernel a call got, and why, is
logged once per kernel and shape (logger `llmjax.attention`, level INFO) as the model
is traced (llmjax.attention.support.report).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from llmjax.attention import splash
from llmjax.attention.core import alibi_bias, register_attention
from llmjax.attention.cpu_fused import fused_cpu_attention
from llmjax.attention.flash import flash_attention
from llmjax.attention.masks import Mask
from llmjax.attention.support import declined, report
from llmjax.attention.xla import xla_attention
from llmjax.registry import Registry
from llmjax.typing import Array, Float

# backend name (jax.default_backend()) -> fn(q, k, v, mask, alibi_slopes, scale[, logit_softcap])
# -> out, or None when the kernel does not serve the call (logit_softcap is passed only if set)
FUSED: Registry[Callable] = Registry("fused attention kernel")
# From this many query-key pairs on, the fallback is flash: xla's T x S logits cost too much.
FLASH_FROM_PAIRS = 2048 * 2048
# What fused kernels raise at trace time for shapes, dtypes or versions they do not support.
_UNSUPPORTED = (ValueError, NotImplementedError, TypeError, RuntimeError, ImportError)


FUSED.register("cpu")(fused_cpu_attention)


@FUSED.register("gpu")
def cudnn_attention(q, k, v, mask: Mask, alibi_slopes, scale, logit_softcap=None):
    if logit_softcap is not None:
        return declined("cuDNN", "it has no logit soft cap", q, k)
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        return declined("cuDNN", f"it takes bfloat16 or float16, not {q.dtype}", q, k)
    bias = None
    if alibi_slopes is not None:
        bias = alibi_bias(mask, jnp.asarray(alibi_slopes, jnp.float32)).astype(q.dtype)
    kwargs = dict(bias=bias, scale=scale, implementation="cudnn")
    if mask.plain and mask.causal and mask.extra is None:
        window = None if mask.window is None else (mask.window - 1, 0)
        kwargs.update(is_causal=True, local_window_size=window)
        how = "causal" + (f", window {mask.window}" if window else "")
    else:
        kwargs.update(mask=mask.dense()[:, None])
        how = "dense mask (segments, padding or positions)"
    try:
        out = jax.nn.dot_product_attention(q, k, v, **kwargs)
    except _UNSUPPORTED as e:
        return declined("cuDNN", str(e), q, k)
    report("cudnn", how, q, k)
    return out


@FUSED.register("tpu")
def splash_tpu_attention(q, k, v, mask: Mask, alibi_slopes, scale, logit_softcap=None):
    why = splash.why_not(q, k, mask, alibi_slopes)
    if why is not None:
        return declined("splash", f"it cannot serve {why}", q, k)
    try:
        out = splash.splash_or_none(q, k, v, mask, alibi_slopes, scale, logit_softcap, False)
    except _UNSUPPORTED as e:
        return declined("splash", str(e), q, k)
    how = "plain causal" if mask.plain else "index mask, checked against the positions"
    report("splash", how + (f", window {mask.window}" if mask.window else ""), q, k)
    return out


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
    if backend in FUSED:
        fused = FUSED.get(backend)
        args = (q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask, alibi_slopes, scale)
        out = fused(*args, logit_softcap) if logit_softcap is not None else fused(*args)
        if out is not None:
            return out
    long = q_BxTxNxH.shape[1] * k_BxSxKxH.shape[1] >= FLASH_FROM_PAIRS
    fallback = flash_attention if long else xla_attention
    report("flash" if long else "xla", f"{backend} fallback", q_BxTxNxH, k_BxSxKxH)
    return fallback(
        q_BxTxNxH,
        k_BxSxKxH,
        v_BxSxKxH,
        mask,
        alibi_slopes=alibi_slopes,
        scale=scale,
        logit_softcap=logit_softcap,
    )
