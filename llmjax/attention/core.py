"""The reference scaled dot-product attention every variant is tested against.

softmax(softcap(q k^T * scale) + alibi) v over the keys the mask allows, computed plainly:
logits and softmax in float32, grouped-query attention by reshaping N query heads into K groups
of G. The soft cap (Gemma 2), cap * tanh(logits / cap), bounds the q.k logits before the ALiBi
bias and the mask are added (as FlashAttention does), so ALiBi's distance penalty is not capped.
"""

import einops
import jax
import jax.numpy as jnp

from llmjax.attention.masks import Mask
from llmjax.registry import Registry
from llmjax.typing import Array, Float

# Every variant has the signature of `reference_attention`:
#   fn(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask, *, alibi_slopes=None, scale=None) -> BxTxNxH
# plus, for variants that serve it, `logit_softcap=None`. Callers pass `logit_softcap` only
# when it is set, so a variant written without it keeps working for uncapped models; a variant
# that has the keyword but cannot serve a cap rejects it (llmjax.attention.support.reject).
ATTENTION: Registry = Registry("attention variant")
register_attention = ATTENTION.register

# Large but finite, so a row with no visible key stays finite (its output is then unspecified).
MASKED_LOGIT = -0.7 * float(jnp.finfo(jnp.float32).max)


def alibi_bias(mask: Mask, alibi_slopes: Float[Array, " N"]) -> Float[Array, "B N T S"]:
    return alibi_slopes[None, :, None, None] * mask.distance()[:, None].astype(jnp.float32)


def softcap_option(logit_softcap: float | None) -> dict[str, float]:
    """The keywords a call passes a variant for this cap: none when uncapped (see above)."""
    return {} if logit_softcap is None else {"logit_softcap": logit_softcap}


def softcap(logits: jax.Array, cap: float) -> jax.Array:
    """cap * tanh(logits / cap): near the identity for |logits| << cap, always within +-cap."""
    return jnp.float32(cap) * jnp.tanh(logits / jnp.float32(cap))


def _probabilities(
    q_BxTxNxH, k_BxSxKxH, mask: Mask, alibi_slopes, scale, logit_softcap
) -> Float[Array, "B K G T S"]:
    """The reference's float32 softmax over keys, heads grouped as K groups of G."""
    n_kv = k_BxSxKxH.shape[2]
    scale = q_BxTxNxH.shape[-1] ** -0.5 if scale is None else scale
    q_BxTxKxGxH = einops.rearrange(q_BxTxNxH, "B T (K G) H -> B T K G H", K=n_kv)
    logits_BxKxGxTxS = jnp.einsum(
        "BTKGH,BSKH->BKGTS", q_BxTxKxGxH, k_BxSxKxH, preferred_element_type=jnp.float32
    ) * jnp.float32(scale)
    if logit_softcap is not None:
        logits_BxKxGxTxS = softcap(logits_BxKxGxTxS, logit_softcap)
    if alibi_slopes is not None:
        bias_BxNxTxS = alibi_bias(mask, jnp.asarray(alibi_slopes, jnp.float32))
        logits_BxKxGxTxS += einops.rearrange(bias_BxNxTxS, "B (K G) T S -> B K G T S", K=n_kv)
    visible_Bx1x1xTxS = mask.dense()[:, None, None]
    logits_BxKxGxTxS = jnp.where(visible_Bx1x1xTxS, logits_BxKxGxTxS, MASKED_LOGIT)
    return jax.nn.softmax(logits_BxKxGxTxS, axis=-1)


def attention_probabilities(
    q_BxTxNxH: Float[Array, "B T N H"],
    k_BxSxKxH: Float[Array, "B S K H"],
    mask: Mask,
    *,
    alibi_slopes: Float[Array, " N"] | None = None,
    scale: float | None = None,
    logit_softcap: float | None = None,
) -> Float[Array, "B N T S"]:
    """The reference's attention probabilities (float32), per query head: exactly 0 on keys the
    mask hides, summing to 1 over keys on every row that sees one (a row that sees none is 0)."""
    probs = _probabilities(q_BxTxNxH, k_BxSxKxH, mask, alibi_slopes, scale, logit_softcap)
    probs_BxNxTxS = einops.rearrange(probs, "B K G T S -> B (K G) T S")
    return jnp.where(mask.dense()[:, None], probs_BxNxTxS, 0.0)


def max_attention_logit(
    q_BxTxNxH: Float[Array, "B T N H"],
    k_BxSxKxH: Float[Array, "B S K H"],
    mask: Mask,
    *,
    scale: float | None = None,
) -> Float[Array, ""]:
    """The largest q.k * scale (default 1/sqrt(H)) over the query-key pairs the mask lets
    attend, float32: the attention logit before any soft cap, ALiBi bias or softmax, whose
    growth Dehghani et al. (2023) and Wortsman et al. (2023) tie to training instability."""
    scale = q_BxTxNxH.shape[-1] ** -0.5 if scale is None else scale
    q_BxTxKxGxH = einops.rearrange(q_BxTxNxH, "B T (K G) H -> B T K G H", K=k_BxSxKxH.shape[2])
    logits_BxKxGxTxS = jnp.einsum(
        "BTKGH,BSKH->BKGTS", q_BxTxKxGxH, k_BxSxKxH, preferred_element_type=jnp.float32
    ) * jnp.float32(scale)
    return jnp.max(jnp.where(mask.dense()[:, None, None], logits_BxKxGxTxS, -jnp.inf))


@register_attention("reference")
def reference_attention(
    q_BxTxNxH: Float[Array, "B T N H"],
    k_BxSxKxH: Float[Array, "B S K H"],
    v_BxSxKxH: Float[Array, "B S K H"],
    mask: Mask,
    *,
    alibi_slopes: Float[Array, " N"] | None = None,
    scale: float | None = None,
    logit_softcap: float | None = None,
) -> Float[Array, "B T N H"]:
    probs = _probabilities(q_BxTxNxH, k_BxSxKxH, mask, alibi_slopes, scale, logit_softcap)
    probs = probs.astype(v_BxSxKxH.dtype)
    out_BxTxKxGxH = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v_BxSxKxH)
    return einops.rearrange(out_BxTxKxGxH, "B T K G H -> B T (K G) H")
