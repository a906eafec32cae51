"""Corpora: raw training bytes from a file, a directory, or the Python standard library (whole,
or as Documents read a block at a time)."""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from llmjax.data.documents import (
    BLOCK_BYTES,
    Document,
    Documents,
    file_blocks,
    sha256_of_blocks,
)

DEFAULT_CORPUS_MAX_BYTES = 4 * 1024 * 1024
# Left out of the default corpus: tests, GUI code, the 2to3 tool, codec tables and generated
# files, which are either huge, repetitive, or differ from one install to the next.
_DEFAULT_SKIP_DIRS = frozenset(
    {
        "__pycache__",
        "site-packages",
        "dist-packages",
        "test",
        "tests",
        "idlelib",
        "tkinter",
        "turtledemo",
        "lib2to3",
        "encodings",
        "pydoc_data",
    }
)
_BINARY_SNIFF_BYTES = 8192
# Text in a legacy 8-bit encoding has a few bytes that are not UTF-8 (an accented letter here
# and there); images, archives and compiled files have about half.
_BINARY_INVALID_SHARE = 0.3
# Files llmjax writes beside user data (e.g. cached tokenizers) carry this in their name.
LLMJAX_FILE_MARKER = ".llmjax-"
_FIX_HINT = (
    "pass a text file or a directory of text files, or no path to use the built-in default "
    "corpus (the Python standard library sources)"
)


@dataclass(frozen=True)
class Corpus:
    """Raw bytes to train on, with a name and a content fingerprint for cache keys."""

    name: str
    data: bytes = field(repr=False)
    fingerprint: str

    @classmethod
    def from_bytes(cls, name: str, data: bytes) -> Corpus:
        return cls(name=name, data=data, fingerprint=hashlib.sha256(data).hexdigest())


def _with_newline(data: bytes) -> bytes:
    return data if data.endswith(b"\n") else data + b"\n"


def default_corpus() -> Corpus:
    """The running interpreter's standard library `.py` sources: about 4 MB, no network needed.

    Files are taken in sorted relative-path order, each after a `# file: <relpath>` line, until
    the next one would pass DEFAULT_CORPUS_MAX_BYTES. Tests, site-packages, GUI code and codec
    tables are left out, as are files that cannot be read.
    """
    name, parts = _default_parts()
    return Corpus.from_bytes(name, b"".join(part for _, part in parts))


