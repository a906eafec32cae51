"""Data: corpora (text, JSONL, Parquet, Hugging Face datasets), tokenizers, cached token
streams and batches."""

from llmjax.data.corpus import Corpus, default_corpus, read_corpus
from llmjax.data.dataset import TokenData, prepare_data, train_batch, val_batches
from llmjax.data.documents import Documents
from llmjax.data.inputs import InputOptions, open_documents
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
    "Documents",
    "InputOptions",
    "TokenData",
    "Tokenizer",
    "build_tokenizer",
    "default_corpus",
    "load_tokenizer",
    "open_documents",
    "prepare_data",
    "read_corpus",
    "train_batch",
    "val_batches",
]
