"""GRPO (DeepSeekMath, Shao et al. 2024): PPO's clipped surrogate with group-normalised
advantages (one per completion, the same on every token of it) and the k3 KL to the frozen
reference inside the loss; no value head.

    loss_t = -min(ratio_t * A, clip(ratio_t, 1 - clip, 1 + clip) * A) + kl_coef * k3_t
    k3_t = exp(ref_logp_t - logp_t) - (ref_logp_t - logp_t) - 1

The batch (llmjax.align.rollout): `inputs`, `targets`, `mask`, `old_logp`, `ref_logp`,
`advantages` [B, T] and `kl_coef` [B] (the rollout's coefficient, so an adaptive one needs no
recompile). The loss is the mean over every completion token of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from llmjax.objectives.base import Batch, Forward, register_objective
from llmjax.objectives.losses import token_log_probs
from llmjax.objectives.ppo import (
    PolicyGradient,
    clipped_surrogate,
    policy_metrics,
    token_entropy,
)


def k3(logp_BxT: jax.Array, ref_logp_BxT: jax.Array) -> jax.Array:
    """exp(ref - logp) - (ref - logp) - 1: >= 0, zero where the policy equals the reference."""
    d = ref_logp_BxT - logp_BxT
    return jnp.exp(d) - d - 1.0


@register_objective("grpo")
@dataclass(frozen=True)
class GRPO(PolicyGradient):
    """Clipped surrogate on group advantages plus kl_coef * k3 to the reference."""

    fields = ("inputs", "targets", "mask", "old_logp", "ref_logp", "advantages", "kl_coef")
    summed = ("tokens",)

    @classmethod
    def from_config(cls, cfg, *, tokenizer=None) -> GRPO:
        return cls(cfg.rl.clip, cfg.rl.entropy_coef)

    def loss(self, model: Forward, batch: Batch, denominator: jax.Array):
        out = model.on(batch)
        weight = batch["mask"].astype(jnp.float32)
        denom = jnp.maximum(denominator, 1.0)
        logp = token_log_probs(out.logits, batch["targets"])
        policy_BxT, ratio, clipped = clipped_surrogate(
            logp, batch["old_logp"], batch["advantages"], self.clip
        )
        kl_BxT = k3(logp, batch["ref_logp"])
        coef_Bx1 = batch["kl_coef"].astype(jnp.float32)[:, None]
        entropy = token_entropy(out.logits)
        policy = (policy_BxT * weight).sum() / denom
        kl = (kl_BxT * weight).sum() / denom
        metrics = policy_metrics(ratio, clipped, entropy, weight, denom)
        loss = (
            policy
            + (coef_Bx1 * kl_BxT * weight).sum() / denom
            - self.entropy_coef * metrics["entropy"]
        )
        metrics.update(loss=loss, policy_loss=policy, kl=kl)
        return loss, metrics
