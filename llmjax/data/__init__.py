"""Data: corpora, tokenizers, cached token streams and batches."""

from llmjax.data.tokenizers import (
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    Tokenizer,
    build_tokenizer,
    load_tokenizer,
)

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "Tokenizer",
    "build_tokenizer",
    "load_tokenizer",
]
