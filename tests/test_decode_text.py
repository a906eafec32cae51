"""Text-level generation: incremental detokenization, stop strings, streaming, metrics."""

import dataclasses

import numpy as np
import pytest

from llmjax.data import ByteTokenizer
from llmjax.decode import generate
from llmjax.decode.metrics import distinct_n, generation_stats, repetition_rate
from llmjax.decode.text import TextStream
from llmjax.models import build_model
from tests.decode_utils import random_params

TOK = ByteTokenizer()


def _feed(stream, data: bytes, step: int):
    ids = TOK.encode_bytes(data)
    return any(stream.update(ids[:n]) for n in range(step, len(ids) + step, step))


def test_stream_holds_back_partial_characters_and_stop_prefixes():
    pieces = []
    stream = TextStream(TOK, stop=["END"], on_text=pieces.append)
    text = "héllo wörld, ENough said"
    assert not _feed(stream, text.encode(), step=1)
    stream.update(TOK.encode(text), final=True)
    assert "".join(pieces) == text == stream.text
    # Nothing emitted was ever a broken character or later retracted.
    assert all("\ufffd" not in p for p in pieces)


@pytest.mark.parametrize("step", [1, 3, 7])
def test_stream_stops_at_the_first_stop_string(step):
    pieces = []
    stream = TextStream(TOK, stop=["<|end|>", "\n\n"], on_text=pieces.append)
    data = b"first line\nsecond <|e line <|end|> never\n\nshown"
    assert _feed(stream, data, step)
    want = "first line\nsecond <|e line "
    assert stream.text == "".join(pieces) == want
    assert stream.kept_tokens == len(want) + len("<|end|>")  # bytes = tokens here


def test_generate_stop_strings_and_streaming():
    from llmjax.config import PRESETS

    cfg = dataclasses.replace(PRESETS["test-tiny"].model, vocab_size=259, position="rope")
    model, params = build_model(cfg), random_params(cfg, seed=3)
    kw = dict(params=params, tokenizer=TOK, max_new_tokens=24, temperature=0)
    free = generate(model, "ab", **kw)
    assert free.finish_reason in ("length", "stop") and len(free.tokens) >= 1
    text = free.text
    k = next(
        k
        for k in range(1, len(text) - 1)
        if "\ufffd" not in text[k : k + 2] and text.find(text[k : k + 2]) == k
    )
    stop = text[k : k + 2]
    pieces = []
    cut = generate(model, "ab", stop=[stop], stream=lambda row, t: pieces.append(t), **kw)
    assert cut.text == text[:k] == "".join(pieces)
    assert cut.finish_reason == "stop"
    n = len(cut.tokens)
    np.testing.assert_array_equal(cut.tokens, free.tokens[:n])
    assert stop in TOK.decode(cut.tokens) and stop not in TOK.decode(cut.tokens[:-1])
    assert len(cut.log_probs) == n
    # A batch: every row streams its own text.
    rows = {0: [], 1: []}
    out = generate(
        model, ["ab", "xyz"], stream=lambda row, t: rows[row].append(t), chunk_size=5, **kw
    )
    assert ["".join(rows[b]) for b in (0, 1)] == [c.text for c in out]
    assert out[0].text == text


def test_generation_metrics():
    seqs = [[1, 2, 3, 1, 2, 3], [4, 4, 4, 4]]
    assert distinct_n(seqs, 1) == pytest.approx(4 / 10)
    assert distinct_n(seqs, 2) == pytest.approx(4 / 8)  # 12 23 31 44 of 5 + 3 bigrams
    assert repetition_rate(seqs, 2) == pytest.approx(np.mean([1 - 3 / 5, 1 - 1 / 3]))
    assert repetition_rate([[1, 2, 3]], 4) == 0.0
    stats = generation_stats(seqs, log_probs=[[-1.0] * 6, [-2.0] * 4])
    assert stats["log_likelihood"] == pytest.approx(-1.4)
    assert stats["mean_length"] == 5
    with pytest.raises(ValueError, match="n must be >= 1"):
        distinct_n(seqs, 0)
