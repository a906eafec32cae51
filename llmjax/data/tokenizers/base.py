"""The abstract Tokenizer every tokenizer kind implements."""

from __future__ import annotations

import abc
import codecs
import hashlib
import json
import os
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tokenizers

from llmjax.data.cache import write_new_file

TOKENIZER_FILE = "tokenizer.json"
# Marks llmjax's own JSON format (byte and char tokenizers) apart from HF tokenizer.json files.
LLMJAX_FORMAT_KEY = "llmjax_tokenizer"
LLMJAX_FORMAT_VERSION = 1
# What follows each document of a corpus of records when a tokenizer has no EOS token (char, a
# HF tokenizer without one): a blank line, the usual paragraph break of plain text.
SEPARATOR_TEXT = "\n\n"


class StreamEncoder:
    """Encodes a byte stream fed a block at a time: the pieces `feed` and `finish` return, one
    after another, are the tokenizer's `encode_bytes` of the whole stream.

    The stream is decoded incrementally (a character split between blocks waits for its
    end), and text is encoded up to the last point `Tokenizer.stream_cut` allows; the rest
    waits for more. A tokenizer with no safe cut point encodes the whole stream at `finish`.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors=tokenizer.stream_errors)
        self._text = ""

    def feed(self, block: bytes) -> np.ndarray:
        self._text += self._decoder.decode(block)
        cut = self.tokenizer.stream_cut(self._text)
        if not cut:
            return np.zeros(0, np.int32)
        head, self._text = self._text[:cut], self._text[cut:]
        return self.tokenizer.encode(head)

    def finish(self) -> np.ndarray:
        text, self._text = self._text + self._decoder.decode(b"", final=True), ""
        return self.tokenizer.encode(text) if text else np.zeros(0, np.int32)

    @property
    def waiting(self) -> int:
        """Characters decoded and not yet encoded (what memory holds of the stream)."""
        return len(self._text)


class Tokenizer(abc.ABC):
    """Maps text or raw bytes to int32 token ids and back."""

    kind: ClassVar[str]

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int: ...

    @property
    def bos_id(self) -> int | None:
        return None

    @property
    def eos_id(self) -> int | None:
        return None

    @property
    def pad_id(self) -> int | None:
        return None

    @property
    def fill_id(self) -> int:
        """The id that pads a batch's rows: the pad token, else EOS, else 0 (padding is masked
        out, so any id serves; a special one keeps it out of the text)."""
        return next((i for i in (self.pad_id, self.eos_id) if i is not None), 0)

    @property
    def prompt_prefix(self) -> np.ndarray:
        """Ids a model trained with this tokenizer expects before a prompt's text, such as the
        BOS token that Llama's tokenizer adds; empty for llmjax's own tokenizers, whose models
        train on a plain token stream."""
        return np.zeros(0, np.int32)

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids that stand for no text: skipped by decode, 0 bytes in token_byte_lengths."""
        return frozenset(i for i in (self.bos_id, self.eos_id, self.pad_id) if i is not None)

    def encode(self, text: str) -> np.ndarray:
        """Returns int32 ids for `text` (no BOS/EOS added).

        Lone surrogates U+DC80..U+DCFF (what `bytes.decode(errors="surrogateescape")` makes of
        invalid UTF-8) stand for the raw bytes they escape.
        """
        return self.encode_bytes(text.encode("utf-8", errors="surrogateescape"))

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """`encode` of each text; a tokenizer may encode them all in one parallel batch."""
        return [self.encode(t) for t in texts]

    def decode(self, ids: Any) -> str:
        """Returns the text for `ids`, skipping special ids; invalid UTF-8 becomes U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    @abc.abstractmethod
    def encode_bytes(self, data: bytes) -> np.ndarray:
        """Returns int32 ids for raw bytes (no BOS/EOS added)."""

    @property
    def stream_errors(self) -> str:
        """How `encode_bytes` decodes bytes that are not UTF-8 ("surrogateescape": kept as the
        bytes they are; "replace": U+FFFD)."""
        return "surrogateescape"

    def stream_cut(self, text: str) -> int:
        """A position in `text`, the start of a stream that may go on, before which the text
        encodes to the same ids on its own as it does followed by anything: 0 if there is
        none. The base class knows none (the stream is encoded whole)."""
        return 0

    def stream_encoder(self) -> StreamEncoder:
        """An encoder of a byte stream fed a block at a time (see StreamEncoder)."""
        return StreamEncoder(self)

    @cached_property
    def document_separator(self) -> np.ndarray:
        """The ids that follow each document of a corpus of records: the EOS token, or, for a
        tokenizer without one, the ids of a blank line (SEPARATOR_TEXT)."""
        if self.eos_id is not None:
            return np.array([self.eos_id], np.int32)
        return self.encode(SEPARATOR_TEXT)

    @abc.abstractmethod
    def decode_bytes(self, ids: Any) -> bytes:
        """Returns the bytes `ids` stand for, skipping special ids."""

    @abc.abstractmethod
    def token_byte_lengths(self) -> np.ndarray:
        """Returns int32 [vocab_size]: UTF-8 bytes each id decodes to (0 for special ids).

        Bits per byte of a target stream = total nats / (ln 2 * lengths[targets].sum()).
        """

    @abc.abstractmethod
    def to_json(self) -> str:
        """Returns the serialized form `save` writes and `load_tokenizer` reads."""

    def to_hf(self) -> tokenizers.Tokenizer | None:
        """A HF `tokenizers` tokenizer giving the same ids (what a Hugging Face export writes
        as tokenizer.json), or None when this vocabulary has no such form."""
        return None

    @cached_property
    def fingerprint(self) -> str:
        """Short hash of the serialized form: equal fingerprints mean equal ids."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()[:16]

    def save(self, directory: str | os.PathLike) -> Path:
        """Writes `directory/tokenizer.json` and returns its path.

        Raises:
            FileExistsError: the file exists with different content (it is never overwritten).
        """
        path = Path(directory).expanduser() / TOKENIZER_FILE
        write_new_file(path, self.to_json().encode("utf-8"))
        return path

    def _checked_ids(self, ids: Any) -> np.ndarray:
        """Returns `ids` as a 1-D int64 array with special ids removed; raises on bad ids."""
        ids_N = np.asarray(ids)
        if ids_N.ndim == 0:
            ids_N = ids_N.reshape(1)
        if ids_N.ndim != 1:
            raise ValueError(f"expected a 1-D sequence of token ids, got shape {ids_N.shape}")
        if ids_N.size == 0:
            return ids_N.astype(np.int64)
        if not np.issubdtype(ids_N.dtype, np.integer):
            raise ValueError(f"token ids must be integers, got dtype {ids_N.dtype}")
        ids_N = ids_N.astype(np.int64)
        bad = (ids_N < 0) | (ids_N >= self.vocab_size)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"token id {int(ids_N[first])} at position {first} is outside this "
                f"{self.kind} tokenizer's vocabulary [0, {self.vocab_size})"
            )
        return ids_N[~self._is_special_V[ids_N]]

    @cached_property
    def _is_special_V(self) -> np.ndarray:
        is_special_V = np.zeros(self.vocab_size, dtype=bool)
        is_special_V[np.fromiter(self.special_ids, dtype=np.int64)] = True
        return is_special_V

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tokenizer):
            return NotImplemented
        return type(self) is type(other) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash((type(self), self.to_json()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


def llmjax_json(kind: str, **fields: Any) -> str:
    """Serializes a byte/char tokenizer deterministically (ASCII, so lone surrogates survive)."""
    payload = {LLMJAX_FORMAT_KEY: LLMJAX_FORMAT_VERSION, "kind": kind, **fields}
    return json.dumps(payload, sort_keys=True, ensure_ascii=True, indent=1) + "\n"
