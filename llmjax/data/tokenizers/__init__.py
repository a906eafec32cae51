"""Tokenizers: byte, char (nanoGPT) and BPE (HF `tokenizers`) behind one interface."""

from llmjax.data.tokenizers.base import Tokenizer
from llmjax.data.tokenizers.bpe import BPETokenizer
from llmjax.data.tokenizers.build import build_tokenizer, load_tokenizer
from llmjax.data.tokenizers.byte import ByteTokenizer
from llmjax.data.tokenizers.char import CharTokenizer

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "Tokenizer",
    "build_tokenizer",
    "load_tokenizer",
]