def _default_parts() -> tuple[str, list[tuple[str, bytes]]]:
    """The default corpus's name and its files: (relative path, header line + source)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    relpaths = []
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = [d for d in dirs if d not in _DEFAULT_SKIP_DIRS and not d.startswith(".")]
        for name in files:
            if name.endswith(".py") and not name.startswith(("_sysconfigdata", ".")):
                relpaths.append((Path(root) / name).relative_to(stdlib).as_posix())
    parts, size = [], 0
    for relpath in sorted(relpaths):
        try:
            content = (stdlib / relpath).read_bytes()
        except OSError:
            continue
        part = f"# file: {relpath}\n".encode() + _with_newline(content)
        if size + len(part) > DEFAULT_CORPUS_MAX_BYTES:
            break
        parts.append((relpath, part))
        size += len(part)
    if not parts:
        raise FileNotFoundError(
            f"found no readable .py files under the standard library at {stdlib}; "
            "pass a corpus path instead"
        )
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return f"python{version}-stdlib", parts


def read_corpus(path: str | os.PathLike | None) -> Corpus:
    """Reads a corpus: None -> default_corpus(); a file -> its bytes; a directory -> its text files.

    A directory is read recursively in sorted relative-path order, each file ending in a newline,
    with no headers added. Skipped: hidden files and directories (name starts with "."), binary
    files, empty or unreadable files, and files llmjax itself wrote there (".llmjax-" in the
    name). Symlinked directories are not followed. Binary means a NUL byte in the first 8 KB, or
    mostly bytes there that are not UTF-8 (see binary_reason); a binary file given by name is
    refused. `text_documents` reads the same bytes a block at a time.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: `path` is an empty or binary file, a directory with no usable text files, or
            neither a file nor a directory.
    """
    if path is None:
        return default_corpus()
    documents = text_documents(path)
    return Corpus.from_bytes(documents.name, b"".join(documents.blocks()))


def text_documents(path: str | os.PathLike | None, block_bytes: int = BLOCK_BYTES) -> Documents:
    """The corpus `read_corpus(path)` reads, as Documents (one per file) read in blocks of
    `block_bytes`: the same bytes, checks and errors, without holding them all in memory.
    Its fingerprint is that of read_corpus(path), computed by reading the files once."""
    if path is None:
        name, parts = _default_parts()
        return Documents(
            name,
            separated=False,
            read=lambda: (Document(rel.encode(), (part,)) for rel, part in parts),
            fingerprint_fn=lambda: sha256_of_blocks(part for _, part in parts),
            size=sum(len(part) for _, part in parts),
            description="the built-in corpus (the Python standard library sources)",
        )
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"corpus path {path} does not exist; {_FIX_HINT}")
    if path.is_file():
        why = "it is empty" if path.stat().st_size == 0 else binary_reason(_head(path))
        if why == "it is empty":
            raise ValueError(f"corpus file {path} is empty; {_FIX_HINT}")
        if why:
            raise ValueError(f"corpus file {path} is not text ({why}); {_FIX_HINT}")

        def read_file() -> Iterator[Document]:
            yield Document(path.name.encode(), file_blocks(path, block_bytes))

        return Documents(
            path.name,
            separated=False,
            read=read_file,
            fingerprint_fn=lambda: sha256_of_blocks(file_blocks(path)),
            size=path.stat().st_size,
            description=f"the text file {path}",
        )
    if path.is_dir():
        files = _directory_files(path)

        def read_directory() -> Iterator[Document]:
            for relpath in files:
                blocks = _with_newline_blocks(file_blocks(path / relpath, block_bytes))
                yield Document(relpath.encode(), blocks)

        return Documents(
            path.resolve().name or str(path),
            separated=False,
            read=read_directory,
            fingerprint_fn=lambda: sha256_of_blocks(
                block for document in read_directory() for block in document.blocks
            ),
            size=sum((path / relpath).stat().st_size for relpath in files),
            description=f"the text folder {path}",
        )
    raise ValueError(f"corpus path {path} is neither a regular file nor a directory; {_FIX_HINT}")


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(_BINARY_SNIFF_BYTES)


def _with_newline_blocks(blocks: Iterator[bytes]) -> Iterator[bytes]:
    last = b""
    for block in blocks:
        yield block
        last = block
    if not last.endswith(b"\n"):
        yield b"\n"


def binary_reason(data: bytes) -> str | None:
    """Why `data` does not look like text, judged from its start: a NUL byte, or mostly bytes
    that are not UTF-8; None if it looks like text."""
    head = data[:_BINARY_SNIFF_BYTES]
    if b"\0" in head:
        return f"it has a NUL byte at offset {head.index(0)}, as binary files do"
    # A multi-byte character cut at the end of the sniffed bytes is not an invalid one.
    text = head.decode("utf-8", errors="surrogateescape")
    if len(head) == _BINARY_SNIFF_BYTES:
        text = text[:-3]
    invalid = sum(1 for c in text if "\udc80" <= c <= "\udcff")
    if text and invalid > _BINARY_INVALID_SHARE * len(text):
        return f"{invalid} of its first {len(text)} characters are bytes that are not UTF-8"
    return None


def _directory_files(directory: Path) -> list[str]:
    """The relative paths of a directory's usable text files, in the order they are read."""
    skipped = {"hidden": 0, "binary": 0, "empty or unreadable": 0}
    relpaths = []
    for root, dirs, files in os.walk(directory):
        hidden_dirs = [d for d in dirs if d.startswith(".")]
        skipped["hidden"] += len(hidden_dirs)
        dirs[:] = [d for d in dirs if d not in hidden_dirs]
        for name in files:
            if name.startswith("."):
                skipped["hidden"] += 1
            elif LLMJAX_FILE_MARKER not in name:
                relpaths.append((Path(root) / name).relative_to(directory).as_posix())
    usable = []
    for relpath in sorted(relpaths):
        file = directory / relpath
        try:
            head = _head(file) if file.is_file() else b""
        except OSError:
            head = b""
        if not head:
            skipped["empty or unreadable"] += 1
        elif binary_reason(head):
            skipped["binary"] += 1
        else:
            usable.append(relpath)
    if not usable:
        counts = ", ".join(f"{n} {why}" for why, n in skipped.items())
        raise ValueError(
            f"corpus directory {directory} has no usable text files (skipped: {counts}); "
            f"{_FIX_HINT}"
        )
    return usable
