"""Chunked tokenization equals tokenizing the whole corpus at once: the stream encoders of each
tokenizer, fed blocks cut anywhere (inside a UTF-8 character, inside a BPE merge), the token
files written a block at a time, and prepare_data over small blocks."""

import io
import random

import numpy as np
import pytest
import tokenizers as hf_tokenizers

from llmjax.data import BPETokenizer, ByteTokenizer, CharTokenizer, prepare_data
from llmjax.data.corpus import text_documents
from llmjax.data.documents import Document, Documents
from llmjax.data.inputs import InputOptions
from llmjax.data.token_files import Progress, TokenWriter, npy_header, write_tokens
from llmjax.data.tokenizers.bpe import last_safe_cut

PIECES = ["the", " cat", " sat", "é", "日本語", "naïve", "  ", " ", "\n", "\n\n", "\t", "!", "'s",
          " 123", "€uro", "a\u00a0b", "\u2028", "x", "    return", "def f():"]  # fmt: skip


def _corpus(n: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    data = "".join(rng.choice(PIECES) for _ in range(n)).encode()
    return data + b"\xff\xfe invalid \xe2\x82 cut \x80\n"  # bytes that are not UTF-8


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(_corpus(4000, seed=1).decode("utf-8", "replace"), vocab_size=400)


@pytest.fixture(scope="module")
def unsafe():
    """A HF tokenizer with no known safe cut (a whitespace pre-tokenizer, not byte-level)."""
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(["the", "cat", "sat", "!"])}}
    hf = hf_tokenizers.Tokenizer(hf_tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = hf_tokenizers.pre_tokenizers.Whitespace()
    return BPETokenizer(hf)


def _tokenizers(bpe, unsafe):
    data = _corpus(3000)
    return {"byte": ByteTokenizer(), "char": CharTokenizer.from_bytes(data), "bpe": bpe,
            "unsafe": unsafe}  # fmt: skip


def _streamed(tok, data: bytes, block: int):
    encoder = tok.stream_encoder()
    pieces, waiting = [], 0
    for i in range(0, len(data), block):
        pieces.append(encoder.feed(data[i : i + block]))
        waiting = max(waiting, encoder.waiting)
    pieces.append(encoder.finish())
    return np.concatenate(pieces), pieces, waiting


@pytest.mark.parametrize("kind", ["byte", "char", "bpe", "unsafe"])
@pytest.mark.parametrize("block", [1, 2, 3, 5, 13, 64, 1000])
def test_stream_encoder_equals_whole_encoding(kind, block, bpe, unsafe):
    tok = _tokenizers(bpe, unsafe)[kind]
    data = _corpus(3000)
    ids, pieces, waiting = _streamed(tok, data, block)
    np.testing.assert_array_equal(ids, tok.encode_bytes(data))
    if kind == "unsafe":  # no safe cut known: all of it waits for the end
        assert sum(len(p) for p in pieces[:-1]) == 0
    else:  # really chunked: ids come out as blocks go in, and little text waits
        assert sum(len(p) > 0 for p in pieces[:-1]) > 10
        assert waiting <= block + 200


def test_block_boundary_inside_a_character_and_inside_a_merge(bpe):
    data = ("x = 'naïve'\n" * 20 + "the cat sat on the mat\n" * 20).encode()
    merged = next(i for i in bpe.encode_bytes(data) if len(bpe.decode_bytes([i])) >= 3)
    token = bpe.decode_bytes([merged])
    inside_merge = data.index(token) + 1
    inside_char = data.index("ï".encode()) + 1  # between the two bytes of ï
    for tok in (bpe, ByteTokenizer(), CharTokenizer.from_bytes(data)):
        for cut in (inside_merge, inside_char):
            encoder = tok.stream_encoder()
            ids = [encoder.feed(data[:cut]), encoder.feed(data[cut:]), encoder.finish()]
            np.testing.assert_array_equal(np.concatenate(ids), tok.encode_bytes(data))


def test_last_safe_cut_splits_where_encoding_is_unchanged(bpe):
    rng = random.Random(2)
    for _ in range(300):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(2, 30)))
        cut = last_safe_cut(text)
        assert 0 <= cut < len(text)
        if cut:
            together = bpe.encode(text)
            apart = np.concatenate([bpe.encode(text[:cut]), bpe.encode(text[cut:])])
            np.testing.assert_array_equal(apart, together)
    assert last_safe_cut("a cut") == 1 and last_safe_cut("a\nb c") == 3  # before " c"
    assert last_safe_cut("a\nb") == 2
    assert last_safe_cut("  \n  ") == 0 and last_safe_cut("") == 0


@pytest.mark.parametrize("kind", ["byte", "char", "bpe"])
def test_prepare_data_in_small_blocks_equals_whole(kind, bpe, tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    for i in range(3):  # files with and without a final newline, cut at no safe point
        (folder / f"{i}.txt").write_bytes(_corpus(500, seed=10 + i).rstrip(b"\n") + b"  ")
    tok = {"byte": "byte", "char": "char", "bpe": bpe}[kind]
    whole = prepare_data(folder, tok, cache_dir=tmp_path / "whole")
    small = prepare_data(
        folder, tok, cache_dir=tmp_path / "small", options=InputOptions(block_bytes=37)
    )
    assert small.tokenizer == whole.tokenizer
    stream = b"".join(text_documents(folder).blocks())
    np.testing.assert_array_equal(np.concatenate([small.train, small.val]),
                                  whole.tokenizer.encode_bytes(stream))  # fmt: skip
    np.testing.assert_array_equal(small.val, whole.val)


def test_token_writer_header_grows_with_the_array(tmp_path):
    path = tmp_path / "t.npy"
    with open(path, "wb") as f:
        writer = TokenWriter(f, np.uint16)
        for n in (0, 5, 70000, 3):
            writer.write(np.arange(n, dtype=np.int32) % 300)
        writer.close()
    tokens = np.load(path, mmap_mode="r")
    expected = np.concatenate([np.arange(n) % 300 for n in (0, 5, 70000, 3)])
    assert tokens.dtype == np.uint16 and tokens.shape == (70008,)
    np.testing.assert_array_equal(tokens, expected)
    header = npy_header(np.dtype(np.uint32), 10**15)
    assert len(header) == 128 and np.lib.format.read_magic(io.BytesIO(header)) == (1, 0)


def test_write_tokens_routes_documents_and_keeps_each_stream_whole(bpe):
    data = _corpus(600)
    files = [io.BytesIO(), io.BytesIO()]
    halves = [data[: len(data) // 2], data[len(data) // 2 :]]
    blocks = {b"a": [halves[0][:7], halves[0][7:]], b"b": [halves[1]]}
    docs = Documents(
        "two",
        separated=False,
        read=lambda: (Document(key, blocks) for key, blocks in blocks.items()),
        fingerprint_fn=lambda: "",
    )
    counts = write_tokens(docs, bpe, files, np.uint16, route=lambda key: key == b"b")
    for f, half, n in zip(files, halves, counts, strict=True):
        f.seek(0)
        np.testing.assert_array_equal(np.load(f), bpe.encode_bytes(half))
        assert n == len(bpe.encode_bytes(half))


def test_progress_prints_plain_lines_off_a_terminal(capsys):
    progress = Progress(2_000_000, "tokenizing x", every_s=0.0)
    progress.update(1_000_000)
    progress.update(1_000_000)
    progress.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("tokenizing x: 1.0 MB of 2.0 MB")
    assert lines[-1].endswith("(done)") and "\r" not in "".join(lines)
    Progress(10, "quiet", enabled=False).update(10)
    assert capsys.readouterr().err == ""
