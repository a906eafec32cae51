"""Token files: a corpus tokenized a block at a time into .npy files, never held whole.

Each output file gets a fixed-size .npy header first (its length is rewritten at the end),
then the ids as they come, so memory holds one block of text and its ids, whatever the size of
the corpus. A text stream is encoded by Tokenizer.stream_encoder, which cuts only where the
ids do not change (so the file holds `encode_bytes` of the whole stream); records are encoded
in batches of about a block, each followed by the tokenizer's document separator.
"""

from __future__ import annotations

import ast
import struct
import sys
import time
from collections.abc import Callable, Sequence
from typing import BinaryIO

import numpy as np

from llmjax.data.documents import BLOCK_BYTES, Documents
from llmjax.data.tokenizers import Tokenizer

_HEADER_BYTES = 128  # a .npy v1.0 header, room for any 1-D shape; a multiple of 64 as numpy's
_MAGIC = b"\x93NUMPY\x01\x00"
_BATCH_DOCUMENTS = 1 << 16


def npy_header(dtype: np.dtype, n: int) -> bytes:
    """The .npy (version 1.0) header of a 1-D array of `n` `dtype` items, padded to 128 bytes."""
    described = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False}
    text = repr({**described, "shape": (n,)})
    room = _HEADER_BYTES - len(_MAGIC) - 2
    assert len(text) < room and ast.literal_eval(text)["shape"] == (n,)
    return _MAGIC + struct.pack("<H", room) + (text.ljust(room - 1) + "\n").encode("latin1")


class TokenWriter:
    """Appends ids to an open file as a growing 1-D .npy array of `dtype`."""

    def __init__(self, file: BinaryIO, dtype: np.dtype):
        self.file, self.dtype, self.n = file, np.dtype(dtype), 0
        file.write(npy_header(self.dtype, 0))

    def write(self, ids: np.ndarray) -> None:
        if len(ids):
            self.file.write(np.asarray(ids).astype(self.dtype).tobytes())
            self.n += len(ids)

    def close(self) -> None:
        """Writes the final length into the header."""
        self.file.seek(0)
        self.file.write(npy_header(self.dtype, self.n))
        self.file.seek(0, 2)


class Progress:
    """Bytes tokenized so far: a tqdm bar on a terminal; elsewhere (a log file, CI) a plain
    line every `every_s` seconds, and one at the end if any was written."""

    def __init__(self, total: int | None, desc: str, *, enabled: bool = True, every_s=10.0):
        self.enabled, self.total, self.desc, self.every_s = enabled, total, desc, every_s
        self.n, self.start, self.last, self.lines = 0, time.perf_counter(), 0.0, 0
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total, desc=desc, unit="B", unit_scale=True, delay=1.0, dynamic_ncols=True
            )

    def update(self, n: int) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.perf_counter() - self.start - self.last >= self.every_s:
            self.last = time.perf_counter() - self.start
            self._line()

    def _line(self, done: str = "") -> None:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        of = f" of {self.total / 1e6:.1f} MB" if self.total else ""
        rate = self.n / 1e6 / elapsed
        print(
            f"{self.desc}: {self.n / 1e6:.1f} MB{of}, {rate:.1f} MB/s, {elapsed:.0f} s{done}",
            file=sys.stderr,
            flush=True,
        )
        self.lines += 1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.lines:
            self._line(" (done)")


class _Output:
    """One token file and what is still to be encoded into it."""

    def __init__(self, file: BinaryIO, tokenizer: Tokenizer, dtype: np.dtype):
        self.writer = TokenWriter(file, dtype)
        self.tokenizer = tokenizer
        self.stream = tokenizer.stream_encoder()
        self.pending: list[bytes] = []
        self.pending_bytes = 0

    def add_record(self, data: bytes, block_bytes: int) -> None:
        self.pending.append(data)
        self.pending_bytes += len(data)
        if self.pending_bytes >= block_bytes or len(self.pending) >= _BATCH_DOCUMENTS:
            self.flush_records()

    def flush_records(self) -> None:
        if not self.pending:
            return
        errors = self.tokenizer.stream_errors
        texts = [data.decode("utf-8", errors=errors) for data in self.pending]
        separator = self.tokenizer.document_separator
        for ids in self.tokenizer.encode_batch(texts):
            self.writer.write(ids)
            self.writer.write(separator)
        self.pending, self.pending_bytes = [], 0

    def finish(self) -> None:
        self.flush_records()
        self.writer.write(self.stream.finish())
        self.writer.close()


def write_tokens(
    documents: Documents,
    tokenizer: Tokenizer,
    files: Sequence[BinaryIO],
    dtype: np.dtype,
    *,
    route: Callable[[bytes], int] = lambda key: 0,
    progress: Progress | None = None,
    block_bytes: int = BLOCK_BYTES,
) -> list[int]:
    """Tokenizes `documents` into the open `files` (.npy arrays of `dtype`), each document into
    `files[route(key)]`, and returns how many ids each file got.

    A text stream's documents routed to one file are one stream there: the file holds the
    `encode_bytes` of their bytes, one after another. Records are encoded each on its own, in
    batches of about `block_bytes`, each followed by `tokenizer.document_separator`.
    """
    outputs = [_Output(f, tokenizer, dtype) for f in files]
    for document in documents:
        output = outputs[route(document.key)]
        if documents.separated:
            data = b"".join(document.blocks)
            output.add_record(data, block_bytes)
            if progress is not None:
                progress.update(len(data))
            continue
        for block in document.blocks:
            output.writer.write(output.stream.feed(block))
            if progress is not None:
                progress.update(len(block))
    for output in outputs:
        output.finish()
    return [output.writer.n for output in outputs]
