"""Tests for llmjax.data.corpus."""

import hashlib
import os

import pytest

from llmjax.data import Corpus, default_corpus, read_corpus


@pytest.fixture(scope="module")
def default_twice() -> tuple[Corpus, Corpus]:
    return default_corpus(), default_corpus()


def test_default_corpus_is_deterministic_stdlib_source(default_twice):
    first, second = default_twice
    assert first.fingerprint == second.fingerprint and first.data == second.data
    assert first.fingerprint == hashlib.sha256(first.data).hexdigest()
    assert 0.5e6 < len(first.data) < 8e6
    assert first.data.startswith(b"# file: __future__.py\n")
    headers = [line for line in first.data.split(b"\n") if line.startswith(b"# file: ")]
    names = [h.removeprefix(b"# file: ").decode() for h in headers]
    assert names == sorted(names)
    assert not any(
        part in ("test", "tests", "site-packages") for n in names for part in n.split("/")
    )
    assert "data=" not in repr(first)  # megabytes of source stay out of reprs


def test_read_corpus_none_is_default(default_twice):
    assert read_corpus(None).fingerprint == default_twice[0].fingerprint


def test_read_file(tmp_path):
    path = tmp_path / "input.txt"
    path.write_bytes(b"hello \xff world")
    corpus = read_corpus(path)
    assert corpus.name == "input.txt" and corpus.data == b"hello \xff world"
    assert read_corpus(str(path)).fingerprint == corpus.fingerprint


def test_read_directory_skips_hidden_binary_and_own_files(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.py").write_text("first\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.md").write_text("third\n")
    (tmp_path / ".hidden.txt").write_text("hidden file")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("hidden dir")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "a.py.llmjax-bpe-4096-0123.json").write_text("{}")
    corpus = read_corpus(tmp_path)
    assert corpus.data == b"first\nsecond\nthird\n"
    assert corpus.name == tmp_path.name


def test_directory_fingerprint_follows_content(tmp_path):
    (tmp_path / "a.txt").write_text("one\n")
    before = read_corpus(tmp_path).fingerprint
    (tmp_path / "a.txt").write_text("two\n")
    assert read_corpus(tmp_path).fingerprint != before


def test_missing_path_error(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        read_corpus(missing)
    assert str(missing) in str(info.value) and "default corpus" in str(info.value)


def test_empty_file_error(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="is empty") as info:
        read_corpus(path)
    assert str(path) in str(info.value) and "pass a text file" in str(info.value)


def test_directory_without_text_files_error(tmp_path):
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02")
    (tmp_path / ".notes").write_text("hidden")
    with pytest.raises(ValueError, match="no usable text files") as info:
        read_corpus(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "1 binary" in message and "1 hidden" in message


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a FIFO to test")
def test_neither_file_nor_directory_error(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="neither a regular file nor a directory") as info:
        read_corpus(fifo)
    assert str(fifo) in str(info.value)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "NUL byte at offset 8"),
        (bytes(range(128, 256)) * 64, "bytes that are not UTF-8"),
    ],
)
def test_binary_file_is_refused_by_name(tmp_path, content, why):
    path = tmp_path / "image.png"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="is not text") as info:
        read_corpus(path)
    assert str(path) in str(info.value) and why in str(info.value)


def test_text_with_a_few_bytes_that_are_not_utf8_is_text(tmp_path):
    # A Latin-1 file: one byte in ten is not UTF-8, and it is still text to train on.
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 cr\xe8me ".encode("latin-1") * 2000)
    assert read_corpus(path).data.startswith(b"caf\xe9")
