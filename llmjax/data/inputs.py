"""open_documents: the corpus a `data.path` names, read as Documents in the format
`data.format` names ("auto": the one its name tells).

Formats:
    text      a text file, a folder of them, or None for the built-in corpus: one byte stream
    jsonl     a .jsonl/.ndjson file (or a folder of them): one document per line's text field
    parquet   a .parquet/.pq file (or a folder of them): one document per row's text column
    datasets  a directory written by `save_to_disk`, or `hf:NAME[:CONFIG]`, a hub dataset in
              the local cache (read offline): one document per row's text column, of the
              split `data.dataset_split`; `streaming` reads a hub dataset as an
              IterableDataset (a saved directory is memory-mapped Arrow, read in batches of
              rows either way)
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from llmjax.data.corpus import LLMJAX_FILE_MARKER, text_documents
from llmjax.data.documents import BLOCK_BYTES, Document, Documents, file_blocks
from llmjax.data.records import (
    JSONL_SUFFIXES,
    PARQUET_SUFFIXES,
    check_dataset,
    check_parquet,
    dataset_texts,
    is_dataset_dir,
    is_hub_name,
    jsonl_texts,
    open_dataset,
    parquet_texts,
    record_files,
)
from llmjax.errors import DataError
from llmjax.registry import Registry

log = logging.getLogger(__name__)

AUTO = "auto"


@dataclass(frozen=True)
class InputOptions:
    """How to read a data path: its format and, for records, the field that holds the text."""

    format: str = AUTO
    text_field: str = "text"
    dataset_split: str = "train"
    streaming: bool = False
    block_bytes: int = BLOCK_BYTES

    @classmethod
    def of(cls, config: object) -> InputOptions:
        """The options a config section (DataConfig) gives, by field name."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{name: getattr(config, name) for name in names if hasattr(config, name)})


Reader = Callable[[str | os.PathLike | None, InputOptions], Documents]
FORMATS: Registry[Reader] = Registry("data format")


def open_documents(
    path: str | os.PathLike | None, options: InputOptions | None = None
) -> Documents:
    """The corpus at `path` as Documents (see the module docstring for the formats)."""
    options = options or InputOptions()
    name = detect_format(path) if options.format == AUTO else options.format
    return FORMATS.get(name, field="data.format")(path, options)


def detect_format(path: str | os.PathLike | None) -> str:
    """The format a path's name or contents tell: hf:NAME and saved dataset directories are
    datasets; .jsonl/.ndjson and .parquet/.pq files, and folders of only such files, are
    records; anything else is text."""
    if path is None:
        return "text"
    if is_hub_name(path):
        return "datasets"
    path = Path(path).expanduser()
    if path.is_dir():
        if is_dataset_dir(path):
            return "datasets"
        names = [
            p.name.lower()
            for p in path.rglob("*")
            if p.is_file()
            and LLMJAX_FILE_MARKER not in p.name
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        ]
        for fmt, suffixes in (("jsonl", JSONL_SUFFIXES), ("parquet", PARQUET_SUFFIXES)):
            if names and all(n.endswith(suffixes) for n in names):
                return fmt
        return "text"
    if path.name.lower().endswith(JSONL_SUFFIXES):
        return "jsonl"
    if path.name.lower().endswith(PARQUET_SUFFIXES):
        return "parquet"
    return "text"


@FORMATS.register("text")
def _text(path: str | os.PathLike | None, options: InputOptions) -> Documents:
    return text_documents(path, options.block_bytes)


def record_documents(
    name: str,
    description: str,
    texts: Callable[[], Iterator[str | None]],
    fingerprint: Callable[[], str],
) -> Documents:
    """Documents of one record text each; null and empty texts are skipped (and counted)."""
    warned = []

    def read() -> Iterator[Document]:
        skipped = 0
        for text in texts():
            if not text:
                skipped += 1
                continue
            try:
                data = text.encode("utf-8", errors="surrogateescape")
            except UnicodeEncodeError:  # a lone surrogate JSON allows and UTF-8 does not
                data = text.encode("utf-8", errors="replace")
            yield Document(data, (data,))
        if skipped and not warned:
            warned.append(skipped)
            log.warning("%s: skipped %d null or empty texts", description, skipped)

    return Documents(
        name, separated=True, read=read, fingerprint_fn=fingerprint, description=description
    )


def _existing_files(path: str | os.PathLike | None, fmt: str, suffixes: tuple[str, ...]):
    if path is None:
        raise DataError(f"data.format={fmt} needs a data path (--data FILE)")
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"corpus path {path} does not exist; pass a {fmt} file or a folder of them"
        )
    files = record_files(path, suffixes)
    if not files:
        raise DataError(
            f"the folder {path} holds no {fmt} files (names ending in {', '.join(suffixes)})"
        )
    return path, files


def _files_fingerprint(kind: str, text_field: str, files: list[Path], root: Path) -> str:
    """Names the text of record files: the format, the field, and each file's name and bytes."""
    digest = hashlib.sha256(f"records-v1|{kind}|{text_field}".encode())
    for file in files:
        relative = file.name if root == file else file.relative_to(root).as_posix()
        digest.update(f"|{relative}|".encode())
        for block in file_blocks(file):
            digest.update(block)
    return digest.hexdigest()


@FORMATS.register("jsonl")
def _jsonl(path: str | os.PathLike | None, options: InputOptions) -> Documents:
    root, files = _existing_files(path, "jsonl", JSONL_SUFFIXES)
    field = options.text_field
    return record_documents(
        root.name,
        f"the JSONL {'file' if root.is_file() else 'folder'} {root}, field {field!r}",
        lambda: jsonl_texts(files, field),
        lambda: _files_fingerprint("jsonl", field, files, root),
    )


@FORMATS.register("parquet")
def _parquet(path: str | os.PathLike | None, options: InputOptions) -> Documents:
    root, files = _existing_files(path, "parquet", PARQUET_SUFFIXES)
    field = options.text_field
    check_parquet(files, field)
    return record_documents(
        root.name,
        f"the Parquet {'file' if root.is_file() else 'folder'} {root}, column {field!r}",
        lambda: parquet_texts(files, field),
        lambda: _files_fingerprint("parquet", field, files, root),
    )


@FORMATS.register("datasets")
def _datasets(path: str | os.PathLike | None, options: InputOptions) -> Documents:
    if path is None:
        raise DataError("data.format=datasets needs a data path: a saved dataset or hf:NAME")
    field, split = options.text_field, options.dataset_split
    dataset, files = open_dataset(path, split, options.streaming)
    hub = is_hub_name(path)
    where = f"the {'hub ' if hub else ''}dataset {path} (split {split!r})"
    check_dataset(dataset, field, where)
    identity = f"datasets-v1|{path if hub else ''}|{split}|{field}"

    def fingerprint() -> str:
        digest = hashlib.sha256(identity.encode())
        if files:  # the Arrow files the rows are read from
            for file in files:
                digest.update(f"|{file.name}|".encode())
                for block in file_blocks(file):
                    digest.update(block)
        else:  # a stream (or rows in memory): its texts, read once
            for text in dataset_texts(dataset, field):
                data = (text or "").encode("utf-8", errors="replace")
                digest.update(f"|{len(data)}|".encode() + data)
        return digest.hexdigest()

    name = str(path).removeprefix("hf:") if hub else Path(path).expanduser().resolve().name
    return record_documents(name, where, lambda: dataset_texts(dataset, field), fingerprint)
