"""Batch sources: where the training loop's host batches come from.

A source is anything with `batches(start, region)`: an iterator of host batches (dicts of
numpy arrays, [B] or [B, T, ...] per field) beginning at optimizer step `start`, each cut to
`region` (this process's rows and columns of the global batch, in a multi-process run). A
source that is a pure function of the step (like `TextWindows`) makes resumed runs exact.

A plain iterable of global host batches is a source too (see `iterate`): it is read from its
current position, whatever `start` is, and each batch is cut to the region.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from llmjax.data.dataset import train_batch

HostBatch = dict[str, np.ndarray]
Region = tuple[slice, ...]


@runtime_checkable
class BatchSource(Protocol):
    """Host batches from optimizer step `start` on, cut to `region` (None: whole batches)."""

    def batches(self, start: int, region: Region | None = None) -> Iterator[HostBatch]: ...


@dataclass(frozen=True, eq=False)
class TextWindows:
    """Random windows {"inputs", "targets"} of a token stream, a pure function of (seed, step):
    a resumed run sees the batches it would have seen, and every process cuts its own rows."""

    tokens: np.ndarray
    batch_size: int
    seq_len: int
    seed: int

    def batch(self, step: int, rows: slice | None = None) -> HostBatch:
        return train_batch(
            self.tokens,
            step,
            batch_size=self.batch_size,
            seq_len=self.seq_len,
            seed=self.seed,
            rows=rows,
        )

    def batches(self, start: int, region: Region | None = None) -> Iterator[HostBatch]:
        rows, columns = (None, None) if region is None else region[:2]
        whole = columns is None or columns == slice(0, self.seq_len)
        step = start
        while True:
            # Each process reads only its own rows (and columns, if the sequence is split).
            local = self.batch(step, rows)
            yield local if whole else {k: v[:, columns] for k, v in local.items()}
            step += 1


@dataclass(frozen=True, eq=False)
class FromFunction:
    """The batches `fn(step)` of steps `start`, `start + 1`, ... (cut to the region): any
    generator of batches made a resumable source."""

    fn: Callable[[int], HostBatch]

    def batches(self, start: int, region: Region | None = None) -> Iterator[HostBatch]:
        step = start
        while True:
            yield cut(self.fn(step), region)
            step += 1


def cut(batch: HostBatch, region: Region | None) -> HostBatch:
    """Each field's part in `region`: rows of a [B] field, rows and columns of a [B, T, ...]."""
    if region is None:
        return batch
    return {k: np.asarray(v)[region[: np.ndim(v)]] for k, v in batch.items()}


def iterate(source: BatchSource | Iterable[HostBatch], start: int, region: Region | None):
    """The host batches of `source` from step `start`, cut to `region`."""
    if isinstance(source, BatchSource):
        return source.batches(start, region)
    return (cut(batch, region) for batch in source)


def describe(source: Any) -> str:
    """A short name of a source for messages."""
    return f"the batch source ({type(source).__name__})"
