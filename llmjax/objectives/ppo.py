"""PPO on a rollout's completion tokens (RLHF): the clipped policy surrogate, the clipped value
loss on the policy's value head, and an entropy bonus, token-means over the batch.

The batch is an experience batch of llmjax.align.rollout, every [B, T] field aligned with
`targets` (position t is about generating targets[:, t]): `mask` (1 on completion tokens),
`old_logp` (the rollout policy's log-probs), `old_values`, `advantages` and `returns`.

    ratio = exp(logp - old_logp)
    policy = -min(ratio * A, clip(ratio, 1 - clip, 1 + clip) * A)
    value = max((v - R)^2, (old_v + clip(v - old_v, -value_clip, value_clip) - R)^2)
    loss = policy + vf_coef * value - entropy_coef * entropy
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from llmjax.errors import ConfigError
from llmjax.objectives.base import Batch, Forward, Metrics, Objective, register_objective
from llmjax.objectives.losses import token_log_probs


def token_entropy(logits_BxTxV: jax.Array) -> jax.Array:
    """Entropy of the model's next-token distribution at every position (float32)."""
    logp = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
    return -(jnp.exp(logp) * logp).sum(-1)


def clipped_surrogate(
    logp_BxT: jax.Array, old_logp_BxT: jax.Array, advantages_BxT: jax.Array, clip: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(per-token policy loss, ratio, clipped?) of PPO's clipped objective."""
    log_ratio = logp_BxT - old_logp_BxT
    ratio = jnp.exp(log_ratio)
    unclipped = ratio * advantages_BxT
    clipped = jnp.clip(ratio, 1.0 - clip, 1.0 + clip) * advantages_BxT
    loss = -jnp.minimum(unclipped, clipped)
    return loss, ratio, (jnp.abs(ratio - 1.0) > clip).astype(jnp.float32)


def policy_metrics(ratio_BxT, clipped_BxT, entropy_BxT, weight_BxT, denom) -> Metrics:
    """Clip fraction, approximate KL to the rollout policy ((ratio - 1) - log ratio) and
    entropy, as sums over `denom`."""
    approx_kl = (ratio_BxT - 1.0) - jnp.log(ratio_BxT)
    return {
        "clip_frac": (clipped_BxT * weight_BxT).sum() / denom,
        "approx_kl": (approx_kl * weight_BxT).sum() / denom,
        "entropy": (entropy_BxT * weight_BxT).sum() / denom,
    }


@dataclass(frozen=True)
class PolicyGradient(Objective):
    """What PPO and GRPO share: the completion-token weight and the settings' checks."""

    clip: float = 0.2
    entropy_coef: float = 0.0

    def weight(self, batch: Batch) -> jax.Array:
        return batch["mask"].astype(jnp.float32).sum()

    def eval_sums(self, model: Forward, batch: Batch) -> Metrics:
        w = self.weight(batch)
        _, metrics = self.loss(model, batch, w)
        return {**{k: v * w for k, v in metrics.items()}, "tokens": w}

    def report(self, sums: dict[str, float]) -> dict[str, float]:
        tokens = max(sums.get("tokens", 0.0), 1.0)
        return {k: (v if k == "tokens" else v / tokens) for k, v in sums.items()}


@register_objective("ppo")
@dataclass(frozen=True)
class PPO(PolicyGradient):
    """PPO's clipped policy and value losses with an entropy bonus (module docstring)."""

    fields = ("inputs", "targets", "mask", "old_logp", "old_values", "advantages", "returns")
    summed = ("tokens",)

    value_clip: float = 0.2
    vf_coef: float = 0.1

    @classmethod
    def from_config(cls, cfg, *, tokenizer=None) -> PPO:
        if not cfg.model.value_head:
            raise ConfigError(
                "train.objective=ppo needs the policy's value head: set model.value_head=true "
                "(`llmjax ppo` sets it)"
            )
        rl = cfg.rl
        return cls(rl.clip, rl.entropy_coef, rl.value_clip, rl.vf_coef)

    def loss(self, model: Forward, batch: Batch, denominator: jax.Array):
        out = model.on(batch)
        weight = batch["mask"].astype(jnp.float32)
        denom = jnp.maximum(denominator, 1.0)
        logp = token_log_probs(out.logits, batch["targets"])
        policy_BxT, ratio, clipped = clipped_surrogate(
            logp, batch["old_logp"], batch["advantages"], self.clip
        )
        values = out.aux["value"].astype(jnp.float32)
        old_values, returns = batch["old_values"], batch["returns"]
        values_clipped = old_values + jnp.clip(
            values - old_values, -self.value_clip, self.value_clip
        )
        value_BxT = jnp.maximum(jnp.square(values - returns), jnp.square(values_clipped - returns))
        entropy = token_entropy(out.logits)
        policy = (policy_BxT * weight).sum() / denom
        value = (value_BxT * weight).sum() / denom
        metrics = policy_metrics(ratio, clipped, entropy, weight, denom)
        loss = policy + self.vf_coef * value - self.entropy_coef * metrics["entropy"]
        metrics.update(
            loss=loss,
            policy_loss=policy,
            value_loss=value,
            value_mse=(jnp.square(values - returns) * weight).sum() / denom,
        )
        return loss, metrics
