"""The reference scaled dot-product attention every variant is tested against.

softmax(q k^T * scale + alibi) v over the keys the mask allows, computed plainly: logits and
softmax in float32, grouped-query attention by reshaping N query heads into K groups of G.
"""

import einops
import jax
import jax.numpy as jnp

from llmjax.attention.masks import Mask
from llmjax.registry import Registry
from llmjax.typing import Array, Float

# Every variant has the signature of `reference_attention`:
#   fn(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask, *, alibi_slopes=None, scale=None) -> BxTxNxH
ATTENTION: Registry = Registry("attention variant")
register_attention = ATTENTION.register

# Large but finite, so a row with no visible key stays finite (its output is then unspecified).
MASKED_LOGIT = -0.7 * float(jnp.finfo(jnp.float32).max)


def alibi_bias(mask: Mask, alibi_slopes: Float[Array, " N"]) -> Float[Array, "B N T S"]:
    return alibi_slopes[None, :, None, None] * mask.distance()[:, None].astype(jnp.float32)


@register_attention("reference")
def reference_attention(
    q_BxTxNxH: Float[Array, "B T N H"],
    k_BxSxKxH: Float[Array, "B S K H"],
    v_BxSxKxH: Float[Array, "B S K H"],
    mask: Mask,
    *,
    alibi_slopes: Float[Array, " N"] | None = None,
    scale: float | None = None,
) -> Float[Array, "B T N H"]:
    n_kv = k_BxSxKxH.shape[2]
    scale = q_BxTxNxH.shape[-1] ** -0.5 if scale is None else scale
    q_BxTxKxGxH = einops.rearrange(q_BxTxNxH, "B T (K G) H -> B T K G H", K=n_kv)
    logits_BxKxGxTxS = jnp.einsum(
        "BTKGH,BSKH->BKGTS", q_BxTxKxGxH, k_BxSxKxH, preferred_element_type=jnp.float32
    ) * jnp.float32(scale)
    if alibi_slopes is not None:
        bias_BxNxTxS = alibi_bias(mask, jnp.asarray(alibi_slopes, jnp.float32))
        logits_BxKxGxTxS += einops.rearrange(bias_BxNxTxS, "B (K G) T S -> B K G T S", K=n_kv)
    visible_Bx1x1xTxS = mask.dense()[:, None, None]
    logits_BxKxGxTxS = jnp.where(visible_Bx1x1xTxS, logits_BxKxGxTxS, MASKED_LOGIT)
    probs = jax.nn.softmax(logits_BxKxGxTxS, axis=-1).astype(v_BxSxKxH.dtype)
    out_BxTxKxGxH = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v_BxSxKxH)
    return einops.rearrange(out_BxTxKxGxH, "B T K G H -> B T (K G) H")
