"""Samplers against NumPy references: the kept support (ties included), penalties, n-gram bans,
sampled frequencies (chi-square), temperature -> 0, and bad settings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from llmjax.decode import samplers
from llmjax.decode.samplers import SamplingConfig, process_logits

B, V = 64, 40


def _tied_logits(seed: int) -> np.ndarray:
    """Logits on a coarse grid, so many tokens tie (the k-th and the nucleus edge included)."""
    rng = np.random.default_rng(seed)
    return (np.round(rng.normal(0, 1.5, (B, V)) * 2) / 2).astype(np.float32)


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _smallest_prefix(sorted_key, sorted_probs, mass) -> int:
    """Index of the last element of the smallest prefix with cumulative mass >= `mass`."""
    cum = np.cumsum(sorted_probs)
    # The reference is float64 and the library float32: skip a boundary that is too close.
    assert np.min(np.abs(cum - mass)) > 1e-5, "ambiguous boundary; pick another seed"
    return int(np.argmax(cum >= mass - 1e-12)) if cum[-1] >= mass else len(cum) - 1


def ref_top_k(row, k):
    kth = np.sort(row)[::-1][k - 1]
    return row >= kth


def ref_top_p(row, p):
    order = np.argsort(-row, kind="stable")
    i = _smallest_prefix(row[order], _softmax(row)[order], p)
    return row >= row[order[i]]


def ref_min_p(row, p):
    probs = _softmax(row)
    ratio = probs / probs.max()
    assert np.min(np.abs(ratio - p)) > 1e-5
    return ratio >= p


def ref_typical(row, mass):
    probs = _softmax(row)
    entropy = -(probs * np.log(probs)).sum()
    score = np.abs(-np.log(probs) - entropy)
    order = np.argsort(score, kind="stable")
    i = _smallest_prefix(score[order], probs[order], mass)
    return score <= score[order[i]] + 1e-9 * (1 + abs(score[order[i]]))


FILTERS = {
    "top_k": (samplers.top_k, ref_top_k, [1, 3, 7, 39]),
    "top_p": (samplers.top_p, ref_top_p, [0.05, 0.5, 0.83, 0.97]),
    "min_p": (samplers.min_p, ref_min_p, [0.013, 0.1, 0.37, 0.9]),
    "typical": (samplers.typical, ref_typical, [0.05, 0.5, 0.83, 0.97]),
}


@pytest.mark.parametrize("name", list(FILTERS))
def test_filter_support_matches_numpy_reference_with_ties(name):
    fn, ref, values = FILTERS[name]
    jitted = jax.jit(fn)
    for seed, value in enumerate(values):
        logits = _tied_logits(seed)
        got = np.asarray(jitted(logits, value)) > -np.inf
        want = np.stack([ref(row, value) for row in logits])
        np.testing.assert_array_equal(got, want, err_msg=f"{name}={value}")
        # Kept logits are unchanged; at least one token always survives.
        np.testing.assert_array_equal(np.asarray(jitted(logits, value))[got], logits[got])
        assert got.any(-1).all()


def test_ties_keep_every_tied_token():
    logits = np.asarray([[3.0, 1.0, 2.0, 2.0, 2.0, 0.0]], np.float32)
    kept = lambda x: np.flatnonzero(np.asarray(x)[0] > -np.inf).tolist()  # noqa: E731
    assert kept(samplers.top_k(logits, 2)) == [0, 2, 3, 4]  # three tokens tie with the 2nd
    assert kept(samplers.top_k(jnp.asarray(logits), jnp.asarray(2))) == [0, 2, 3, 4]  # traced k
    # p(3.0) = 0.43 < 0.5, so the nucleus needs one 2.0 token -> all three tied ones.
    assert kept(samplers.top_p(logits, 0.5)) == [0, 2, 3, 4]
    assert kept(samplers.top_p(logits, 0.4)) == [0]
    assert kept(samplers.top_p(logits, 1.0)) == [0, 1, 2, 3, 4, 5]
    np.testing.assert_array_equal(samplers.greedy(np.asarray([[1.0, 5.0, 5.0]])), [1])


def test_traced_top_k_equals_static():
    logits = _tied_logits(7)
    for k in (1, 5, V, V + 3):
        np.testing.assert_array_equal(
            jax.jit(samplers.top_k)(logits, jnp.asarray(k)), samplers.top_k(logits, k)
        )


def test_penalties_match_formulas():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 10)).astype(np.float32)
    counts = rng.integers(0, 3, size=(4, 10))
    seen = counts > 0
    got = samplers.repetition_penalty(logits, seen, 1.3)
    want = np.where(seen, np.where(logits > 0, logits / 1.3, logits * 1.3), logits)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    got = samplers.presence_frequency_penalty(logits, counts, 0.5, 0.25)
    np.testing.assert_allclose(got, logits - 0.5 * (counts > 0) - 0.25 * counts, rtol=1e-6)


def ref_ngram_banned(history, n, vocab):
    banned = np.zeros(vocab, bool)
    if len(history) < n:
        return banned
    prefix = list(history[len(history) - n + 1 :]) if n > 1 else []
    for j in range(len(history) - n + 1):
        if list(history[j : j + n - 1]) == prefix:
            banned[history[j + n - 1]] = True
    return banned


@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_repeat_ngram_matches_reference(n):
    rng = np.random.default_rng(n)
    S, vocab = 24, 5
    history = rng.integers(0, vocab, size=(8, S)).astype(np.int32)
    lengths = np.asarray([0, 1, 2, 3, 7, 12, 20, 24], np.int32)
    banned = jax.jit(samplers.no_repeat_ngram_banned, static_argnums=(2, 3))
    got = np.asarray(banned(history, lengths, n, vocab))
    pairs = zip(history, lengths, strict=True)
    want = np.stack([ref_ngram_banned(h[:L], n, vocab) for h, L in pairs])
    np.testing.assert_array_equal(got, want)
    assert want.any()


def test_sampled_frequencies_match_processed_softmax():
    """Chi-square goodness of fit of 40k draws (fixed seed) to softmax(processed logits)."""
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 0.7, (1, 12)).astype(np.float32)
    cfg = SamplingConfig(temperature=1.3, top_k=9, top_p=0.9, min_p=0.1)
    processed = np.asarray(process_logits(logits, cfg.stages(), cfg.values()))[0]
    support = processed > -np.inf
    assert 2 < support.sum() < 12
    n = 40_000
    keys = jax.random.split(jax.random.key(0), n)
    draws = np.asarray(
        jax.jit(samplers.sample)(keys, jnp.broadcast_to(jnp.asarray(processed), (n, 12)))
    )
    counts = np.bincount(draws, minlength=12)
    assert counts[~support].sum() == 0
    expected = _softmax(processed[support]) * n
    assert stats.chisquare(counts[support], expected).pvalue > 1e-3


def test_low_temperature_sampling_equals_greedy():
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 2.0, (B, V)).astype(np.float32)
    top2 = np.sort(logits, -1)[:, -2:]
    assert (top2[:, 1] - top2[:, 0]).min() > 1e-3
    cold = samplers.scale_temperature(logits, 1e-5)
    keys = jax.random.split(jax.random.key(1), B)
    np.testing.assert_array_equal(samplers.sample(keys, cold), samplers.greedy(logits))


def test_rows_sample_independently_of_their_batch():
    logits = np.random.default_rng(5).normal(size=(3, V)).astype(np.float32)
    keys = jax.random.split(jax.random.key(2), 3)
    together = samplers.sample(keys, logits)
    alone = [int(samplers.sample(keys[i : i + 1], logits[i : i + 1])[0]) for i in range(3)]
    np.testing.assert_array_equal(together, alone)


def test_stages_and_greedy():
    assert SamplingConfig().stages() == ()
    assert SamplingConfig(temperature=0, top_k=5).stages() == ()  # filters cannot change argmax
    cfg = SamplingConfig(temperature=0.5, top_p=0.9, repetition_penalty=1.1)
    assert cfg.stages() == ("repetition", "temperature", "top_p")
    assert SamplingConfig(temperature=0).greedy


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(top_p=0.0), r"top_p=0\.0 .*\(0, 1\]"),
        (dict(top_p=1.5), r"top_p=1\.5 .*\(0, 1\]"),
        (dict(top_k=-1), r"top_k=-1 .*>= 0"),
        (dict(temperature=-0.5), r"temperature=-0\.5 .*>= 0"),
        (dict(min_p=1.2), r"min_p=1\.2 .*\[0, 1\]"),
        (dict(min_p=-0.1), r"min_p=-0\.1 .*\[0, 1\]"),
        (dict(typical_p=0), r"typical_p=0 .*\(0, 1\]"),
        (dict(repetition_penalty=0.0), r"repetition_penalty=0\.0 .*> 0"),
        (dict(no_repeat_ngram_size=-2), r"no_repeat_ngram_size=-2 .*>= 0"),
        (dict(top_k=2.5), r"top_k must be an integer"),
        (dict(temperature=float("nan")), r"temperature must be finite"),
    ],
)
def test_bad_settings_raise_with_value_and_range(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingConfig(**kwargs)
