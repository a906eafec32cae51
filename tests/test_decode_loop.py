"""The decode loop and beam search over fake `tokens_to_logits` models (no llmjax model): stop
ids and early exit, penalties and n-gram bans against a NumPy re-run, chunk callbacks, and beam
search equal to exhaustive search when the beam is wide enough."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.decode import SamplingConfig, beam_search, decode

V = 10


def cycle_model(params, token_B, state):
    """Prefers token + 1, then token + 2 (mod V); the state counts calls."""
    rows = jnp.arange(token_B.shape[0])
    logits = jnp.zeros((token_B.shape[0], V))
    logits = logits.at[rows, (token_B + 1) % V].set(3.0).at[rows, (token_B + 2) % V].set(2.0)
    return logits, state + 1


def bigram_model(table_VxV, token_B, state):
    """Next-token logits are a row of a table (the params)."""
    return table_VxV[token_B], state


def _first(last_tokens):
    logits, _ = cycle_model(None, jnp.asarray(last_tokens), jnp.zeros(len(last_tokens)))
    return logits


GREEDY = SamplingConfig(temperature=0)


def _decode(first, n, sampling=GREEDY, **kw):
    state = jnp.zeros(first.shape[0], jnp.int32)
    return decode(
        cycle_model, None, state, first, max_new_tokens=n, key=jax.random.key(0),
        sampling=sampling, **kw,
    )  # fmt: skip


def test_greedy_stop_ids_and_early_exit():
    out = _decode(_first([0, 4, 6]), 20, stop_ids=[7], pad_id=-1)
    np.testing.assert_array_equal(out.tokens[0, :7], [1, 2, 3, 4, 5, 6, 7])
    np.testing.assert_array_equal(out.lengths, [7, 3, 1])
    assert out.stopped.all()
    assert out.steps == 7  # every row stopped: the loop exits before max_new_tokens
    assert (out.tokens[1, 3:] == -1).all() and (out.tokens[2, 1:] == -1).all()
    assert (out.log_probs[1, 3:] == 0).all()
    no_stop = _decode(_first([0]), 20)
    assert no_stop.steps == 20 and not no_stop.stopped.any()


def test_min_new_tokens_delays_stop_ids():
    out = _decode(_first([6]), 20, SamplingConfig(temperature=0, min_new_tokens=3), stop_ids=[7])
    # Token 7 is banned for 3 steps, so the runner-up 8 is taken, then 9, 0, ... until 7.
    np.testing.assert_array_equal(out.tokens[0, : out.lengths[0]], [8, 9, 0, 1, 2, 3, 4, 5, 6, 7])


def _reference_penalized_greedy(prompt, first_token, n, cfg):
    """NumPy re-run of the loop: penalties and n-gram bans, then argmax."""
    history, generated, last = list(prompt), [], first_token
    for _ in range(n):
        logits = np.zeros(V)
        logits[(last + 1) % V], logits[(last + 2) % V] = 3.0, 2.0
        seen = set(history)
        for t in seen:
            p = cfg.repetition_penalty
            logits[t] = logits[t] / p if logits[t] > 0 else logits[t] * p
        for t in set(generated):
            logits[t] -= cfg.presence_penalty + cfg.frequency_penalty * generated.count(t)
        n_ = cfg.no_repeat_ngram_size
        if n_ and len(history) >= n_:
            tail = history[len(history) - n_ + 1 :]
            for j in range(len(history) - n_ + 1):
                if history[j : j + n_ - 1] == tail:
                    logits[history[j + n_ - 1]] = -np.inf
        last = int(np.argmax(logits))
        history.append(last)
        generated.append(last)
    return generated


@pytest.mark.parametrize(
    "cfg",
    [
        SamplingConfig(temperature=0, repetition_penalty=2.0),
        SamplingConfig(temperature=0, presence_penalty=0.6, frequency_penalty=0.3),
        SamplingConfig(temperature=0, no_repeat_ngram_size=2),
    ],
    ids=["repetition", "presence-frequency", "no-repeat-2gram"],
)
def test_penalties_and_ngram_bans_follow_the_reference(cfg):
    prompts = np.asarray([[3, 4, 5], [9, 9, 2]])
    first = _first(prompts[:, -1])
    out = _decode(first, 24, cfg, prompt_BxP=prompts)
    for b, p in enumerate(prompts):
        want = _reference_penalized_greedy(list(p), int(p[-1]), 24, cfg)
        np.testing.assert_array_equal(out.tokens[b], want)
    if cfg.no_repeat_ngram_size:
        for b, p in enumerate(prompts):
            seq = list(p) + out.tokens[b].tolist()
            grams = list(zip(seq, seq[1:], strict=False))
            assert len(grams) == len(set(grams))


def test_chunks_stream_every_token_and_can_stop_rows():
    seen = []

    def on_chunk(start, tokens_BxC, lengths_B):
        seen.append((start, tokens_BxC.copy()))
        return np.asarray([start == 0, False])  # stop row 0 after the first chunk

    out = _decode(_first([0, 5]), 10, on_chunk=on_chunk, chunk_size=3)
    assert [s for s, _ in seen] == [0, 3, 6, 9]
    streamed = np.concatenate([t for _, t in seen], axis=1)
    np.testing.assert_array_equal(streamed, out.tokens)
    np.testing.assert_array_equal(out.lengths, [3, 10])


def test_sampling_follows_row_keys_not_batch():
    first = jax.random.normal(jax.random.key(3), (3, V))
    cfg = SamplingConfig(temperature=1.0)
    keys = jax.random.split(jax.random.key(4), 3)
    both = decode(cycle_model, None, jnp.zeros(3), first, max_new_tokens=8, key=keys, sampling=cfg)
    one = decode(
        cycle_model, None, jnp.zeros(1), first[2:], max_new_tokens=8, key=keys[2:], sampling=cfg
    )
    np.testing.assert_array_equal(both.tokens[2], one.tokens[0])


# ----------------------------------------------------------------------------- beam search

BV, BN = 5, 3  # vocabulary and length of the exhaustive search
EOS = 0


def _exhaustive(first_V, table_VxV, alpha):
    """Best (score, tokens) over all sequences of <= BN tokens that end at EOS or at BN."""
    log_first = jax.nn.log_softmax(first_V)
    log_table = jax.nn.log_softmax(table_VxV, -1)
    best = (-np.inf, None)
    for n in range(1, BN + 1):
        for seq in itertools.product(range(BV), repeat=n):
            if EOS in seq[:-1] or (n < BN and seq[-1] != EOS):
                continue
            logp = float(log_first[seq[0]]) + sum(
                float(log_table[a, b]) for a, b in zip(seq, seq[1:], strict=False)
            )
            best = max(best, (logp / n**alpha, seq), key=lambda x: x[0])
    return best


@pytest.mark.parametrize("alpha", [0.0, 1.0, 2.0])
def test_wide_beam_equals_exhaustive_search(alpha):
    rng = np.random.default_rng(0)
    table = jnp.asarray(rng.normal(0, 2.0, (BV, BV)), jnp.float32)
    first = jnp.asarray(rng.normal(0, 2.0, (2, BV)), jnp.float32)
    out = beam_search(
        bigram_model, table, jnp.zeros(2), first, num_beams=BV ** (BN - 1), max_new_tokens=BN,
        eos_ids=[EOS], length_penalty=alpha, pad_id=-1,
    )  # fmt: skip
    for b in range(2):
        score, seq = _exhaustive(first[b], table, alpha)
        n = out.lengths[b, 0]
        assert tuple(out.tokens[b, 0, :n]) == seq
        np.testing.assert_allclose(out.scores[b, 0], score, rtol=1e-5)
        np.testing.assert_allclose(out.token_log_probs[b, 0].sum(), out.log_probs[b, 0], rtol=1e-5)
        np.testing.assert_allclose(out.scores[b, 0], out.log_probs[b, 0] / n**alpha, rtol=1e-5)
        assert (np.diff(out.scores[b]) <= 1e-6).all()  # best first


def test_beam_finds_what_greedy_misses():
    # From the start: token 1 (p 0.55) or 2 (0.45). After 1 the model is unsure, after 2 it is
    # sure of 3: beam search prefers 2 3 (0.43) over greedy's 1 x (<= 0.11).
    table = jnp.zeros((BV, BV)).at[2, 3].set(5.0)
    first = jnp.log(jnp.asarray([[1e-9, 0.55, 0.45, 1e-9, 1e-9]]))
    greedy = decode(
        bigram_model, table, jnp.zeros(1), first, max_new_tokens=2, key=jax.random.key(0),
        sampling=SamplingConfig(temperature=0),
    )  # fmt: skip
    beam = beam_search(bigram_model, table, jnp.zeros(1), first, num_beams=2, max_new_tokens=2)
    assert greedy.tokens[0, 0] == 1
    np.testing.assert_array_equal(beam.tokens[0, 0], [2, 3])


def test_beam_rejects_bad_widths():
    first = jnp.zeros((1, BV))
    for bad in (0, -2):
        with pytest.raises(ValueError, match=f"num_beams={bad} is out of range"):
            beam_search(bigram_model, None, None, first, num_beams=bad, max_new_tokens=2)
