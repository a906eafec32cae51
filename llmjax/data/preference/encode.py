"""Preference pairs as token ids and rows: each reply's conversation (prompt + reply) encoded
with the run's chat template, the mask on the reply tokens and the end-of-reply token after
them, as supervised fine-tuning encodes conversations (llmjax.data.instruct).

A conversation longer than `seq_len + 1` tokens keeps its first `seq_len + 1` (a row holds
`seq_len` inputs); a pair either of whose replies is then cut away entirely (no trained
target left) is dropped. Both are counted in `PairStats`.

A row holds one pair: `chosen_inputs, chosen_targets, chosen_mask, rejected_inputs,
rejected_targets, rejected_mask` [B, T] (int32 ids, float32 masks), right-padded with
`pad_id` and mask 0; with reference log-probs, also `chosen_ref_logp, rejected_ref_logp` [B].
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from llmjax.data.instruct import ChatTemplate, ConversationEncoder, Encoded, build_rows, truncate
from llmjax.data.preference.records import PreferencePair
from llmjax.data.tokenizers import Tokenizer
from llmjax.errors import InstructDataError

SIDES = ("chosen", "rejected")
ROW_FIELDS = tuple(f"{s}_{f}" for s in SIDES for f in ("inputs", "targets", "mask"))
REF_FIELDS = ("chosen_ref_logp", "rejected_ref_logp")


@dataclass(frozen=True, eq=False)
class EncodedPair:
    """The encoded conversations of a pair's chosen and rejected replies."""

    chosen: Encoded
    rejected: Encoded


@dataclass
class PairStats:
    """What encoding pairs did: kept, truncated (either side cut) and dropped pairs, tokens."""

    pairs: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    truncated: int = 0
    dropped_pairs: int = 0
    identical_skipped: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def encode_pairs(
    pairs: Iterable[PreferencePair],
    tokenizer: Tokenizer,
    seq_len: int,
    *,
    template: ChatTemplate | None = None,
) -> tuple[list[EncodedPair], PairStats]:
    """Every pair encoded and truncated to `seq_len + 1` tokens a side, and what that did.

    Raises InstructDataError when no pair keeps a trained reply token on both sides.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len={seq_len} must be >= 1")
    encoder = ConversationEncoder(tokenizer, template)
    out, stats = [], PairStats()
    for pair in pairs:
        sides = [encoder.encode(c) for c in pair.conversations()]
        kept = [truncate(e, seq_len) for e in sides]
        if any(len(k) < len(e) for k, e in zip(kept, sides, strict=True)):
            stats.truncated += 1
        if any(len(k) < 2 or not k.loss_mask[1:].any() for k in kept):
            stats.dropped_pairs += 1
            continue
        out.append(EncodedPair(*kept))
        stats.pairs += 1
        stats.tokens += sum(len(k) for k in kept)
        stats.trained_tokens += sum(int(k.loss_mask[1:].sum()) for k in kept)
    if not out:
        raise InstructDataError(
            f"no pair keeps a reply token on both sides within seq_len={seq_len} (of "
            f"{stats.dropped_pairs} given); raise model.max_seq_len or shorten the prompts"
        )
    return out, stats


def pair_rows(
    encoded: Sequence[EncodedPair],
    indices: Sequence[int],
    seq_len: int,
    *,
    pad_id: int = 0,
    ref_logps: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The rows of pairs `indices` (one pair a row); `ref_logps` [N, 2]: the reference's
    sequence log-probs of every pair's chosen and rejected reply, carried as fields."""
    plan = [[int(i)] for i in indices]
    out = {}
    for side in SIDES:
        rows = build_rows([getattr(e, side) for e in encoded], plan, seq_len, pad_id=pad_id)
        for name in ("inputs", "targets", "mask"):
            out[f"{side}_{name}"] = rows[name]
    if ref_logps is not None:
        chosen = np.asarray(ref_logps, np.float32)[np.asarray(indices, np.int64)]
        out["chosen_ref_logp"] = chosen[:, 0].copy()
        out["rejected_ref_logp"] = chosen[:, 1].copy()
    return out


def reward_ids(encoded: Encoded) -> np.ndarray:
    """The ids a reward model's score reads for an encoded conversation: up to and including
    the last reply token before the end-of-reply token (training reads the value where the
    input is that token, the one whose target is the end of the reply)."""
    trained = np.flatnonzero(encoded.loss_mask[1:])
    return encoded.ids[: int(trained[-1]) + 1] if len(trained) else encoded.ids
