"""Loading saved tokenizers, and building one from a spec string and a corpus."""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from llmjax.data.cache import resolve_cache_dir, write_new_file
from llmjax.data.documents import Documents
from llmjax.data.tokenizers.base import (
    LLMJAX_FORMAT_KEY,
    LLMJAX_FORMAT_VERSION,
    SEPARATOR_TEXT,
    TOKENIZER_FILE,
    Tokenizer,
)
from llmjax.data.tokenizers.bpe import BPETokenizer, last_safe_cut
from llmjax.data.tokenizers.byte import ByteTokenizer
from llmjax.data.tokenizers.char import CharTokenizer

log = logging.getLogger(__name__)

# Kinds stored in llmjax's own JSON format; anything else is read as a HF tokenizer.json.
_FROM_LLMJAX_JSON: dict[str, Callable[[dict], Tokenizer]] = {
    "byte": ByteTokenizer.from_json_dict,
    "char": CharTokenizer.from_json_dict,
}
SPEC_CHOICES = "'byte', 'char', 'bpe', or a path to a tokenizer.json"


def load_tokenizer(directory_or_file: str | os.PathLike) -> Tokenizer:
    """Loads what Tokenizer.save wrote (the directory or its tokenizer.json), or a HF file."""
    path = Path(directory_or_file).expanduser()
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no tokenizer at {path}: pass a directory written by Tokenizer.save, "
            "or a HF tokenizer.json file"
        )
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a tokenizer JSON file ({e})") from e
    if not (isinstance(payload, dict) and LLMJAX_FORMAT_KEY in payload):
        return BPETokenizer.from_file(path)
    version, kind = payload[LLMJAX_FORMAT_KEY], payload.get("kind")
    if (
        version != LLMJAX_FORMAT_VERSION
        or not isinstance(kind, str)
        or kind not in _FROM_LLMJAX_JSON
    ):
        raise ValueError(
            f"{path} holds an llmjax tokenizer of kind {kind!r}, format version {version!r}; "
            f"this llmjax reads kinds {sorted(_FROM_LLMJAX_JSON)} at version "
            f"{LLMJAX_FORMAT_VERSION}. Re-save it with a matching llmjax."
        )
    try:
        return _FROM_LLMJAX_JSON[kind](payload)
    except (KeyError, TypeError, ValueError) as e:
        detail = f"no {e}" if isinstance(e, KeyError) else str(e)
        raise ValueError(
            f"{path} is a damaged llmjax {kind} tokenizer ({detail}); restore it from a copy "
            f"(llmjax train writes it beside the run's config.json)"
        ) from e


def bpe_cache_key(corpus: bytes | Documents, vocab_size: int) -> str:
    """Names a BPE tokenizer trained on `corpus`: same corpus and vocab size, same key (a text
    stream's Documents key as its bytes do: their fingerprint is the bytes' SHA-256)."""
    corpus_hash = (
        corpus.fingerprint if isinstance(corpus, Documents) else hashlib.sha256(corpus).hexdigest()
    )
    return hashlib.sha256(f"bpe-v1|{vocab_size}|{corpus_hash}".encode()).hexdigest()[:16]


def build_tokenizer(
    spec: str,
    corpus: bytes | Documents,
    *,
    bpe_vocab_size: int = 4096,
    cache_dir: Path | None = None,
    bpe_path: Path | None = None,
) -> Tokenizer:
    """Returns the tokenizer `spec` names: "byte", "char" or "bpe" (built from `corpus`), or a path.

    "bpe" trains once and caches the tokenizer.json at `bpe_path`, by default
    `<cache_dir>/tokenizers/bpe-<vocab>-<key>.json` keyed by (corpus hash, vocab size), so later
    calls load it and get the same ids. A corpus given as Documents is read a block at a time:
    "char" collects its alphabet (with the blank line that separates records), "bpe" trains on
    its text cut where the GPT-2 regex allows, so either is what the whole text would give.
    """
    if spec == "byte":
        return ByteTokenizer()
    if spec == "char":
        if isinstance(corpus, Documents):
            return _char_from_documents(corpus)
        return CharTokenizer.from_bytes(corpus)
    if spec == "bpe":
        if bpe_path is None:
            name = f"bpe-{bpe_vocab_size}-{bpe_cache_key(corpus, bpe_vocab_size)}.json"
            bpe_path = resolve_cache_dir(cache_dir) / "tokenizers" / name
        return _load_or_train_bpe(corpus, bpe_vocab_size, Path(bpe_path))
    path = Path(spec).expanduser()
    if path.is_file() or (path / TOKENIZER_FILE).is_file():
        return load_tokenizer(path)
    message = f"unknown tokenizer {spec!r}: choose {SPEC_CHOICES}"
    if path.is_dir():
        message += f"; directory {path.resolve()} has no {TOKENIZER_FILE}"
    elif os.sep in spec or "/" in spec or spec.endswith(".json") or spec.startswith(("~", ".")):
        message += f"; no file was found at {path.resolve()}"
    raise ValueError(message)


def document_texts(documents: Documents, errors: str) -> Iterator[str]:
    """The text of `documents` in pieces, decoded with `errors`: each record on its own, or a
    text stream decoded as one and cut only where last_safe_cut allows, so that BPE training
    counts the words the whole text has."""
    if documents.separated:
        for document in documents:
            yield b"".join(document.blocks).decode("utf-8", errors=errors)
        return
    decoder = codecs.getincrementaldecoder("utf-8")(errors=errors)
    text = ""
    for block in documents.blocks():
        text += decoder.decode(block)
        cut = last_safe_cut(text)
        if cut:
            yield text[:cut]
            text = text[cut:]
    text += decoder.decode(b"", final=True)
    if text:
        yield text


def _char_from_documents(documents: Documents) -> CharTokenizer:
    chars: set[str] = set(SEPARATOR_TEXT) if documents.separated else set()
    for text in document_texts(documents, "surrogateescape"):
        chars.update(text)
    if not chars:
        raise ValueError(f"cannot build a char tokenizer from {documents.name}: it has no text")
    return CharTokenizer(sorted(chars))


def _load_or_train_bpe(corpus: bytes | Documents, vocab_size: int, path: Path) -> BPETokenizer:
    if path.exists():
        try:
            return BPETokenizer.from_file(path)
        except ValueError as e:
            message = f"cached BPE tokenizer {path} is unreadable: delete it to retrain"
            raise ValueError(message) from e
    if isinstance(corpus, Documents):
        log.info("training a %d-id BPE tokenizer on %s", vocab_size, corpus.name)
        tokenizer = BPETokenizer.train(document_texts(corpus, "replace"), vocab_size)
    else:
        log.info("training a %d-id BPE tokenizer on %d bytes", vocab_size, len(corpus))
        tokenizer = BPETokenizer.train(corpus, vocab_size)
    try:
        write_new_file(path, tokenizer.to_json().encode("utf-8"))
    except FileExistsError:
        # Another process published its tokenizer first; use that one so every run shares ids.
        return BPETokenizer.from_file(path)
    except OSError as e:
        # Training is deterministic, so an uncached tokenizer costs time on the next run, not ids.
        log.warning("could not cache the BPE tokenizer at %s (%s); it will be retrained", path, e)
        return tokenizer
    log.info("cached the BPE tokenizer at %s", path)
    return tokenizer
