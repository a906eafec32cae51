"""Tests for llmjax.data.dataset."""

import os
import time

import numpy as np
import pytest

import llmjax.data.dataset as dataset
import llmjax.data.token_files as token_files
from llmjax.data import (
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    prepare_data,
    train_batch,
    val_batches,
)

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(400))


@pytest.fixture(autouse=True)
def env_cache_dir(tmp_path, monkeypatch):
    """Keeps every test's caches under tmp_path, even where no cache_dir is passed."""
    path = tmp_path / "env-cache"
    monkeypatch.setenv("LLMJAX_CACHE_DIR", str(path))
    return path


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "data" / "input.txt"
    path.parent.mkdir()
    path.write_text(TEXT)
    return path


def _forbid(monkeypatch, cls, method):
    def fail(*args, **kwargs):
        raise AssertionError(f"{cls.__name__}.{method} should not run: the cache should be used")

    monkeypatch.setattr(cls, method, fail)


def test_prepare_data_splits_last_fraction_off_as_validation(corpus_file, tmp_path):
    data = prepare_data(corpus_file, "byte", val_fraction=0.1, cache_dir=tmp_path / "cache")
    n = len(TEXT)
    assert data.corpus_name == "input.txt" and data.tokenizer == ByteTokenizer()
    assert len(data.train) == int(n * 0.9) and len(data.train) + len(data.val) == n
    np.testing.assert_array_equal(
        np.concatenate([data.train, data.val]), np.frombuffer(TEXT.encode(), np.uint8)
    )
    for split in (data.train, data.val):
        assert isinstance(split, np.memmap) and split.dtype == np.uint16 and split.ndim == 1
        assert not split.flags.writeable


