"""Token datasets: tokenize a corpus once, a block at a time, into a cached memmap, split it,
and cut batches."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmjax.data.cache import atomic_replace, resolve_cache_dir
from llmjax.data.corpus import LLMJAX_FILE_MARKER
from llmjax.data.documents import Documents, in_validation
from llmjax.data.inputs import InputOptions, open_documents
from llmjax.data.records import is_hub_name
from llmjax.data.token_files import Progress, write_tokens
from llmjax.data.tokenizers import Tokenizer, build_tokenizer
from llmjax.data.tokenizers.build import bpe_cache_key

log = logging.getLogger(__name__)

_MIN_SPLIT_TOKENS = 2


@dataclass(eq=False)  # array fields have no single truth value to compare by
class TokenData:
    """A tokenizer and the read-only train/validation token memmaps it produced."""

    tokenizer: Tokenizer
    train: np.ndarray
    val: np.ndarray
    corpus_name: str


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype the cache stores ids of a `vocab_size` vocabulary in."""
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


VAL_SPLITS = ("tail", "documents")  # as llmjax.config.run.VAL_SPLITS


def prepare_data(
    path: str | os.PathLike | None,
    tokenizer: str | Tokenizer = "byte",
    *,
    bpe_vocab_size: int = 4096,
    val_fraction: float = 0.1,
    cache_dir: str | os.PathLike | None = None,
    val_split: str = "tail",
    options: InputOptions | None = None,
    progress: bool = True,
) -> TokenData:
    """Reads a corpus, builds `tokenizer`, and returns its token stream split in two.

    `path` is what open_documents reads as `options` (InputOptions: format, text field) say: a
    text file or folder, None for the built-in corpus, JSONL, Parquet, a saved or cached
    Hugging Face dataset. `tokenizer` is as in build_tokenizer; a Tokenizer instance (e.g. the
    one saved with a run) is used as it is. The corpus is tokenized once, a block at a time,
    and cached under `<cache_dir>/tokens/` (cache_dir defaults to $LLMJAX_CACHE_DIR, then
    ~/.cache/llmjax), keyed by corpus fingerprint and tokenizer identity; `progress` shows how
    far it got.

    `val_split` says which tokens validate. "tail" (nanoGPT's way, the default): the last
    `val_fraction` of the stream, the rest train. "documents": each document (a file of a text
    folder or of the built-in corpus, a record) validates if its hash falls below
    `val_fraction`, so that validation is drawn from the whole corpus. A BPE tokenizer trained
    on a user's file or directory is cached beside it when that directory is writable.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(
            f"val_fraction={val_fraction} must be strictly between 0 and 1, e.g. 0.1 for a "
            "90% train / 10% validation split"
        )
    if val_split not in VAL_SPLITS:
        raise ValueError(f"val_split={val_split!r} is not known; choose one of {VAL_SPLITS}")
    documents = open_documents(path, options or InputOptions())
    cache_root = resolve_cache_dir(cache_dir)
    if isinstance(tokenizer, Tokenizer):
        tok = tokenizer
    else:
        bpe_path = None
        if tokenizer == "bpe" and path is not None and not is_hub_name(path):
            bpe_path = _bpe_path_beside(Path(path), documents, bpe_vocab_size)
        tok = build_tokenizer(
            tokenizer,
            documents,
            bpe_vocab_size=bpe_vocab_size,
            cache_dir=cache_root,
            bpe_path=bpe_path,
        )
    if val_split == "documents":
        train, val = _cached_document_split(documents, tok, cache_root, val_fraction, progress)
        return TokenData(tok, train, val, documents.name)
    tokens = _cached_tokens(documents, tok, cache_root, progress)
    n = len(tokens)
    n_train = int(n * (1 - val_fraction))
    if min(n_train, n - n_train) < _MIN_SPLIT_TOKENS:
        raise ValueError(
            f"corpus {documents.name!r} is too small: its {n} tokens split into {n_train} train "
            f"and {n - n_train} validation tokens at val_fraction={val_fraction}, and each split "
            f"needs at least {_MIN_SPLIT_TOKENS}. Use a corpus of at least "
            f"{_tokens_needed(val_fraction)} tokens ({tok.kind} tokenizer), or change val_fraction."
        )
    return TokenData(tok, tokens[:n_train], tokens[n_train:], documents.name)


def _tokens_needed(val_fraction: float) -> int:
    def fits(n: int) -> bool:
        n_train = int(n * (1 - val_fraction))
        return min(n_train, n - n_train) >= _MIN_SPLIT_TOKENS

    n = math.ceil(_MIN_SPLIT_TOKENS / min(val_fraction, 1 - val_fraction))
    while not fits(n):  # float rounding can leave the estimate one or two short
        n += 1
    return n


def _bpe_path_beside(path: Path, documents: Documents, vocab_size: int) -> Path | None:
    path = path.expanduser().resolve()
    if not os.access(path.parent, os.W_OK):
        return None  # build_tokenizer then caches it in the cache dir
    key = bpe_cache_key(documents, vocab_size)
    # The marker keeps the name clear of user files, and read_corpus skips it.
    return path.parent / f"{path.name}{LLMJAX_FILE_MARKER}bpe-{vocab_size}-{key}.json"


def _token_path(cache_root: Path, documents: Documents, tok: Tokenizer, split: str = "") -> Path:
    dtype = token_dtype(tok.vocab_size)
    identity = f"tokens-v1|{documents.fingerprint}|{tok.kind}|{tok.vocab_size}|{tok.fingerprint}"
    key = hashlib.sha256(f"{identity}|{dtype.name}{split}".encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", documents.name)[:64]
    part = f"-{split.rsplit('|', 1)[-1]}" if split else ""
    return cache_root / "tokens" / f"{name}-{tok.kind}{tok.vocab_size}{part}-{key}.npy"


def _cached_tokens(
    documents: Documents, tok: Tokenizer, cache_root: Path, progress: bool = True
) -> np.ndarray:
    dtype = token_dtype(tok.vocab_size)
    path = _token_path(cache_root, documents, tok)
    tokens = _load_tokens(path, dtype)
    if tokens is not None:
        return tokens
    log.info("tokenizing %s with %r into %s", documents.name, tok, path)
    bar = Progress(documents.size, f"tokenizing {documents.name}", enabled=progress)
    try:
        # Written to a temp file and renamed, so a killed run never leaves a truncated cache here.
        atomic_replace(path, lambda f: write_tokens(documents, tok, [f], dtype, progress=bar))
    finally:
        bar.close()
    return _read_back(path, dtype)


def _cached_document_split(
    documents: Documents, tok: Tokenizer, cache_root: Path, val_fraction: float, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    dtype = token_dtype(tok.vocab_size)
    split = f"|documents|{val_fraction!r}|"
    paths = [_token_path(cache_root, documents, tok, split + part) for part in ("train", "val")]
    cached = [_load_tokens(path, dtype) for path in paths]
    if all(tokens is not None for tokens in cached):
        return cached[0], cached[1]
    log.info("tokenizing %s with %r into %s and %s", documents.name, tok, *paths)
    bar = Progress(documents.size, f"tokenizing {documents.name}", enabled=progress)
    route = lambda key: int(in_validation(key, val_fraction))  # noqa: E731
    try:
        # The validation file is published first, the training file once both are complete.
        atomic_replace(
            paths[0],
            lambda train: atomic_replace(
                paths[1],
                lambda val: write_tokens(
                    documents, tok, [train, val], dtype, route=route, progress=bar
                ),
            ),
        )
    finally:
        bar.close()
    train, val = (_read_back(path, dtype) for path in paths)
    if min(len(train), len(val)) < _MIN_SPLIT_TOKENS:
        raise ValueError(
            f"data.val_split=documents put {len(train)} tokens of {documents.name!r} in training "
            f"and {len(val)} in validation at val_fraction={val_fraction}; each needs at least "
            f"{_MIN_SPLIT_TOKENS}. A single text file is one document: use data.val_split=tail, "
            "or a corpus of more documents (a folder of files, JSONL, Parquet, a dataset)"
        )
    return train, val


def _read_back(path: Path, dtype: np.dtype) -> np.ndarray:
    # What was just written, even if empty (the callers say why that is too small).
    tokens = _load_tokens(path, dtype, allow_empty=True)
    if tokens is None:
        raise OSError(f"token cache {path} could not be read back after writing it")
    return tokens


def _load_tokens(path: Path, dtype: np.dtype, allow_empty: bool = False) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        tokens = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        log.warning("rebuilding unreadable token cache %s: %s", path, e)
        return None
    if tokens.ndim != 1 or tokens.dtype != dtype or (tokens.size == 0 and not allow_empty):
        log.warning("rebuilding token cache %s: unexpected shape or dtype", path)
        return None
    return tokens


def _check_windows(tokens: np.ndarray, seq_len: int, batch_size: int, split: str) -> int:
    if tokens.ndim != 1:
        raise ValueError(f"expected a 1-D token array, got shape {tokens.shape}")
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len={seq_len} and batch_size={batch_size} must both be >= 1")
    n = len(tokens)
    if n < seq_len + 1:
        raise ValueError(
            f"seq_len={seq_len} is too long for the {split} split of {n} tokens: a window needs "
            f"seq_len + 1 = {seq_len + 1} tokens. Use a smaller seq_len or a bigger corpus."
        )
    return n


def train_batch(
    tokens: np.ndarray,
    step: int,
    *,
    batch_size: int,
    seq_len: int,
    seed: int,
    rows: slice | None = None,
) -> dict[str, np.ndarray]:
    """Returns random windows {"inputs", "targets"}: int32 [B, T], targets shifted by one.

    The windows depend only on (seed, step) and len(tokens), so a resumed run gets the batches it
    would have seen. `rows` cuts out part of the batch (one process's share in a multi-process
    run): only those windows are read, and they are the same rows the whole batch would have.
    """
    n = _check_windows(tokens, seq_len, batch_size, "train")
    if seed < 0 or step < 0:
        raise ValueError(f"seed={seed} and step={step} must be non-negative")
    rng = np.random.default_rng([seed, step])
    starts_B = rng.integers(0, n - seq_len, size=batch_size)
    if rows is not None:
        starts_B = starts_B[rows]
    window_BxT1 = np.asarray(tokens[starts_B[:, None] + np.arange(seq_len + 1)], dtype=np.int32)
    return {
        "inputs": np.ascontiguousarray(window_BxT1[:, :-1]),
        "targets": np.ascontiguousarray(window_BxT1[:, 1:]),
    }


def val_batches(
    tokens: np.ndarray, *, batch_size: int, seq_len: int, max_batches: int | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """Yields consecutive non-overlapping windows {"inputs", "targets", "mask"} from the start.

    Every token after the first is a target exactly once. The last batch is padded with id 0
    under mask 0.0 (float32 [B, T], 1.0 elsewhere), so even a small split is evaluated in full.
    """
    n = _check_windows(tokens, seq_len, batch_size, "validation")
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches={max_batches} must be >= 1, or None for the whole split")
    num_windows = math.ceil((n - 1) / seq_len)
    num_batches = math.ceil(num_windows / batch_size)
    if max_batches is not None:
        num_batches = min(num_batches, max_batches)
    return _val_batches(tokens, n, batch_size, seq_len, num_batches)


def _val_batches(
    tokens: np.ndarray, n: int, batch_size: int, seq_len: int, num_batches: int
) -> Iterator[dict[str, np.ndarray]]:
    # A separate generator so that val_batches checks its arguments when called, not when
    # first iterated.
    offsets_T1 = np.arange(seq_len + 1)
    for b in range(num_batches):
        starts_B = (b * batch_size + np.arange(batch_size)) * seq_len
        index_BxT1 = starts_B[:, None] + offsets_T1
        valid_BxT1 = index_BxT1 < n
        window_BxT1 = np.asarray(tokens[np.minimum(index_BxT1, n - 1)], dtype=np.int32)
        window_BxT1[~valid_BxT1] = 0
        yield {
            "inputs": np.ascontiguousarray(window_BxT1[:, :-1]),
            "targets": np.ascontiguousarray(window_BxT1[:, 1:]),
            "mask": valid_BxT1[:, 1:].astype(np.float32),
        }
