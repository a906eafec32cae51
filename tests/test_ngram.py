"""The Kneser-Ney n-gram baseline: distributions sum to 1, and it equals a plain reference."""

from collections import Counter, defaultdict

import numpy as np
import pytest

from llmjax.errors import ConfigError
from llmjax.eval.ngram import KneserNey


def _reference(tokens, order, V, lm):
    """Interpolated Kneser-Ney written out with dicts (the discounts taken from `lm`)."""
    tokens = list(map(int, tokens))
    counts = [None] * (order + 1)
    for k in range(1, order + 1):
        if k == order:
            c = Counter(tuple(tokens[i : i + k]) for i in range(len(tokens) - k + 1))
        else:
            longer = {tuple(tokens[i : i + k + 1]) for i in range(len(tokens) - k)}
            c = Counter(g[1:] for g in longer)
        counts[k] = c
    totals = [None] + [defaultdict(int) for _ in range(order)]
    types = [None] + [defaultdict(int) for _ in range(order)]
    for k in range(1, order + 1):
        for g, n in counts[k].items():
            totals[k][g[:-1]] += n
            types[k][g[:-1]] += 1

    def p(w, h):
        k = len(h) + 1
        D = lm.orders[k - 1].discount
        if k == 1:
            total = totals[1][()]
            return (max(counts[1].get((w,), 0) - D, 0) + D * types[1][()] / V) / total
        lower = p(w, h[1:])
        if totals[k].get(h, 0) == 0:
            return lower
        a = counts[k].get((*h, w), 0)
        return (max(a - D, 0) + D * types[k][h] * lower) / totals[k][h]

    return p


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_distributions_sum_to_one_and_match_a_plain_implementation(order):
    rng = np.random.default_rng(order)
    V = 11
    text = rng.integers(0, 7, 400)  # ids 7..10 never occur: they still get probability
    text[::5] = 3  # some structure
    lm = KneserNey.fit(text, order=order, vocab_size=V)
    ref = _reference(text, order, V, lm)
    for context in ([], [3], [3, 1], [9, 9, 9], list(text[10:13]), [2, 3, 4, 5, 6]):
        dist = lm.distribution(np.asarray(context, np.int64))
        assert dist.shape == (V,) and np.all(dist > 0)
        np.testing.assert_allclose(dist.sum(), 1.0, rtol=1e-12)
        h = tuple(int(t) for t in context[max(0, len(context) - order + 1) :]) if order > 1 else ()
        want = [ref(w, h) for w in range(V)]
        np.testing.assert_allclose(dist, want, rtol=1e-10)
    # log_probs of a stream: each token under the distribution of its own context
    stream = rng.integers(0, V, 30)
    lp = lm.log_probs(stream)
    for t in range(len(stream)):
        dist = lm.distribution(stream[max(0, t - order + 1) : t])
        np.testing.assert_allclose(lp[t], np.log(dist[stream[t]]), rtol=1e-10)


def test_higher_orders_model_structured_text_better():
    # After 1 comes 2 or 4: a bigram model is unsure, the token before the 1 decides.
    pattern = np.asarray([1, 2, 3, 1, 4, 5] * 300)
    train, val = pattern[:1500], pattern[1500:]
    losses = [KneserNey.fit(train, order=n, vocab_size=8).evaluate(val)["loss"] for n in (1, 2, 3)]
    assert losses[0] > losses[1] > losses[2]
    assert losses[2] < 0.1  # order 3 determines this text almost completely
    bpb = KneserNey.fit(train, order=2, vocab_size=8).evaluate(val, token_bytes=np.ones(8))
    np.testing.assert_allclose(bpb["bits_per_byte"], bpb["loss"] / np.log(2))


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="order must be"):
        KneserNey.fit(np.arange(5), order=0, vocab_size=5)
    with pytest.raises(ConfigError, match="lower the order"):
        KneserNey.fit(np.arange(5), order=5, vocab_size=50_000)
    with pytest.raises(ConfigError, match=r"\[0, 5\)"):
        KneserNey.fit(np.arange(7), order=2, vocab_size=5)


def test_argmax_is_the_distributions_argmax():
    rng = np.random.default_rng(5)
    tokens = rng.integers(0, 7, 400)
    lm = KneserNey.fit(tokens, order=3, vocab_size=7)
    got = lm.argmax(tokens[:50], chunk=16)
    expect = [int(np.argmax(lm.distribution(tokens[:t]))) for t in range(50)]
    assert got.tolist() == expect
