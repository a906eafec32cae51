"""BPETokenizer: a HF `tokenizers` model, trained here as byte-level BPE or loaded from a file.

Invalid UTF-8: a byte-level tokenizer whose vocabulary holds all 256 byte tokens (every one trained
here, GPT-2, Llama 3) encodes each invalid byte as its byte token, so `encode_bytes` and
`decode_bytes` round-trip any bytes exactly. Any other tokenizer decodes input with
errors="replace" first, so its round trip is exact only for valid UTF-8.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from llmjax.data.tokenizers.base import Tokenizer

SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>")
# Looked up in order; GPT-2 uses <|endoftext|> both to start and to end a document.
BOS_NAMES = ("<|bos|>", "<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>", "<|endoftext|>")
EOS_NAMES = ("<|eos|>", "<|end_of_text|>", "<|endoftext|>", "</s>", "<eos>")
PAD_NAMES = ("<|pad|>", "<pad>", "[PAD]", "<|padding|>")

# Under the GPT-2 pre-tokenizer regex no pre-token spans a newline that has non-space on both
# sides, so cutting there gives the same ids as encoding the whole text, and the pieces can be
# encoded in parallel.
_SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)")
_CHUNK_CHARS = 1 << 16
_ESCAPED_BYTES = re.compile("[\udc80-\udcff]+")


def last_safe_cut(text: str) -> int:
    """The last position in `text` (a stream that may go on) where cutting gives the same ids
    under the GPT-2 pre-tokenizer regex as not cutting; 0 if there is none.

    Two kinds of cut qualify, both with non-space on both sides, so that no pre-token spans
    them and both parts split as they would together: after a newline ("a\nb": the newline
    is a pre-token of its own either way; what _chunks cuts at), and before a space ("a b":
    " b" begins a pre-token, and the one before it ends).
    """
    return max(_last_cut(text, "\n", after=1), _last_cut(text, " ", after=0))


def _last_cut(text: str, mark: str, after: int, tries: int = 10_000) -> int:
    # Looks back over at most `tries` marks, so that a stream short of cuts (only whitespace)
    # costs a bounded search per block, not one over all the text that waits.
    end = len(text) - 1  # the character after the mark must already be in `text`
    for _ in range(tries):
        if end <= 1:
            return 0
        i = text.rfind(mark, 0, end)
        if i < 1:
            return 0
        if not text[i - 1].isspace() and not text[i + 1].isspace():
            return i + after
        end = i
    return 0


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: byte -> the printable character that stands for it."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _chunks(text: str) -> list[str]:
    if len(text) <= _CHUNK_CHARS:
        return [text]
    pieces, start = [], 0
    while start < len(text):
        cut = _SAFE_CUT.search(text, start + _CHUNK_CHARS)
        end = cut.start() if cut else len(text)
        pieces.append(text[start:end])
        start = end
    return pieces


def _first_id(vocab: dict[str, int], names: Iterable[str]) -> int | None:
    return next((vocab[n] for n in names if n in vocab), None)


class BPETokenizer(Tokenizer):
    """Wraps a HF `tokenizers.Tokenizer` (kind "bpe" whatever the HF model type)."""

    kind = "bpe"

    def __init__(self, hf_tokenizer: tokenizers.Tokenizer):
        # A private copy: the settings below must not leak into the caller's object.
        self.hf = tokenizers.Tokenizer.from_str(hf_tokenizer.to_str())
        self.hf.no_truncation()
        self.hf.no_padding()
        # Corpus text that happens to contain "<|eos|>" must stay text, not become the EOS id.
        self.hf.encode_special_tokens = True
        vocab = self.hf.get_vocab(with_added_tokens=True)
        if not vocab:
            raise ValueError("the HF tokenizer has an empty vocabulary")
        self._vocab = vocab
        self._vocab_size = max(vocab.values()) + 1
        self._bos_id = _first_id(vocab, BOS_NAMES)
        self._eos_id = _first_id(vocab, EOS_NAMES)
        self._pad_id = _first_id(vocab, PAD_NAMES)
        added = self.hf.get_added_tokens_decoder()
        self._added_special = frozenset(i for i, t in added.items() if t.special)
        config = json.loads(self.hf.to_str())
        self._byte_level = (config.get("decoder") or {}).get("type") == "ByteLevel"
        pre = config.get("pre_tokenizer") or {}
        self._safe_to_chunk = (
            pre.get("type") == "ByteLevel"
            and pre.get("use_regex", True)
            and not pre.get("add_prefix_space", False)
            and config.get("normalizer") is None
            and all(t.special for t in added.values())
        )
        byte_to_char = bytes_to_unicode()
        byte_ids = [vocab.get(byte_to_char[b]) for b in range(256)]
        self._byte_ids_256 = (
            np.array(byte_ids, dtype=np.int32)
            if self._byte_level and None not in byte_ids
            else None
        )

    @classmethod
    def train(
        cls,
        texts_or_bytes: str | bytes | Iterable[str | bytes],
        vocab_size: int = 4096,
        *,
        min_frequency: int = 2,
        show_progress: bool = False,
    ) -> BPETokenizer:
        """Trains byte-level BPE with <|bos|>, <|eos|>, <|pad|> as ids 0, 1, 2.

        Stops short of `vocab_size` when no pair occurs `min_frequency` times. Invalid UTF-8 in
        training bytes is read as U+FFFD; it only shapes the merges.
        """
        floor = 256 + len(SPECIAL_TOKENS)
        if vocab_size < floor:
            raise ValueError(
                f"bpe vocab_size={vocab_size} is too small: byte-level BPE needs at least {floor} "
                "ids (256 bytes + 3 special tokens); use e.g. 4096"
            )
        if isinstance(texts_or_bytes, str | bytes):
            texts_or_bytes = [texts_or_bytes]

        def pieces() -> Iterator[str]:
            for item in texts_or_bytes:
                text = item.decode("utf-8", errors="replace") if isinstance(item, bytes) else item
                yield from _chunks(text)

        hf = tokenizers.Tokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress,
        )
        hf.train_from_iterator(pieces(), trainer)
        return cls(hf)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> BPETokenizer:
        """Loads any HF tokenizer.json; BOS/EOS/PAD are found by their usual names, else None."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer file at {path}: pass a HF tokenizer.json")
        try:
            hf = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # HF raises a bare Exception for malformed files.
            raise ValueError(f"{path} is not a valid HF tokenizer.json: {e}") from e
        return cls(hf)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def bos_id(self) -> int | None:
        return self._bos_id

    @property
    def eos_id(self) -> int | None:
        return self._eos_id

    @property
    def pad_id(self) -> int | None:
        return self._pad_id

    @property
    def special_ids(self) -> frozenset[int]:
        return super().special_ids | self._added_special

    @cached_property
    def prompt_prefix(self) -> np.ndarray:
        """The ids the tokenizer's post-processor puts before a text (Llama's <s>); none for
        tokenizers that llmjax trains."""
        plain = self.hf.encode("a", add_special_tokens=False).ids
        full = self.hf.encode("a", add_special_tokens=True).ids
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                return np.asarray(full[:start], np.int32)
        return np.zeros(0, np.int32)

    @property
    def exact_bytes(self) -> bool:
        """Whether encode_bytes/decode_bytes round-trip any bytes, invalid UTF-8 included."""
        return self._byte_ids_256 is not None

    def encode(self, text: str) -> np.ndarray:
        if not _ESCAPED_BYTES.search(text):
            return self._encode_each([text])[0]
        if not self.exact_bytes:
            text = text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
            return self._encode_each([text])[0]
        # Valid runs go through the tokenizer; each escaped byte becomes its own byte token.
        encoded = self._encode_each(_ESCAPED_BYTES.split(text))
        pieces = [encoded[0]]
        for escaped, ids_N in zip(_ESCAPED_BYTES.findall(text), encoded[1:], strict=True):
            raw_N = np.frombuffer(escaped.encode("utf-8", errors="surrogateescape"), np.uint8)
            pieces += [self._byte_ids_256[raw_N], ids_N]
        return np.concatenate(pieces)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """One parallel batch for the texts without escaped bytes; `encode` for the others."""
        out: list[np.ndarray | None] = [None] * len(texts)
        plain = [i for i, t in enumerate(texts) if not _ESCAPED_BYTES.search(t)]
        for i, ids in zip(plain, self._encode_each([texts[i] for i in plain]), strict=True):
            out[i] = ids
        return [self.encode(t) if ids is None else ids for t, ids in zip(texts, out, strict=True)]

    def encode_bytes(self, data: bytes) -> np.ndarray:
        return self.encode(data.decode("utf-8", errors=self.stream_errors))

    @property
    def stream_errors(self) -> str:
        return "surrogateescape" if self.exact_bytes else "replace"

    def stream_cut(self, text: str) -> int:
        """The last safe cut under the GPT-2 regex (last_safe_cut) for a tokenizer that splits
        text by it alone; 0 (encode whole) for one with a normalizer, prefix space or other
        pre-tokenizer, whose safe cuts are not known."""
        return last_safe_cut(text) if self._safe_to_chunk else 0

    def _encode_each(self, texts: list[str]) -> list[np.ndarray]:
        """Returns int32 ids per text, encoding all of them in one parallel batch."""
        pieces = [_chunks(t) if self._safe_to_chunk else [t] for t in texts]
        flat = [piece for text_pieces in pieces for piece in text_pieces]
        # encode_batch_fast skips the character offsets, which only ids are read from.
        encodings = iter(self.hf.encode_batch_fast(flat, add_special_tokens=False))
        return [
            np.concatenate([np.asarray(next(encodings).ids, dtype=np.int32) for _ in text_pieces])
            for text_pieces in pieces
        ]

    def decode_bytes(self, ids: Any) -> bytes:
        ids_N = self._checked_ids(ids)
        if self._byte_level:
            table = self._token_bytes
            return b"".join([table[i] for i in ids_N.tolist()])
        return self.hf.decode(ids_N.tolist(), skip_special_tokens=True).encode("utf-8")

    @cached_property
    def _token_bytes(self) -> list[bytes]:
        # Mirrors HF's ByteLevel decoder: a token maps through the alphabet, or, if it has a
        # character outside it (an added token), stands for its own UTF-8 bytes.
        char_to_byte = {c: b for b, c in bytes_to_unicode().items()}
        special = self.special_ids
        table = [b""] * self._vocab_size
        for token, i in self._vocab.items():
            if i in special:
                continue
            if all(c in char_to_byte for c in token):
                table[i] = bytes(char_to_byte[c] for c in token)
            else:
                table[i] = token.encode("utf-8")
        return table

    def token_byte_lengths(self) -> np.ndarray:
        """Exact for byte-level tokenizers; otherwise the UTF-8 length of each id decoded alone."""
        if self._byte_level:
            return np.array([len(b) for b in self._token_bytes], dtype=np.int32)
        texts = self.hf.decode_batch([[i] for i in range(self._vocab_size)])
        lengths_V = np.array([len(t.encode("utf-8")) for t in texts], dtype=np.int32)
        lengths_V[np.fromiter(self.special_ids, dtype=np.int64)] = 0
        return lengths_V

    def to_json(self) -> str:
        return self.hf.to_str()

    def to_hf(self) -> tokenizers.Tokenizer:
        return tokenizers.Tokenizer.from_str(self.hf.to_str())
