"""ByteTokenizer: one id per byte, exact for any input."""

from __future__ import annotations

from typing import Any

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers

from llmjax.data.tokenizers.base import StreamEncoder, Tokenizer, llmjax_json
from llmjax.data.tokenizers.bpe import SPECIAL_TOKENS, bytes_to_unicode


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

    def to_hf(self) -> tokenizers.Tokenizer:
        """Byte-level BPE without merges: GPT-2's character for byte b has id b, then
        <|bos|>, <|eos|>, <|pad|> (the names llmjax's BPE loader looks for). Invalid UTF-8
        round-trips as BPETokenizer reads it: each escaped byte is its byte token."""
        vocab = {char: b for b, char in bytes_to_unicode().items()}
        hf = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        hf.decoder = decoders.ByteLevel()
        hf.add_special_tokens(list(SPECIAL_TOKENS))  # ids 256, 257, 258, in this order
        return hf

    @classmethod
    def from_json_dict(cls, payload: dict) -> ByteTokenizer:
        return cls()
