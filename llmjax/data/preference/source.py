"""PreferenceBatches: a BatchSource of preference rows (one pair a row), a pure function of
(seed, step).

Epoch e orders the pairs by a permutation seeded by (seed, e); the epochs laid end to end form
an endless stream of pairs, and step s takes pairs s*B .. (s+1)*B - 1 of it. So a run resumed
at step s sees exactly the batches it would have seen, and each process builds only its rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from llmjax.data.preference.encode import EncodedPair, pair_rows
from llmjax.data.sources import HostBatch, Region, cut


@dataclass(frozen=True, eq=False)
class PreferenceBatches:
    """Batches of `encoded` pairs: chosen_/rejected_ inputs, targets, mask [B, T] (and the
    reference log-probs [B] when `ref_logps` [N, 2] is given)."""

    encoded: Sequence[EncodedPair]
    batch_size: int
    seq_len: int
    seed: int
    pad_id: int = 0
    ref_logps: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not self.encoded:
            raise ValueError("PreferenceBatches needs at least one encoded pair")
        if self.batch_size < 1 or self.seed < 0:
            raise ValueError(
                f"batch_size={self.batch_size} must be >= 1 and seed={self.seed} non-negative"
            )
        if self.ref_logps is not None and np.shape(self.ref_logps) != (len(self.encoded), 2):
            raise ValueError(
                f"ref_logps has shape {np.shape(self.ref_logps)}; it needs one (chosen, "
                f"rejected) log-prob per pair: ({len(self.encoded)}, 2)"
            )

    def indices(self, step: int, rows: slice | None = None) -> np.ndarray:
        """The pairs (indices into `encoded`) of step `step`'s rows."""
        if step < 0:
            raise ValueError(f"step={step} must be non-negative")
        n = len(self.encoded)
        g = step * self.batch_size + np.arange(self.batch_size)
        if rows is not None:
            g = g[rows]
        out = np.empty(len(g), np.int64)
        for epoch in np.unique(g // n):
            at = g // n == epoch
            out[at] = np.random.default_rng([self.seed, int(epoch)]).permutation(n)[g[at] % n]
        return out

    def batch(self, step: int, rows: slice | None = None) -> HostBatch:
        return pair_rows(
            self.encoded,
            self.indices(step, rows),
            self.seq_len,
            pad_id=self.pad_id,
            ref_logps=self.ref_logps,
        )

    def batches(self, start: int, region: Region | None = None) -> Iterator[HostBatch]:
        rows = None if region is None else region[0]
        columns = None if region is None else region[1:2]
        step = start
        while True:
            local = self.batch(step, rows)
            yield local if not columns else cut(local, (slice(None), *columns))
            step += 1
