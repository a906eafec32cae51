"""`jax.nn.dot_product_attention`: XLA on CPU/TPU, cuDNN's fused kernel on GPU when it applies.

It has no logit soft cap; a capped call is computed by the reference, which is the same XLA
computation written out.
"""

import jax
import jax.numpy as jnp

from llmjax.attention.core import alibi_bias, reference_attention, register_attention
from llmjax.attention.masks import Mask
from llmjax.typing import Array, Float


@register_attention("xla")
def xla_attention(
    q_BxTxNxH: Float[Array, "B T N H"],
    k_BxSxKxH: Float[Array, "B S K H"],
    v_BxSxKxH: Float[Array, "B S K H"],
    mask: Mask,
    *,
    alibi_slopes: Float[Array, " N"] | None = None,
    scale: float | None = None,
    logit_softcap: float | None = None,
) -> Float[Array, "B T N H"]:
    if logit_softcap is not None:
        return reference_attention(
            q_BxTxNxH,
            k_BxSxKxH,
            v_BxSxKxH,
            mask,
            alibi_slopes=alibi_slopes,
            scale=scale,
            logit_softcap=logit_softcap,
        )
    bias = None
    if alibi_slopes is not None:
        bias = alibi_bias(mask, jnp.asarray(alibi_slopes, jnp.float32)).astype(q_BxTxNxH.dtype)
    if mask.plain and mask.causal and mask.extra is None:
        # The standard lower triangle: let the backend build it (cuDNN never reads a mask).
        window = None if mask.window is None else (mask.window - 1, 0)
        return jax.nn.dot_product_attention(
            q_BxTxNxH,
            k_BxSxKxH,
            v_BxSxKxH,
            bias=bias,
            scale=scale,
            is_causal=True,
            local_window_size=window,
        )
    return jax.nn.dot_product_attention(
        q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, bias=bias, mask=mask.dense()[:, None], scale=scale
    )
