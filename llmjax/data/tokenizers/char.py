"""CharTokenizer: nanoGPT's one id per distinct character of the training corpus."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import tokenizers
from tokenizers import decoders, models

from llmjax.data.tokenizers.base import Tokenizer, llmjax_json


def _codepoints(text: str) -> np.ndarray:
    # UTF-32 gives one fixed-width code unit per character, so numpy can work on all of them at
    # once; surrogatepass keeps the lone surrogates that stand for invalid UTF-8 bytes.
    return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)


class CharTokenizer(Tokenizer):
    """Id i is the i-th character of the sorted corpus alphabet; no special ids."""

    kind = "char"

    def __init__(self, chars: Iterable[str]):
        chars = list(chars)
        if not chars:
            raise ValueError("CharTokenizer needs at least one character")
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"CharTokenizer vocabulary entries must be characters: {c!r}")
            try:
                c.encode("utf-8", errors="surrogateescape")
            except UnicodeEncodeError:
                raise ValueError(
                    f"character {c!r} has no byte form; lone surrogates are allowed only in "
                    "U+DC80..U+DCFF, where they stand for invalid UTF-8 bytes"
                ) from None
        if sorted(set(chars)) != chars:
            raise ValueError("CharTokenizer vocabulary must be sorted and free of duplicates")
        self.chars = "".join(chars)
        # Sorted str order is code point order, so searchsorted on these maps a character to its id.
        self._codepoints_V = _codepoints(self.chars)

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """Builds the vocabulary nanoGPT's way: the sorted set of the characters in `text`."""
        if not text:
            raise ValueError("cannot build a CharTokenizer from empty text")
        return cls(sorted(set(text)))

    @classmethod
    def from_bytes(cls, data: bytes) -> CharTokenizer:
        """Like from_text on `data` decoded with surrogateescape, so any bytes are representable."""
        return cls.from_text(data.decode("utf-8", errors="surrogateescape"))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """Returns one id per character; raises ValueError on a character outside the vocabulary."""
        codepoints_N = _codepoints(text)
        ids_N = np.searchsorted(self._codepoints_V, codepoints_N)
        known_N = self._codepoints_V[np.minimum(ids_N, self.vocab_size - 1)] == codepoints_N
        if not known_N.all():
            position = int(np.flatnonzero(~known_N)[0])
            raise ValueError(
                f"character {text[position]!r} at position {position} is not in this "
                f"CharTokenizer's {self.vocab_size}-character vocabulary: the tokenizer was built "
                "from another corpus. Build it from text that contains every character you encode."
            )
        return ids_N.astype(np.int32)

    def encode_bytes(self, data: bytes) -> np.ndarray:
        return self.encode(data.decode("utf-8", errors="surrogateescape"))

    def stream_cut(self, text: str) -> int:
        return len(text)  # each character is its own id, whatever surrounds it

    def decode_bytes(self, ids: Any) -> bytes:
        codepoints_N = self._codepoints_V[self._checked_ids(ids)]
        text = codepoints_N.tobytes().decode("utf-32-le", errors="surrogatepass")
        return text.encode("utf-8", errors="surrogateescape")

    def token_byte_lengths(self) -> np.ndarray:
        return np.array(
            [len(c.encode("utf-8", errors="surrogateescape")) for c in self.chars], dtype=np.int32
        )

    def to_json(self) -> str:
        return llmjax_json(self.kind, chars=self.chars)

    def to_hf(self) -> tokenizers.Tokenizer | None:
        """BPE without merges or pre-tokenizer over the alphabet: each character is its own
        token, joined back without spaces. None when the alphabet holds escaped bytes (lone
        surrogates), which a HF tokenizer, working on valid UTF-8 text, cannot hold."""
        if any("\udc80" <= c <= "\udcff" for c in self.chars):
            return None
        vocab = {c: i for i, c in enumerate(self.chars)}
        hf = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
        hf.decoder = decoders.Fuse()
        return hf

    @classmethod
    def from_json_dict(cls, payload: dict) -> CharTokenizer:
        return cls(payload["chars"])

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, chars={self.chars[:16]!r}...)"
