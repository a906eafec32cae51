"""InstructBatches: a BatchSource of instruction rows, a pure function of (seed, step).

Epoch e shuffles the conversations with a generator seeded by (seed, e) and packs them (or
puts one per row); the epochs' rows, one after another, form an endless stream, and step s
takes rows s*B .. (s+1)*B - 1 of it. So a run resumed at step s sees exactly the batches it
would have seen, and each process builds only its own rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from llmjax.data.instruct.packing import build_rows, pack_plan, row_stats
from llmjax.data.instruct.tokenize import Encoded
from llmjax.data.sources import HostBatch, Region, cut


@dataclass(frozen=True, eq=False)
class InstructBatches:
    """Batches {"inputs", "targets", "mask", "segments", "positions"} [B, T] of `encoded`."""

    encoded: Sequence[Encoded]
    batch_size: int
    seq_len: int
    seed: int
    packed: bool = True
    pad_id: int = 0
    # Row plans of the epochs computed so far: (conversation indices of each row) per epoch.
    _plans: list[list[list[int]]] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.encoded:
            raise ValueError("InstructBatches needs at least one encoded conversation")
        if self.batch_size < 1 or self.seed < 0:
            raise ValueError(
                f"batch_size={self.batch_size} must be >= 1 and seed={self.seed} non-negative"
            )
        pack_plan(self.encoded, self.seq_len, packed=False)  # checks every length fits a row

    def epoch_plan(self, epoch: int) -> list[list[int]]:
        """The rows of epoch `epoch`, each a list of indices into `encoded`."""
        while len(self._plans) <= epoch:
            e = len(self._plans)
            order = np.random.default_rng([self.seed, e]).permutation(len(self.encoded))
            shuffled = [self.encoded[i] for i in order]
            plan = pack_plan(shuffled, self.seq_len, packed=self.packed)
            self._plans.append([[int(order[i]) for i in row] for row in plan])
        return self._plans[epoch]

    def _rows_at(self, indices: np.ndarray) -> list[list[int]]:
        """The plans of global row indices (the epochs' rows laid end to end)."""
        out, epoch, first = [], 0, 0
        for g in indices.tolist():  # indices increase, so the epochs are walked once
            while g >= first + len(self.epoch_plan(epoch)):
                first += len(self.epoch_plan(epoch))
                epoch += 1
            out.append(self.epoch_plan(epoch)[g - first])
        return out

    def batch(self, step: int, rows: slice | None = None) -> HostBatch:
        if step < 0:
            raise ValueError(f"step={step} must be non-negative")
        indices = step * self.batch_size + np.arange(self.batch_size)
        if rows is not None:
            indices = indices[rows]
        plan = self._rows_at(indices)
        return build_rows(self.encoded, plan, self.seq_len, pad_id=self.pad_id)

    def batches(self, start: int, region: Region | None = None) -> Iterator[HostBatch]:
        rows = None if region is None else region[0]
        columns = None if region is None else region[1:2]
        step = start
        while True:
            local = self.batch(step, rows)
            yield local if not columns else cut(local, (slice(None), *columns))
            step += 1

    def stats(self) -> dict[str, float]:
        """`row_stats` of the first epoch: how many rows, and the share of real tokens."""
        return row_stats(build_rows(self.encoded, self.epoch_plan(0), self.seq_len))
