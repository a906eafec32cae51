"""Next-token losses other than cross-entropy, for comparing training objectives (study sheet
Q8/Q9): the Brier score (squared error between the predicted distribution and the one-hot
target) and the focal loss (Lin et al. 2017). Trained with `train.objective=brier` or
`train.objective=focal`; evaluated like `lm` (NLL, perplexity, accuracy, bits per byte), so
validation losses compare across objectives. The training record's "loss" is the NLL too;
"objective" is the loss that was differentiated.

Per token, with p the softmax of the logits and y the target:

    cross-entropy  -log p_y                     d/dlogits = p - onehot(y)
    brier          sum_v (p_v - [v = y])^2      vanishes as p_y -> 0 while p is one-hot
    focal          -(1 - p_y)^gamma log p_y     cross-entropy down-weighted where p_y is large
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from llmjax.objectives.base import Batch, Forward, Metrics, register_objective
from llmjax.objectives.lm import NextToken
from llmjax.objectives.losses import cross_entropy, token_log_probs
from llmjax.typing import Array, Float, Int


def brier_per_token(
    logits_BxTxV: Float[Array, "B T V"], targets_BxT: Int[Array, "B T"]
) -> Float[Array, "B T"]:
    """sum_v (p_v - [v = target])^2 = sum_v p_v^2 - 2 p_target + 1, in float32."""
    p = jax.nn.softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
    p_y = jnp.take_along_axis(p, targets_BxT[..., None], axis=-1)[..., 0]
    return jnp.square(p).sum(-1) - 2.0 * p_y + 1.0


def focal_per_token(
    logits_BxTxV: Float[Array, "B T V"], targets_BxT: Int[Array, "B T"], gamma: float = 2.0
) -> Float[Array, "B T"]:
    """-(1 - p_target)^gamma log p_target, in float32 (gamma = 0 is cross-entropy)."""
    logp_y = token_log_probs(logits_BxTxV, targets_BxT)
    return -jnp.power(-jnp.expm1(logp_y), gamma) * logp_y


def nll_per_token(
    logits_BxTxV: Float[Array, "B T V"], targets_BxT: Int[Array, "B T"]
) -> Float[Array, "B T"]:
    return -token_log_probs(logits_BxTxV, targets_BxT)


@dataclass(frozen=True)
class _TokenLoss(NextToken):
    """Trains on `per_token` (masked mean), reports like `lm`."""

    logged = ("objective",)

    def per_token(self, logits, targets):
        raise NotImplementedError

    def loss(
        self, model: Forward, batch: Batch, denominator: jax.Array
    ) -> tuple[jax.Array, Metrics]:
        logits = model.on(batch).logits
        _, metrics = cross_entropy(logits, batch["targets"], batch.get("mask"),
                                   denominator=denominator)  # fmt: skip
        mask = batch.get("mask")
        weight = jnp.ones(batch["targets"].shape, jnp.float32) if mask is None else mask
        objective = (self.per_token(logits, batch["targets"]) * weight).sum()
        objective = objective / jnp.maximum(denominator, 1.0)
        return objective, {**metrics, "objective": objective}


@register_objective("brier")
@dataclass(frozen=True)
class BrierNextToken(_TokenLoss):
    """The Brier score of the next-token distribution (module docstring)."""

    def per_token(self, logits, targets):
        return brier_per_token(logits, targets)


@register_objective("focal")
@dataclass(frozen=True)
class FocalNextToken(_TokenLoss):
    """The focal loss with gamma = 2 (module docstring)."""

    gamma: float = 2.0

    def per_token(self, logits, targets):
        return focal_per_token(logits, targets, self.gamma)


TOKEN_LOSSES = {"cross-entropy": nll_per_token, "brier": brier_per_token, "focal": focal_per_token}


def logit_gradient_norms(
    per_token, logits_BxTxV: Float[Array, "B T V"], targets_BxT: Int[Array, "B T"]
) -> Float[Array, "B T"]:
    """|d loss_t / d logits_t| for every token under a per-token loss (`TOKEN_LOSSES`): each
    token's loss depends on its own logits only, so one gradient of the sum gives them all."""
    grads = jax.grad(lambda z: per_token(z, targets_BxT).sum())(logits_BxTxV.astype(jnp.float32))
    return jnp.sqrt(jnp.square(grads).sum(-1))


def confidently_wrong_logits(p_target: Float[Array, " P"], vocab_size: int) -> Float[Array, "P V"]:
    """Logits (one row per p) giving the target (id 0) probability p and one wrong token
    (id 1) all the rest but a uniform 1e-6 over the others: a model confidently wrong as p
    gets small."""
    p = jnp.asarray(p_target, jnp.float32)
    rest = 1e-6 * jnp.ones((p.shape[0], vocab_size - 2))
    wrong = 1.0 - p - rest.sum(-1)
    return jnp.log(jnp.concatenate([p[:, None], wrong[:, None], rest], axis=-1))
