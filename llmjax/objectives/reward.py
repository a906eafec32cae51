"""Reward models: the Bradley-Terry objective on preference pairs, read from a value head.

The batch holds one pair a row (llmjax.data.preference): `chosen_inputs, chosen_targets,
chosen_mask` and the same for `rejected_`, [B, T]. One forward runs both sides (concatenated
on the batch axis); a side's reward r is the value head's output where the input is the
last reply token, i.e. at the last position with mask 1 (its target ends the reply):
`last_token_values(values, last mask-1 index + 1)`, as `llmjax.align.score` reads a sequence
at its last token. The loss of a pair is -log sigmoid(r_chosen - r_rejected - margin); the
loss is their mean over the pairs (a row with an empty mask, evaluation padding, counts for
nothing). Metrics: accuracy (r_chosen > r_rejected), the reward margin and mean rewards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from llmjax.align.score import last_token_values
from llmjax.errors import ConfigError
from llmjax.objectives.base import Batch, Forward, Metrics, Objective, register_objective
from llmjax.typing import Array, Float, Int

PAIR_FIELDS = (
    "chosen_inputs",
    "chosen_targets",
    "chosen_mask",
    "rejected_inputs",
    "rejected_targets",
    "rejected_mask",
)
# Per-pair quantities a pairwise objective computes; the metrics are their means over pairs.
PER_PAIR = {
    "loss": "loss",
    "accuracy": "correct",
    "margin": "margin",
    "chosen_reward": "chosen",
    "rejected_reward": "rejected",
}


def reply_ends(mask_BxT: Float[Array, "B T"]) -> Int[Array, " B"]:
    """1 + the index of each row's last position with mask 1 (0 for an empty mask)."""
    positions_T = jnp.arange(mask_BxT.shape[1])
    return jnp.max(jnp.where(mask_BxT > 0, positions_T, -1), axis=1) + 1


def both_sides(batch: Batch, name: str) -> jax.Array:
    """The chosen and rejected rows of field `name`, concatenated: [2B, ...]."""
    return jnp.concatenate([batch[f"chosen_{name}"], batch[f"rejected_{name}"]], axis=0)


def real_pairs(batch: Batch) -> jax.Array:
    """1.0 for each row holding a pair (both sides have a trained token), else 0.0: [B]."""
    has_c = batch["chosen_mask"].astype(jnp.float32).sum(axis=1) > 0
    has_r = batch["rejected_mask"].astype(jnp.float32).sum(axis=1) > 0
    return (has_c & has_r).astype(jnp.float32)


def bradley_terry_loss(
    chosen_B: Float[Array, " B"], rejected_B: Float[Array, " B"], margin: float = 0.0
) -> Float[Array, " B"]:
    """-log sigmoid(chosen - rejected - margin) of each pair."""
    return -jax.nn.log_sigmoid(chosen_B - rejected_B - margin)


@dataclass(frozen=True)
class Pairwise(Objective):
    """A loss over preference pairs: subclasses give per-pair values (`per_pair`); the loss and
    metrics are their sums over the real pairs / denominator, evaluation their means."""

    fields: ClassVar[tuple[str, ...]] = PAIR_FIELDS
    summed: ClassVar[tuple[str, ...]] = ("pairs", *(f"{v}_sum" for v in PER_PAIR.values()))
    logged: ClassVar[tuple[str, ...]] = tuple(k for k in PER_PAIR if k != "loss")

    def per_pair(self, model: Forward, batch: Batch) -> dict[str, jax.Array]:
        """[B] arrays "loss", "correct", "margin", "chosen", "rejected"."""
        raise NotImplementedError

    def weight(self, batch: Batch) -> jax.Array:
        return real_pairs(batch).sum()

    def _sums(self, model: Forward, batch: Batch) -> Metrics:
        real_B = real_pairs(batch)
        values = self.per_pair(model, batch)
        sums = {f"{k}_sum": (v * real_B).sum() for k, v in values.items()}
        return {**sums, "pairs": real_B.sum()}

    def loss(
        self, model: Forward, batch: Batch, denominator: jax.Array
    ) -> tuple[jax.Array, Metrics]:
        sums = self._sums(model, batch)
        denom = jnp.maximum(denominator, 1.0)
        metrics = {name: sums[f"{key}_sum"] / denom for name, key in PER_PAIR.items()}
        return metrics["loss"], metrics

    def eval_sums(self, model: Forward, batch: Batch) -> Metrics:
        return self._sums(model, batch)

    def report(self, sums: dict[str, float]) -> dict[str, float]:
        pairs = max(sums.get("pairs", 0.0), 1.0)
        out = {name: sums.get(f"{key}_sum", 0.0) / pairs for name, key in PER_PAIR.items()}
        out["pairs"] = sums.get("pairs", 0.0)
        return out


@register_objective("reward")
@dataclass(frozen=True)
class RewardModel(Pairwise):
    """Bradley-Terry loss of a value head's rewards of the chosen and rejected replies."""

    margin: float = 0.0

    @classmethod
    def from_config(cls, cfg: Any, *, tokenizer: Any = None) -> RewardModel:
        if not cfg.model.value_head:
            raise ConfigError(
                "train.objective=reward reads rewards from a value head, and this model has "
                "none; pass --set model.value_head=true (`llmjax reward` sets it)"
            )
        return cls(margin=cfg.preference.margin)

    def rewards(self, model: Forward, batch: Batch) -> tuple[jax.Array, jax.Array]:
        """(r_chosen [B], r_rejected [B]) from one forward over both sides."""
        values_2BxT = model(both_sides(batch, "inputs")).aux["value"]
        r_2B = last_token_values(values_2BxT, reply_ends(both_sides(batch, "mask")))
        return jnp.split(r_2B.astype(jnp.float32), 2)

    def per_pair(self, model: Forward, batch: Batch) -> dict[str, jax.Array]:
        chosen_B, rejected_B = self.rewards(model, batch)
        return {
            "loss": bradley_terry_loss(chosen_B, rejected_B, self.margin),
            "correct": (chosen_B > rejected_B).astype(jnp.float32),
            "margin": chosen_B - rejected_B,
            "chosen": chosen_B,
            "rejected": rejected_B,
        }
