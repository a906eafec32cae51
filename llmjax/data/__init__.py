"""Data: corpora, tokenizers, cached token streams and batches."""

from llmjax.data.corpus import Corpus, default_corpus, read_corpus
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
    "Corpus",
    "Tokenizer",
    "build_tokenizer",
    "default_corpus",
    "load_tokenizer",
    "read_corpus",
]
