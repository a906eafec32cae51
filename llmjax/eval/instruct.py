"""Exact match of instruction replies under teacher forcing, per conversation, in packed rows.

A reply is right when every one of its trained tokens, the end marker included, is the model's
top-1 prediction given the true prefix. That is greedy decoding's exact match of the whole
reply, with no decoding: if every token is the argmax after the true prefix, greedy decoding
writes the reply token by token and then stops; if one is not, greedy decoding leaves the reply
there (exact ties of two logits have measure zero). `answer` leaves the end marker out: greedy
decoding starts with the reply's text but need not stop after it, which tells a model that
knows the answer from one that also knows when to stop.

Score conversations encoded with `train_on="responses"` (masks on the replies alone), whatever
a model was trained with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from llmjax.data.instruct import Encoded, build_rows, pack_plan
from llmjax.objectives.losses import token_log_probs

# (params, inputs, positions, segments) -> logits [B, T, V]
LogitsFn = Callable[[object, jax.Array, jax.Array, jax.Array], jax.Array]


def end_mask(loss_mask_N: np.ndarray, end_tokens: int) -> np.ndarray:
    """1 on the last `end_tokens` tokens of each run of trained tokens (the end marker that
    tokenization puts after each reply: the EOS id, or the `<|end|>` text's tokens)."""
    m = np.asarray(loss_mask_N) > 0
    out = np.zeros(len(m), np.float32)
    run_end = np.flatnonzero(m & ~np.append(m[1:], False))
    for last in run_end:
        first = last
        while first > 0 and m[first - 1] and last - first + 1 < end_tokens:
            first -= 1
        out[first : last + 1] = 1.0
    return out


def segment_scores(
    logits_BxTxV: jax.Array,
    targets_BxT: jax.Array,
    mask_BxT: jax.Array,
    end_BxT: jax.Array,
    segments_BxT: jax.Array,
) -> dict[str, jax.Array]:
    """Per (row, segment id) [B, T + 1]: trained tokens, wrong ones (not the top-1 prediction),
    wrong ones outside the end marker, and the NLL summed over the trained tokens."""
    B, T = targets_BxT.shape
    nll_BxT = -token_log_probs(logits_BxTxV, targets_BxT)
    weight_BxT = mask_BxT.astype(jnp.float32)
    wrong_BxT = (jnp.argmax(logits_BxTxV, axis=-1) != targets_BxT) * weight_BxT
    ids = (jnp.arange(B)[:, None] * (T + 1) + segments_BxT).reshape(-1)

    def total(x_BxT: jax.Array) -> jax.Array:
        summed = jax.ops.segment_sum(x_BxT.reshape(-1), ids, num_segments=B * (T + 1))
        return summed.reshape(B, T + 1)

    return {
        "tokens": total(weight_BxT),
        "wrong": total(wrong_BxT),
        "answer_wrong": total(wrong_BxT * (1.0 - end_BxT)),
        "nll": total(nll_BxT * weight_BxT),
    }


@dataclass(frozen=True)
class ReplyScores:
    """Per conversation: `exact` (every reply token right, end marker included), `answer`
    (right without the end marker) and `loss` (mean NLL per reply token, nats)."""

    exact: np.ndarray
    answer: np.ndarray
    loss: np.ndarray

    def rates(self, keep: np.ndarray | None = None) -> dict[str, float]:
        """Share exact, share with the right answer, and mean reply loss (of `keep`: a bool
        selection of conversations; default all)."""
        keep = np.ones(len(self.exact), bool) if keep is None else np.asarray(keep)
        return {
            "exact": float(self.exact[keep].mean()),
            "answer": float(self.answer[keep].mean()),
            "reply_loss": float(self.loss[keep].mean()),
        }

    def by_group(self, labels: Sequence[str]) -> dict[str, dict[str, float]]:
        """`rates` for each label (e.g. each conversation's task)."""
        labels = np.asarray(labels)
        return {str(g): self.rates(labels == g) for g in dict.fromkeys(labels.tolist())}


class ReplyScorer:
    """Scores the replies of encoded conversations with one compiled forward pass per batch of
    packed rows (every batch the same shape: the last is filled with empty rows)."""

    def __init__(self, logits_fn: LogitsFn, *, batch_size: int, seq_len: int, end_tokens: int = 1):
        if batch_size < 1 or seq_len < 1 or end_tokens < 1:
            raise ValueError(
                f"batch_size={batch_size}, seq_len={seq_len} and end_tokens={end_tokens} must "
                f"be >= 1 (end_tokens: how many tokens end a reply, 1 for an EOS id)"
            )
        self.batch_size, self.seq_len, self.end_tokens = batch_size, seq_len, end_tokens

        def scores(params, batch):
            logits = logits_fn(params, batch["inputs"], batch["positions"], batch["segments"])
            return segment_scores(
                logits, batch["targets"], batch["mask"], batch["end"], batch["segments"]
            )

        self._scores = jax.jit(scores)

    @classmethod
    def for_model(cls, model, **kwargs) -> ReplyScorer:
        """A scorer of an llmjax model's params (a LoRA model's merged into its base first
        makes one compiled program serve every adapter rank)."""

        def logits_fn(params, inputs, positions, segments):
            return model.apply({"params": params}, inputs, positions, segments).logits

        return cls(logits_fn, **kwargs)

    def __call__(self, params, encoded: Sequence[Encoded]) -> ReplyScores:
        plan = pack_plan(encoded, self.seq_len)
        marked = [Encoded(e.ids, end_mask(e.loss_mask, self.end_tokens)) for e in encoded]
        n = len(encoded)
        tokens, wrong, answer_wrong, nll = (np.zeros(n) for _ in range(4))
        for first in range(0, len(plan), self.batch_size):
            rows = plan[first : first + self.batch_size]
            rows = rows + [[]] * (self.batch_size - len(rows))
            batch = build_rows(encoded, rows, self.seq_len)
            batch["end"] = build_rows(marked, rows, self.seq_len)["mask"]
            out = jax.device_get(self._scores(params, batch))
            for r, members in enumerate(rows):
                for segment, i in enumerate(members, start=1):
                    tokens[i] = out["tokens"][r, segment]
                    wrong[i] = out["wrong"][r, segment]
                    answer_wrong[i] = out["answer_wrong"][r, segment]
                    nll[i] = out["nll"][r, segment]
        if not tokens.all():
            raise ValueError(
                f"{int((tokens == 0).sum())} of {n} conversations have no reply token to score; "
                f"encode them with encode_all(..., train_on='responses')"
            )
        return ReplyScores(wrong == 0, answer_wrong == 0, nll / tokens)
