"""Documents: a corpus read piece by piece, so that one larger than memory is never loaded whole.

A corpus is a sequence of documents, each a key and an iterable of byte blocks. Two kinds:

- a text stream (`separated=False`: a text file, a folder of them, the built-in corpus): the
  documents are files whose bytes, one after another, are one stream, tokenized as if it were
  read whole (the token stream of today's `read_corpus(path).data`);
- records (`separated=True`: JSONL, Parquet, a Hugging Face dataset): each document is one
  record's text, tokenized on its own and followed by the tokenizer's document separator
  (`Tokenizer.document_separator`).

A document's key is what a split by documents hashes: a file's relative path, a record's text
(so that duplicated records fall on the same side).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

BLOCK_BYTES = 1 << 23  # 8 MiB: what is read, decoded and tokenized at a time


class Document(NamedTuple):
    """One document: the key a split by documents hashes, and its bytes in blocks."""

    key: bytes
    blocks: Iterable[bytes]


@dataclass(frozen=True, eq=False)
class Documents:
    """A corpus as documents read on demand: `iter(documents)` reads it (again) from the start.

    `fingerprint` names the content (a SHA-256 in hex; for a text stream, that of its bytes,
    as Corpus.fingerprint is), computed on first use by `fingerprint_fn`, which may read the
    whole corpus once. `size` is its length in bytes where known (for progress).
    """

    name: str
    separated: bool
    read: Callable[[], Iterator[Document]] = field(repr=False)
    fingerprint_fn: Callable[[], str] = field(repr=False)
    size: int | None = None
    # What the corpus is, in words, for messages ("the JSONL file x.jsonl, field 'text'").
    description: str = ""

    def __iter__(self) -> Iterator[Document]:
        return self.read()

    @cached_property
    def fingerprint(self) -> str:
        return self.fingerprint_fn()

    def blocks(self) -> Iterator[bytes]:
        """Every block of every document, in order (no separators)."""
        for document in self:
            yield from document.blocks


def sha256_of_blocks(blocks: Iterable[bytes]) -> str:
    """The SHA-256 (hex) of the concatenated blocks."""
    digest = hashlib.sha256()
    for block in blocks:
        digest.update(block)
    return digest.hexdigest()


def file_blocks(path, block_bytes: int = BLOCK_BYTES) -> Iterator[bytes]:
    """A file's bytes in blocks of `block_bytes`."""
    with open(path, "rb") as f:
        while block := f.read(block_bytes):
            yield block


def in_validation(key: bytes, val_fraction: float) -> bool:
    """Whether the document with `key` is held out for validation: its hash, read as a number
    in [0, 1), is below `val_fraction` (so about that share is, whatever the order)."""
    value = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64
    return value < val_fraction
