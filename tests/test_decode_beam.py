"""Beam search on an llmjax model: one beam is greedy search, rows are independent, EOS ends a
hypothesis, and the text-level API returns the best beam."""

import dataclasses

import jax
import numpy as np
import pytest

from llmjax.decode import SamplingConfig, beam_search_tokens, generate, generate_tokens
from llmjax.models import build_model
from tests.decode_utils import random_params

N = 10
PROMPTS = [np.asarray([5, 9, 2]), np.asarray([1, 2, 3, 4, 5, 6, 7]), np.asarray([8, 8, 8, 1, 4])]


@pytest.fixture(scope="module")
def model_and_variables():
    from llmjax.config import PRESETS

    cfg = dataclasses.replace(
        PRESETS["test-tiny"].model, vocab_size=61, position="alibi", scan_layers=False
    )
    return build_model(cfg), {"params": random_params(cfg, seed=2)}


def _greedy(model, variables, **kw):
    return generate_tokens(
        model,
        variables,
        PROMPTS,
        max_new_tokens=N,
        key=jax.random.key(0),
        sampling=SamplingConfig(temperature=0),
        **kw,
    )


def test_one_beam_is_greedy_search(model_and_variables):
    model, variables = model_and_variables
    greedy = _greedy(model, variables)
    beam = beam_search_tokens(model, variables, PROMPTS, num_beams=1, max_new_tokens=N)
    np.testing.assert_array_equal(beam.tokens[:, 0], greedy.tokens)
    np.testing.assert_allclose(beam.log_probs[:, 0], greedy.log_probs.sum(1), rtol=1e-5)
    np.testing.assert_allclose(beam.token_log_probs[:, 0], greedy.log_probs, atol=1e-5)
    # With an EOS id that greedy emits (and no length penalty), both stop at the same place.
    eos = int(greedy.tokens[0, 4])
    stopped = _greedy(model, variables, stop_ids=[eos], pad_id=0)
    beam = beam_search_tokens(
        model, variables, PROMPTS, num_beams=1, max_new_tokens=N, eos_ids=[eos],
        length_penalty=0.0,
    )  # fmt: skip
    np.testing.assert_array_equal(beam.lengths[:, 0], stopped.lengths)
    np.testing.assert_array_equal(beam.tokens[:, 0], stopped.tokens)


def test_beam_rows_are_independent_and_scored(model_and_variables):
    model, variables = model_and_variables
    kw = dict(num_beams=3, max_new_tokens=N, eos_ids=[7], length_penalty=0.8)
    batch = beam_search_tokens(model, variables, PROMPTS, **kw)
    for b, p in enumerate(PROMPTS):
        one = beam_search_tokens(model, variables, [p], **kw)
        np.testing.assert_array_equal(batch.tokens[b], one.tokens[0])
        np.testing.assert_allclose(batch.scores[b], one.scores[0], rtol=1e-5)
    lengths = batch.lengths
    np.testing.assert_allclose(batch.scores, batch.log_probs / lengths**0.8, rtol=1e-5)
    for b, w in np.ndindex(lengths.shape):
        seq = batch.tokens[b, w, : lengths[b, w]]
        assert 7 not in seq[:-1]  # EOS only ever ends a hypothesis
        assert (batch.tokens[b, w, lengths[b, w] :] == 0).all()


def test_generate_with_beams_returns_the_best(model_and_variables):
    model, variables = model_and_variables
    kw = dict(num_beams=3, max_new_tokens=N, length_penalty=0.8)
    prompts = [p.tolist() for p in PROMPTS]
    out = generate(model, prompts, params=variables, stop_token_ids=[7], **kw)
    best = beam_search_tokens(model, variables, PROMPTS, eos_ids=[7], **kw)
    for b, c in enumerate(out):
        n = best.lengths[b, 0]
        np.testing.assert_array_equal(c.tokens, best.tokens[b, 0, :n])
        np.testing.assert_allclose(c.log_probs, best.token_log_probs[b, 0, :n], atol=1e-6)
        assert c.score == pytest.approx(float(best.scores[b, 0]))
        assert c.finish_reason == ("stop" if c.tokens[-1] == 7 else "length")
    with pytest.raises(ValueError, match="beam search .* deterministic"):
        generate(model, [[1]], params=variables, num_beams=2, top_k=5)
