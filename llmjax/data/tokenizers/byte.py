"""ByteTokenizer: one id per byte, exact for any input."""

from __future__ import annotations

from typing import Any

import numpy as np

from llmjax.data.tokenizers.base import StreamEncoder, Tokenizer, llmjax_json


class _ByteStream(StreamEncoder):
    """Bytes are ids, so any block boundary is a safe cut and nothing needs decoding."""

    def feed(self, block: bytes) -> np.ndarray:
        return self.tokenizer.encode_bytes(block)

    def finish(self) -> np.ndarray:
        return np.zeros(0, np.int32)

    @property
    def waiting(self) -> int:
        return 0


class ByteTokenizer(Tokenizer):
    """Ids 0..255 are bytes; 256, 257, 258 are BOS, EOS and PAD."""

    kind = "byte"

    @property
    def vocab_size(self) -> int:
        return 259

    @property
    def bos_id(self) -> int:
        return 256

    @property
    def eos_id(self) -> int:
        return 257

    @property
    def pad_id(self) -> int:
        return 258

    def encode_bytes(self, data: bytes) -> np.ndarray:
        return np.frombuffer(data, dtype=np.uint8).astype(np.int32)

    def decode_bytes(self, ids: Any) -> bytes:
        return self._checked_ids(ids).astype(np.uint8).tobytes()

    def stream_encoder(self) -> StreamEncoder:
        return _ByteStream(self)

    def token_byte_lengths(self) -> np.ndarray:
        lengths_V = np.zeros(self.vocab_size, dtype=np.int32)
        lengths_V[:256] = 1
        return lengths_V

    def to_json(self) -> str:
        return llmjax_json(self.kind)

    @classmethod
    def from_json_dict(cls, payload: dict) -> ByteTokenizer:
        return cls()
