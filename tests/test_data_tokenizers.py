"""Tests for llmjax.data.tokenizers."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import tokenizers as hf_tokenizers

from llmjax.data import (
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    Tokenizer,
    build_tokenizer,
    load_tokenizer,
)
from llmjax.data.tokenizers.bpe import _chunks, bytes_to_unicode

INVALID_UTF8 = b"\xff\xfe\x80abc\xc3"
# The 65 characters of tiny Shakespeare, which nanoGPT's char model sorts into ids 0..64.
SHAKESPEARE_CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
TINY_SHAKESPEARE = Path("/work/shared/data/tinyshakespeare.txt")
SAMPLE_TEXT = (
    "def add(a, b):\n    return a + b\n\n\nclass Point:\n  \tx: int = 0  \n"
    "First Citizen:\nBefore we proceed any further, hear me speak.\n"
    "naïve café — 東京 🙂 ünïcödé\r\n   trailing spaces   \n\n"
)


def _training_text() -> str:
    rng = random.Random(0)
    lines = SAMPLE_TEXT.splitlines(keepends=True)
    return "".join(rng.choice(lines) for _ in range(2000))


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train(_training_text(), vocab_size=400)


@pytest.fixture(scope="module")
def random_bytes() -> list[bytes]:
    rng = np.random.default_rng(0)
    samples = [rng.integers(0, 256, size=n, dtype=np.uint8).tobytes() for n in (0, 1, 7, 300)]
    return [*samples, INVALID_UTF8, SAMPLE_TEXT.encode()]


def _all_kinds(bpe: BPETokenizer) -> list[Tokenizer]:
    return [ByteTokenizer(), CharTokenizer.from_bytes(SAMPLE_TEXT.encode() + INVALID_UTF8), bpe]


def test_byte_round_trips_any_bytes(random_bytes):
    tok = ByteTokenizer()
    for data in random_bytes:
        ids = tok.encode_bytes(data)
        assert ids.dtype == np.int32 and ids.shape == (len(data),)
        assert tok.decode_bytes(ids) == data
    text = INVALID_UTF8.decode("utf-8", errors="surrogateescape")
    assert tok.decode_bytes(tok.encode(text)) == INVALID_UTF8
    assert tok.decode(tok.encode_bytes(INVALID_UTF8)) == INVALID_UTF8.decode(errors="replace")


def test_byte_specials_are_skipped_and_bad_ids_rejected():
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (259, 256, 257, 258)
    assert tok.decode([256, 104, 105, 257, 258]) == "hi"
    with pytest.raises(ValueError, match="outside"):
        tok.decode([104, 259])


def test_char_round_trips_invalid_utf8():
    tok = CharTokenizer.from_bytes(INVALID_UTF8)
    assert tok.bos_id is None and tok.eos_id is None and tok.pad_id is None
    assert tok.decode_bytes(tok.encode_bytes(INVALID_UTF8)) == INVALID_UTF8
    assert tok.decode(tok.encode_bytes(b"abc")) == "abc"


def test_char_vocabulary_is_nanogpt_sorted_chars():
    text = "".join(random.Random(0).sample(SHAKESPEARE_CHARS, len(SHAKESPEARE_CHARS))) * 3
    tok = CharTokenizer.from_text(text)
    stoi = {c: i for i, c in enumerate(sorted(set(text)))}
    assert tok.vocab_size == 65
    np.testing.assert_array_equal(tok.encode(text), [stoi[c] for c in text])
    assert tok.encode("\n A")[0] == 0 and tok.encode("z")[0] == 64
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.skipif(
    not TINY_SHAKESPEARE.is_file(), reason="tiny Shakespeare is not on this machine"
)
def test_char_on_tiny_shakespeare_matches_nanogpt():
    text = TINY_SHAKESPEARE.read_text(encoding="utf-8")
    tok = CharTokenizer.from_text(text)
    chars = sorted(set(text))
    assert tok.vocab_size == 65 and tok.chars == SHAKESPEARE_CHARS
    np.testing.assert_array_equal(tok.encode(text[:1000]), [chars.index(c) for c in text[:1000]])


def test_char_unknown_character_error_names_it():
    tok = CharTokenizer.from_text("hello")
    with pytest.raises(ValueError, match=r"'z' at position 3 .*another corpus"):
        tok.encode("helz")


def test_bpe_round_trips_text_and_bytes(bpe, random_bytes):
    assert (bpe.bos_id, bpe.eos_id, bpe.pad_id) == (0, 1, 2)
    assert bpe.vocab_size == 400 and bpe.exact_bytes
    ids = bpe.encode(SAMPLE_TEXT)
    assert ids.dtype == np.int32
    assert len(ids) < len(SAMPLE_TEXT.encode())  # merges were learned
    assert bpe.decode(ids) == SAMPLE_TEXT
    for data in random_bytes:
        assert bpe.decode_bytes(bpe.encode_bytes(data)) == data
    assert bpe.decode([bpe.bos_id, *ids, bpe.eos_id, bpe.pad_id]) == SAMPLE_TEXT


def test_bpe_keeps_special_token_text_as_text(bpe):
    ids = bpe.encode("a <|eos|> b")
    assert bpe.eos_id not in ids
    assert bpe.decode(ids) == "a <|eos|> b"


def test_bpe_chunked_encoding_matches_whole_text(bpe):
    # Long enough to be cut into several pieces, with whitespace runs around newlines.
    text = _training_text() * 8
    assert len(_chunks(text)) > 3
    whole = bpe.hf.encode(text, add_special_tokens=False).ids
    np.testing.assert_array_equal(bpe.encode(text), whole)


def test_encode_batch_equals_encode_of_each(bpe):
    texts = ["def f(x):", "", "  return x\n", "caf\u00e9 \udcff raw", "<|endoftext|> text"]
    for tok in (ByteTokenizer(), bpe):  # (a char vocabulary knows only its training text)
        for got, text in zip(tok.encode_batch(texts), texts, strict=True):
            np.testing.assert_array_equal(got, tok.encode(text))


def test_bpe_training_is_deterministic(bpe):
    assert BPETokenizer.train(_training_text(), vocab_size=400) == bpe


def test_bpe_rejects_too_small_vocab():
    with pytest.raises(ValueError, match="at least 259"):
        BPETokenizer.train("abc", vocab_size=100)


def test_token_byte_lengths_sum_to_utf8_length(bpe):
    data = SAMPLE_TEXT.encode() + INVALID_UTF8
    for tok in _all_kinds(bpe):
        lengths = tok.token_byte_lengths()
        assert lengths.shape == (tok.vocab_size,) and lengths.dtype == np.int32
        assert lengths[tok.encode_bytes(data)].sum() == len(data), tok.kind
        assert all(lengths[i] == 0 for i in tok.special_ids)


@pytest.mark.parametrize("kind", ["byte", "char", "bpe"])
def test_save_load_gives_equal_tokenizer(kind, bpe, tmp_path):
    tok = {t.kind: t for t in _all_kinds(bpe)}[kind]
    path = tok.save(tmp_path / "tok")
    assert path == tmp_path / "tok" / "tokenizer.json"
    for source in (tmp_path / "tok", path):
        loaded = load_tokenizer(source)
        assert loaded == tok and type(loaded) is type(tok)
        np.testing.assert_array_equal(loaded.encode(SAMPLE_TEXT), tok.encode(SAMPLE_TEXT))
        assert (loaded.bos_id, loaded.eos_id, loaded.pad_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
    assert tok.save(tmp_path / "tok") == path  # same content: no error


def test_save_refuses_to_overwrite_a_different_file(tmp_path):
    CharTokenizer.from_text("abc").save(tmp_path)
    with pytest.raises(FileExistsError, match=str(tmp_path / "tokenizer.json")):
        CharTokenizer.from_text("abd").save(tmp_path)
    assert load_tokenizer(tmp_path) == CharTokenizer.from_text("abc")


def _gpt2_style_hf_tokenizer() -> hf_tokenizers.Tokenizer:
    byte_to_char = bytes_to_unicode()
    vocab = {byte_to_char[b]: b for b in range(256)}
    vocab["Ġt"], vocab["he"] = 256, 257
    model = hf_tokenizers.models.BPE(vocab, [("Ġ", "t"), ("h", "e")])
    hf = hf_tokenizers.Tokenizer(model)
    hf.pre_tokenizer = hf_tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = hf_tokenizers.decoders.ByteLevel()
    hf.add_special_tokens(["<|endoftext|>"])
    return hf


def test_load_bare_hf_tokenizer_json(tmp_path):
    path = tmp_path / "gpt2ish.json"
    _gpt2_style_hf_tokenizer().save(str(path))
    tok = load_tokenizer(path)
    assert isinstance(tok, BPETokenizer) and tok.kind == "bpe"
    assert tok.vocab_size == 259 and tok.bos_id == tok.eos_id == 258 and tok.pad_id is None
    assert tok.decode(tok.encode("the cat")) == "the cat"
    assert tok.decode_bytes(tok.encode_bytes(INVALID_UTF8)) == INVALID_UTF8
    assert build_tokenizer(str(path), b"unused") == tok


def test_non_byte_level_hf_tokenizer_replaces_invalid_utf8(tmp_path):
    vocab = {"[UNK]": 0, "<pad>": 1, "abc": 2, "\ufffd": 3}
    hf = hf_tokenizers.Tokenizer(hf_tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = hf_tokenizers.pre_tokenizers.Whitespace()
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path)
    assert not tok.exact_bytes and tok.pad_id == 1 and tok.bos_id is None
    np.testing.assert_array_equal(tok.encode_bytes(b"abc \xff"), [2, 3])
    assert tok.decode([2, 1]) == "abc"


def test_build_tokenizer_caches_trained_bpe(tmp_path, monkeypatch):
    corpus = _training_text().encode()
    first = build_tokenizer("bpe", corpus, bpe_vocab_size=300, cache_dir=tmp_path)
    [cached] = (tmp_path / "tokenizers").glob("bpe-300-*.json")

    def no_training(*args, **kwargs):
        raise AssertionError("the cached tokenizer should have been loaded")

    monkeypatch.setattr(BPETokenizer, "train", no_training)
    second = build_tokenizer("bpe", corpus, bpe_vocab_size=300, cache_dir=tmp_path)
    assert second == first and load_tokenizer(cached) == first
    np.testing.assert_array_equal(second.encode(SAMPLE_TEXT), first.encode(SAMPLE_TEXT))


def test_build_tokenizer_simple_specs():
    assert build_tokenizer("byte", b"xyz") == ByteTokenizer()
    assert build_tokenizer("char", b"hello") == CharTokenizer.from_text("hello")


def test_build_tokenizer_unknown_spec_lists_choices(tmp_path):
    with pytest.raises(ValueError, match="'byte', 'char', 'bpe', or a path") as info:
        build_tokenizer("sentencepiece", b"x")
    assert "no file" not in str(info.value)
    missing = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(ValueError, match="no file was found at") as info:
        build_tokenizer(str(missing), b"x")
    assert str(missing) in str(info.value)


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "tokenizer.json")):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"llmjax_tokenizer": 1, "kind": "morse"}))
    with pytest.raises(ValueError, match="'morse'"):
        load_tokenizer(tmp_path)
