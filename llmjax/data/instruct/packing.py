"""Rows of encoded conversations in the `lm` objective's batch layout, packed or one per row.

A conversation of N tokens fills N - 1 slots of a row: inputs ids[:-1], targets ids[1:], mask
loss_mask[1:], positions 0 .. N-2 and one segment id (1, 2, ... along the row; 0 is padding).
The model's segment masking keeps packed conversations from seeing each other, and since no
target crosses into another conversation, a packed row's loss is that of its conversations
alone. Padding has id `pad_id`, position 0, segment 0 and mask 0.

Packing is greedy first fit in the given order: each conversation goes into the first row with
room for it, else a new row. No conversation is split across rows (encode_all truncated the
long ones to fit one row).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llmjax.data.instruct.tokenize import Encoded

Rows = dict[str, np.ndarray]
FIELDS = ("inputs", "targets", "mask", "segments", "positions")


def _slots(encoded: Sequence[Encoded], seq_len: int) -> np.ndarray:
    slots_N = np.asarray([len(e) - 1 for e in encoded], np.int64)
    if len(slots_N) and (slots_N.min() < 1 or slots_N.max() > seq_len):
        raise ValueError(
            f"conversations must have 2 .. {seq_len + 1} tokens to fill a row of seq_len="
            f"{seq_len}; encode them with encode_all(..., seq_len), which truncates them"
        )
    return slots_N


def pack_plan(encoded: Sequence[Encoded], seq_len: int, *, packed: bool = True) -> list[list[int]]:
    """Which conversations (indices into `encoded`) each row holds, in row order."""
    slots_N = _slots(encoded, seq_len)
    if not packed:
        return [[i] for i in range(len(slots_N))]
    return first_fit(slots_N.tolist(), seq_len)


def first_fit(sizes: Sequence[int], capacity: int) -> list[list[int]]:
    """Items (indices into `sizes`, each <= capacity) in rows of at most `capacity`: each item,
    in order, goes into the first row with room for it."""
    rows: list[list[int]] = []
    room_R = np.zeros(len(sizes), np.int64)
    for i, size in enumerate(sizes):
        fits = np.flatnonzero(room_R[: len(rows)] >= size)
        if len(fits):
            row = int(fits[0])
        else:
            row = len(rows)
            rows.append([])
            room_R[row] = capacity
        rows[row].append(i)
        room_R[row] -= size
    return rows


def build_rows(
    encoded: Sequence[Encoded], plan: Sequence[Sequence[int]], seq_len: int, *, pad_id: int = 0
) -> Rows:
    """The rows of `plan` as int32 [R, T] inputs, targets, segments, positions and a float32
    [R, T] mask."""
    shape = (len(plan), seq_len)
    rows = {
        "inputs": np.full(shape, pad_id, np.int32),
        "targets": np.full(shape, pad_id, np.int32),
        "mask": np.zeros(shape, np.float32),
        "segments": np.zeros(shape, np.int32),
        "positions": np.zeros(shape, np.int32),
    }
    for r, members in enumerate(plan):
        start = 0
        for segment, i in enumerate(members, start=1):
            e = encoded[i]
            end = start + len(e) - 1
            rows["inputs"][r, start:end] = e.ids[:-1]
            rows["targets"][r, start:end] = e.ids[1:]
            rows["mask"][r, start:end] = e.loss_mask[1:]
            rows["segments"][r, start:end] = segment
            rows["positions"][r, start:end] = np.arange(end - start)
            start = end
    return rows


def row_stats(rows: Rows) -> dict[str, float]:
    """Rows, real (non-padding) and trained tokens, and the share of slots that are real."""
    real = int((rows["segments"] > 0).sum())
    slots = rows["segments"].size
    return {
        "rows": int(rows["segments"].shape[0]),
        "real_tokens": real,
        "trained_tokens": int(rows["mask"].sum()),
        "real_token_share": real / max(slots, 1),
    }


def make_rows(
    encoded: Sequence[Encoded], seq_len: int, *, packed: bool = True, pad_id: int = 0
) -> tuple[Rows, dict[str, float]]:
    """All of `encoded` as rows, in order (packed, or one per row), and their `row_stats`."""
    rows = build_rows(encoded, pack_plan(encoded, seq_len, packed=packed), seq_len, pad_id=pad_id)
    return rows, row_stats(rows)