def test_second_prepare_data_reuses_the_token_cache(corpus_file, tmp_path, monkeypatch):
    first = prepare_data(corpus_file, "char", cache_dir=tmp_path / "cache")
    [cache_file] = (tmp_path / "cache" / "tokens").glob("*.npy")
    _forbid(monkeypatch, CharTokenizer, "encode")
    _forbid(monkeypatch, CharTokenizer, "encode_bytes")
    second = prepare_data(corpus_file, "char", cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(second.train, first.train)
    assert second.tokenizer == first.tokenizer
    assert list((tmp_path / "cache" / "tokens").glob("*.npy")) == [cache_file]


def test_cache_key_separates_tokenizers_and_corpora(corpus_file, tmp_path):
    cache = tmp_path / "cache"
    prepare_data(corpus_file, "byte", cache_dir=cache)
    prepare_data(corpus_file, "char", cache_dir=cache)
    corpus_file.write_text(TEXT.upper())
    upper = prepare_data(corpus_file, "byte", cache_dir=cache)
    assert len(list((cache / "tokens").glob("*.npy"))) == 3
    assert upper.tokenizer.decode(upper.train[:6]) == "LINE 0"


def test_env_var_sets_default_cache_dir(corpus_file, env_cache_dir):
    prepare_data(corpus_file, "byte")
    assert len(list((env_cache_dir / "tokens").glob("*.npy"))) == 1


def test_stray_temp_and_truncated_caches_are_not_trusted(corpus_file, tmp_path):
    tokens_dir = tmp_path / "cache" / "tokens"
    expected = prepare_data(corpus_file, "byte", cache_dir=tmp_path / "cache").train.copy()
    [cache_file] = tokens_dir.glob("*.npy")
    # What a run killed mid-write leaves behind, and a cache cut short by some other accident.
    (tokens_dir / f"{cache_file.name}.tmp-123-dead").write_bytes(b"\x93NUMPY partial")
    cache_file.write_bytes(cache_file.read_bytes()[:200])
    again = prepare_data(corpus_file, "byte", cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again.train, expected)


def test_interrupted_write_leaves_no_cache(corpus_file, tmp_path, monkeypatch):
    def write_then_die(self, ids):
        self.file.write(b"the first ids")  # after the header: a file cut short mid-corpus
        raise KeyboardInterrupt

    monkeypatch.setattr(token_files.TokenWriter, "write", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(corpus_file, "byte", cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "tokens").iterdir()) == []
    monkeypatch.undo()
    assert len(prepare_data(corpus_file, "byte", cache_dir=tmp_path / "cache").val) > 0


def test_bpe_tokenizer_is_cached_beside_the_data(corpus_file, tmp_path, monkeypatch):
    first = prepare_data(corpus_file, "bpe", bpe_vocab_size=300, cache_dir=tmp_path / "cache")
    [beside] = corpus_file.parent.glob("input.txt.llmjax-bpe-300-*.json")
    assert first.tokenizer.vocab_size == 300
    _forbid(monkeypatch, BPETokenizer, "train")
    _forbid(monkeypatch, BPETokenizer, "encode")
    second = prepare_data(corpus_file, "bpe", bpe_vocab_size=300, cache_dir=tmp_path / "cache")
    assert second.tokenizer == first.tokenizer
    np.testing.assert_array_equal(second.val, first.val)
    assert sorted(p.name for p in corpus_file.parent.iterdir()) == ["input.txt", beside.name]


def test_bpe_goes_to_cache_dir_when_data_dir_is_read_only(corpus_file, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    prepare_data(corpus_file, "bpe", bpe_vocab_size=300, cache_dir=tmp_path / "cache")
    assert list(corpus_file.parent.iterdir()) == [corpus_file]
    assert len(list((tmp_path / "cache" / "tokenizers").glob("bpe-300-*.json"))) == 1


@pytest.mark.parametrize("val_fraction", [0.0, 1.0, -0.5, 2])
def test_val_fraction_must_be_a_fraction(corpus_file, val_fraction):
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        prepare_data(corpus_file, val_fraction=val_fraction)


def test_too_small_corpus_says_how_big_it_must_be(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_bytes(b"abcdefghij")
    with pytest.raises(ValueError, match="too small.*at least 20 tokens"):
        prepare_data(path, "byte", val_fraction=0.1)
    assert len(prepare_data(path, "byte", val_fraction=0.2).val) == 2


def test_token_dtype_widens_for_big_vocabularies():
    assert dataset.token_dtype(65535) == np.uint16
    assert dataset.token_dtype(65536) == np.uint32


def _counting_tokens(n: int) -> np.ndarray:
    # Token i is i, so a window's contents reveal where it starts.
    return np.arange(n, dtype=np.uint16)


def test_train_batch_windows_and_shift():
    tokens = _counting_tokens(5000)
    batch = train_batch(tokens, 3, batch_size=12, seq_len=64, seed=7)
    inputs, targets = batch["inputs"], batch["targets"]
    assert set(batch) == {"inputs", "targets"}
    assert inputs.shape == targets.shape == (12, 64)
    assert inputs.dtype == targets.dtype == np.int32
    np.testing.assert_array_equal(targets, inputs + 1)
    np.testing.assert_array_equal(inputs, inputs[:, :1] + np.arange(64))
    assert inputs.min() >= 0 and targets.max() < len(tokens)


def test_train_batch_depends_only_on_seed_and_step():
    tokens = _counting_tokens(5000)

    def batch(step, seed):
        return train_batch(tokens, step, batch_size=4, seq_len=16, seed=seed)["inputs"]

    later = batch(10, seed=0)
    for step in range(10):  # the batches a run saw before step 10 do not change step 10's
        batch(step, seed=0)
    np.testing.assert_array_equal(batch(10, seed=0), later)
    assert not np.array_equal(batch(11, seed=0), later)
    assert not np.array_equal(batch(10, seed=1), later)


def test_train_batch_reaches_both_ends_and_is_fast(corpus_file, tmp_path):
    tokens = _counting_tokens(20)
    starts = {
        int(train_batch(tokens, s, batch_size=8, seq_len=4, seed=0)["inputs"][i, 0])
        for s in range(50)
        for i in range(8)
    }
    assert starts == set(range(16))  # every start from 0 to n - seq_len - 1
    train = prepare_data(corpus_file, "byte", cache_dir=tmp_path / "cache").train
    best = float("inf")
    for step in range(50):
        start = time.perf_counter()
        train_batch(train, step, batch_size=12, seq_len=64, seed=0)
        best = min(best, time.perf_counter() - start)
    assert best < 1e-3


def test_seq_len_longer_than_split_names_both_sizes():
    tokens = _counting_tokens(50)
    with pytest.raises(ValueError, match="seq_len=50 .* 50 tokens"):
        train_batch(tokens, 0, batch_size=2, seq_len=50, seed=0)
    with pytest.raises(ValueError, match="seq_len=64 .* 50 tokens"):
        val_batches(tokens, batch_size=2, seq_len=64)  # raises on the call, not on iteration


@pytest.mark.parametrize("n", [5, 17, 1000, 1025])
def test_val_batches_cover_every_target_once(n):
    tokens = _counting_tokens(n)
    batches = list(val_batches(tokens, batch_size=3, seq_len=4))
    for batch in batches:
        assert set(batch) == {"inputs", "targets", "mask"}
        assert batch["inputs"].shape == batch["mask"].shape == (3, 4)
        assert batch["inputs"].dtype == np.int32 and batch["mask"].dtype == np.float32
    mask = np.concatenate([b["mask"] for b in batches]).reshape(-1) == 1
    inputs = np.concatenate([b["inputs"] for b in batches]).reshape(-1)
    targets = np.concatenate([b["targets"] for b in batches]).reshape(-1)
    np.testing.assert_array_equal(targets[mask], np.arange(1, n))
    np.testing.assert_array_equal(inputs[mask], np.arange(0, n - 1))
    assert not targets[~mask].any()  # padding; inputs under mask 0 are never scored
    assert len(batches) == -(-(n - 1) // 12)


def test_val_batches_full_windows_are_unmasked_and_max_batches_stops():
    tokens = _counting_tokens(97)  # 96 targets = 8 batches of 3 x 4, no padding
    batches = list(val_batches(tokens, batch_size=3, seq_len=4, max_batches=5))
    assert len(batches) == 5 and all(b["mask"].all() for b in batches)
    np.testing.assert_array_equal(batches[1]["inputs"][0], [12, 13, 14, 15])
    assert list(val_batches(tokens, batch_size=3, seq_len=4)) != []
    with pytest.raises(ValueError, match="max_batches"):
        val_batches(tokens, batch_size=3, seq_len=4, max_batches=0)
