"""Next-token cross-entropy (float32, masked, optional z-loss), per-token log-probs, metrics."""

import math

import jax
import jax.numpy as jnp

from llmjax.typing import Array, Float, Int


def _lse_and_target(logits_BxTxV, targets_BxT):
    logits_BxTxV = logits_BxTxV.astype(jnp.float32)
    lse_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
    target_logit_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
    return lse_BxT, target_logit_BxT


def token_log_probs(
    logits_BxTxV: Float[Array, "B T V"], targets_BxT: Int[Array, "B T"]
) -> Float[Array, "B T"]:
    """log p(target_t | tokens_<t) for every position, in float32."""
    lse_BxT, target_logit_BxT = _lse_and_target(logits_BxTxV, targets_BxT)
    return target_logit_BxT - lse_BxT


def cross_entropy(
    logits_BxTxV: Float[Array, "B T V"],
    targets_BxT: Int[Array, "B T"],
    mask_BxT: Float[Array, "B T"] | None = None,
    *,
    z_loss: float = 0.0,
    denominator: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean next-token NLL over unmasked tokens (+ z_loss * mean log^2 Z).

    Returns (loss to differentiate, metrics); metrics["nll_sum"] and ["tokens"] let callers
    aggregate exactly over many batches. `denominator` replaces this batch's token count, so
    that the losses of micro-batches (or devices) sum to the mean over all their tokens.
    """
    lse_BxT, target_logit_BxT = _lse_and_target(logits_BxTxV, targets_BxT)
    nll_BxT = lse_BxT - target_logit_BxT
    weight_BxT = jnp.ones_like(nll_BxT) if mask_BxT is None else mask_BxT.astype(jnp.float32)
    tokens = weight_BxT.sum()
    denom = jnp.maximum(tokens if denominator is None else denominator, 1.0)
    nll = (nll_BxT * weight_BxT).sum() / denom
    loss = nll
    metrics = {"nll_sum": (nll_BxT * weight_BxT).sum(), "tokens": tokens}
    if z_loss:
        z = (jnp.square(lse_BxT) * weight_BxT).sum() / denom
        loss = loss + z_loss * z
        metrics["z_loss"] = z
    correct_BxT = (jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT).astype(jnp.float32)
    metrics["correct_sum"] = (correct_BxT * weight_BxT).sum()
    metrics["loss"] = nll
    return loss, metrics


def perplexity(mean_nll: float) -> float:
    return math.exp(min(mean_nll, 700.0))


def bits_per_byte(nll_sum: float, n_bytes: float) -> float:
    """Total nats over the bytes the target tokens decode to, in bits: tokenizer-independent."""
    return nll_sum / (math.log(2.0) * max(n_bytes, 1.0))
