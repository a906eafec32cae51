"""Next-token prediction: cross-entropy over `targets`, masked, with an optional z-loss."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llmjax.objectives.base import Batch, Forward, Metrics, Objective, register_objective
from llmjax.objectives.losses import bits_per_byte, cross_entropy, perplexity


def batch_tokens(batch: Batch) -> jax.Array:
    """The number of target tokens the loss averages over."""
    mask = batch.get("mask")
    if mask is None:
        return jnp.asarray(batch["targets"].size, jnp.float32)
    return mask.astype(jnp.float32).sum()


@register_objective("lm")
@dataclass(frozen=True)
class NextToken(Objective):
    """Mean NLL of `targets` [B, T] given `inputs` [B, T] over the tokens `mask` keeps (all
    without a mask), plus z_loss * mean log^2 Z. Evaluation reports loss, perplexity,
    accuracy and, when the tokenizer is known, bits per byte."""

    fields = ("inputs", "targets")
    summed = ("nll_sum", "tokens", "correct_sum")

    z_loss: float = 0.0
    # Bytes each token id decodes to (for bits per byte); None when no tokenizer is known.
    token_bytes: np.ndarray | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_config(cls, cfg: Any, *, tokenizer: Any = None) -> NextToken:
        token_bytes = None
        if tokenizer is not None:
            token_bytes = tokenizer.token_byte_lengths().astype(np.float64)
        return cls(z_loss=cfg.train.z_loss, token_bytes=token_bytes)

    def weight(self, batch: Batch) -> jax.Array:
        return batch_tokens(batch)

    def loss(
        self, model: Forward, batch: Batch, denominator: jax.Array
    ) -> tuple[jax.Array, Metrics]:
        logits = model.on(batch).logits
        return cross_entropy(
            logits,
            batch["targets"],
            batch.get("mask"),
            z_loss=self.z_loss,
            denominator=denominator,
        )

    def eval_sums(self, model: Forward, batch: Batch) -> Metrics:
        _, metrics = cross_entropy(model.on(batch).logits, batch["targets"], batch.get("mask"))
        return {k: metrics[k] for k in self.summed}

    def host_sums(self, batch: Mapping[str, Any]) -> dict[str, float]:
        if self.token_bytes is None:
            return {}
        targets = np.asarray(batch["targets"])
        mask = batch.get("mask")
        weight = np.ones(targets.shape) if mask is None else np.asarray(mask)
        return {"bytes": float((self.token_bytes[targets] * weight).sum())}

    def report(self, sums: dict[str, float]) -> dict[str, float]:
        tokens = sums.get("tokens", 0.0)
        loss = sums.get("nll_sum", 0.0) / max(tokens, 1.0)
        out = {"loss": loss, "perplexity": perplexity(loss)}
        if "bytes" in sums:
            out["bits_per_byte"] = bits_per_byte(sums["nll_sum"], sums["bytes"])
        out["accuracy"] = sums.get("correct_sum", 0.0) / max(tokens, 1.0)
        out["tokens"] = tokens
        return out
