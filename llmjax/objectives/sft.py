"""Supervised fine-tuning: next-token loss on the replies of conversations, with metrics per
token and per conversation.

The batch is what `llmjax.data.instruct` builds: `inputs`, `targets`, `mask` (1 on the reply
tokens a conversation trains on; all tokens with `train_on="all"`), and for packed rows
`segments` (1, 2, ... per conversation, 0 for padding) and `positions`. The loss is the mean
NLL over the masked tokens, as `lm` takes it; evaluation adds each conversation's own mean NLL
averaged over conversations (short replies count as much as long ones) and the share of
conversations whose every reply token is the model's top prediction (teacher-forced).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from llmjax.objectives.base import Batch, Forward, Metrics, register_objective
from llmjax.objectives.lm import NextToken
from llmjax.objectives.losses import token_log_probs


def per_example_sums(
    logits_BxTxV: jax.Array,
    targets_BxT: jax.Array,
    mask_BxT: jax.Array,
    segments_BxT: jax.Array | None,
) -> Metrics:
    """The `lm` objective's token sums (nll_sum, tokens, correct_sum) and, over the
    conversations of a batch (each segment of each row; a row without segments is one), the
    sum of their mean NLLs, how many have a trained token, and how many are right on every
    trained token."""
    B, T = targets_BxT.shape
    if segments_BxT is None:
        segments_BxT = jnp.ones((B, T), jnp.int32)
    nll_BxT = -token_log_probs(logits_BxTxV, targets_BxT)
    weight_BxT = mask_BxT.astype(jnp.float32)
    correct_BxT = (jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT).astype(jnp.float32)
    # One id per (row, segment): segment ids are below T + 1.
    ids = (jnp.arange(B)[:, None] * (T + 1) + segments_BxT).reshape(-1)
    n = B * (T + 1)

    def total(x_BxT: jax.Array) -> jax.Array:
        return jax.ops.segment_sum(x_BxT.reshape(-1), ids, num_segments=n)

    tokens, nll = total(weight_BxT), total(nll_BxT * weight_BxT)
    wrong = total((1.0 - correct_BxT) * weight_BxT)
    has = tokens > 0
    return {
        "nll_sum": (nll_BxT * weight_BxT).sum(),
        "tokens": weight_BxT.sum(),
        "correct_sum": (correct_BxT * weight_BxT).sum(),
        "example_loss_sum": jnp.where(has, nll / jnp.maximum(tokens, 1.0), 0.0).sum(),
        "examples": has.astype(jnp.float32).sum(),
        "examples_exact": (has & (wrong == 0)).astype(jnp.float32).sum(),
    }


@register_objective("sft")
@dataclass(frozen=True)
class Supervised(NextToken):
    """Mean NLL of the masked (reply) tokens; per-token and per-conversation metrics."""

    fields = ("inputs", "targets", "mask")
    summed = (*NextToken.summed, "example_loss_sum", "examples", "examples_exact")

    def eval_sums(self, model: Forward, batch: Batch) -> Metrics:
        logits = model.on(batch).logits
        return per_example_sums(logits, batch["targets"], batch["mask"], batch.get("segments"))

    def report(self, sums: dict[str, float]) -> dict[str, float]:
        out = super().report(sums)
        examples = sums.get("examples", 0.0)
        out["example_loss"] = sums.get("example_loss_sum", 0.0) / max(examples, 1.0)
        out["example_exact"] = sums.get("examples_exact", 0.0) / max(examples, 1.0)
        out["examples"] = examples
        return out
