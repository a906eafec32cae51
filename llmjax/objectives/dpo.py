"""Direct preference optimisation: DPO's logistic loss and IPO's squared loss on preference
pairs, against a frozen reference policy.

A side's log-prob is the sum of its reply tokens' log-probs (`token_log_probs` over the
masked targets), under the policy (one forward over both sides, concatenated on the batch
axis) and under the reference: the frozen tree "reference" (`Forward.frozen`), or, when the
batch carries `chosen_ref_logp` / `rejected_ref_logp` [B] (sums, computed once with
`llmjax.align.preference.reference_logps`), those. With h = (pc - rc) - (pr - rr):

    sigmoid (DPO):  -(1 - ls) log sigmoid(beta h) - ls log sigmoid(-beta h)   (ls: label smoothing)
    ipo:            (h - 1 / (2 beta))^2

IPO's convention is TRL's: its log-probs are averaged over each side's reply tokens (the sums
divided by the token counts), so h is a difference of per-token log-ratios. The implicit
rewards are beta * (pc - rc) and beta * (pr - rr) of the log-probs the loss used; the margin is
their difference, and accuracy the share of pairs with h > 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from llmjax.config.align import PREFERENCE_LOSSES
from llmjax.errors import ConfigError
from llmjax.objectives.base import Batch, Forward, register_objective
from llmjax.objectives.losses import token_log_probs
from llmjax.objectives.reward import Pairwise, both_sides
from llmjax.typing import Array, Float

REFERENCE = "reference"  # the frozen tree of the reference policy


def sequence_log_probs(
    logits_BxTxV: Float[Array, "B T V"], targets_BxT: jax.Array, mask_BxT: jax.Array
) -> Float[Array, " B"]:
    """The sum over each row's masked targets of log p(target | prefix)."""
    weight_BxT = mask_BxT.astype(jnp.float32)
    return (token_log_probs(logits_BxTxV, targets_BxT) * weight_BxT).sum(axis=1)


def dpo_loss(
    h_B: Float[Array, " B"], beta: float, label_smoothing: float = 0.0
) -> Float[Array, " B"]:
    """DPO's loss of each pair from h = policy log-ratio margin minus the reference's."""
    return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(
        beta * h_B
    ) - label_smoothing * jax.nn.log_sigmoid(-beta * h_B)


def ipo_loss(h_B: Float[Array, " B"], beta: float) -> Float[Array, " B"]:
    """IPO's loss of each pair: (h - 1 / (2 beta))^2."""
    return jnp.square(h_B - 1.0 / (2.0 * beta))


@register_objective("dpo")
@dataclass(frozen=True)
class DirectPreference(Pairwise):
    """DPO (loss="sigmoid") or IPO (loss="ipo") against the frozen reference policy."""

    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0

    def __post_init__(self):
        if not self.beta > 0:
            raise ConfigError(f"preference.beta must be > 0 (e.g. 0.1), got {self.beta}")
        if self.loss_type not in PREFERENCE_LOSSES:
            raise ConfigError(
                f"preference.loss must be one of {', '.join(PREFERENCE_LOSSES)}, got "
                f"{self.loss_type!r}"
            )

    @classmethod
    def from_config(cls, cfg: Any, *, tokenizer: Any = None) -> DirectPreference:
        p = cfg.preference
        return cls(beta=p.beta, loss_type=p.loss, label_smoothing=p.label_smoothing)

    def log_probs(self, model: Forward, batch: Batch) -> dict[str, jax.Array]:
        """Sequence log-prob sums [B] of both sides under the policy and the reference, and
        the reply token counts."""
        targets_2BxT, mask_2BxT = both_sides(batch, "targets"), both_sides(batch, "mask")
        inputs_2BxT = both_sides(batch, "inputs")
        policy_2B = sequence_log_probs(model(inputs_2BxT).logits, targets_2BxT, mask_2BxT)
        if "chosen_ref_logp" in batch and "rejected_ref_logp" in batch:
            ref_2B = jnp.concatenate([batch["chosen_ref_logp"], batch["rejected_ref_logp"]])
            ref_2B = jax.lax.stop_gradient(ref_2B.astype(jnp.float32))
        else:
            ref_logits = model.frozen(REFERENCE)(inputs_2BxT).logits
            ref_2B = sequence_log_probs(ref_logits, targets_2BxT, mask_2BxT)
        tokens_2B = mask_2BxT.astype(jnp.float32).sum(axis=1)
        pc, pr = jnp.split(policy_2B, 2)
        rc, rr = jnp.split(ref_2B, 2)
        nc, nr = jnp.split(tokens_2B, 2)
        return {"pc": pc, "pr": pr, "rc": rc, "rr": rr, "nc": nc, "nr": nr}

    def per_pair(self, model: Forward, batch: Batch) -> dict[str, jax.Array]:
        lp = self.log_probs(model, batch)
        chosen_ratio, rejected_ratio = lp["pc"] - lp["rc"], lp["pr"] - lp["rr"]
        if self.loss_type == "ipo":  # TRL's IPO: per-token averages
            chosen_ratio = chosen_ratio / jnp.maximum(lp["nc"], 1.0)
            rejected_ratio = rejected_ratio / jnp.maximum(lp["nr"], 1.0)
        h_B = chosen_ratio - rejected_ratio
        if self.loss_type == "ipo":
            loss_B = ipo_loss(h_B, self.beta)
        else:
            loss_B = dpo_loss(h_B, self.beta, self.label_smoothing)
        chosen_B, rejected_B = self.beta * chosen_ratio, self.beta * rejected_ratio
        return {
            "loss": loss_B,
            "correct": (h_B > 0).astype(jnp.float32),
            "margin": chosen_B - rejected_B,
            "chosen": chosen_B,
            "rejected": rejected_B,
        }
