"""Shape buckets: generation with the batch, prompt and new-token shapes rounded up gives the
tokens and log-probs of the exact shapes, and calls of varied sizes share compiled programs."""

import dataclasses

import jax
import numpy as np
import pytest

from llmjax.data import ByteTokenizer
from llmjax.decode import Buckets, SamplingConfig, generate, generate_tokens
from llmjax.decode import tokens as decode_tokens
from llmjax.decode.loop import run_steps
from llmjax.models import build_model
from tests.decode_utils import random_params

PROMPTS = [np.asarray([5, 9, 2]), np.arange(1, 20) % 61, np.asarray([8, 8, 8, 1, 4])]


@pytest.fixture(scope="module")
def model_and_variables():
    from llmjax.config import PRESETS

    cfg = dataclasses.replace(
        PRESETS["test-tiny"].model, vocab_size=61, position="rope", n_kv_heads=2
    )
    return build_model(cfg), {"params": random_params(cfg, seed=2)}


@pytest.mark.parametrize(
    "options",
    [
        dict(sampling=SamplingConfig(temperature=0)),
        dict(sampling=SamplingConfig(temperature=0), padding="right", use_cache=False),
        # The stages that read the prompt, with one key per row.
        dict(
            sampling=SamplingConfig(
                temperature=0.9, top_k=20, repetition_penalty=1.3, no_repeat_ngram_size=2
            ),
            key=jax.random.split(jax.random.key(3), 3),
        ),
    ],
)
def test_bucketed_shapes_give_the_exact_shapes_output(model_and_variables, options):
    model, variables = model_and_variables
    options = {"key": jax.random.key(1), **options}
    kw = dict(max_new_tokens=13, stop_ids=[7], **options)
    exact = generate_tokens(model, variables, PROMPTS, **kw)
    bucketed = generate_tokens(model, variables, PROMPTS, buckets=Buckets(), **kw)
    assert bucketed.tokens.shape == exact.tokens.shape == (3, 13)
    np.testing.assert_array_equal(bucketed.tokens, exact.tokens)
    np.testing.assert_allclose(bucketed.log_probs, exact.log_probs, atol=1e-5)
    np.testing.assert_allclose(bucketed.entropy, exact.entropy, atol=1e-5)
    np.testing.assert_array_equal(bucketed.lengths, exact.lengths)
    np.testing.assert_array_equal(bucketed.stopped, exact.stopped)
    assert bucketed.steps == exact.steps


def test_text_streaming_and_stop_strings_see_the_real_rows(model_and_variables):
    model, variables = model_and_variables
    tok = ByteTokenizer()
    cfg = dataclasses.replace(model.cfg, vocab_size=tok.vocab_size)
    model, variables = build_model(cfg), {"params": random_params(cfg, seed=5)}
    prompts = ["to be", "or not"]
    free = generate(model, prompts, params=variables, tokenizer=tok, temperature=0,
                    max_new_tokens=24, buckets=None)  # fmt: skip
    stop = free[1].text[5:7]  # a stop string row 1 produces
    runs = []
    for buckets in (None, Buckets(min_rows=4, min_length=16)):
        pieces = {0: [], 1: []}
        out = generate(
            model, prompts, params=variables, tokenizer=tok, temperature=0, max_new_tokens=24,
            stop=stop, stream=lambda row, text, p=pieces: p[row].append(text), chunk_size=4,
            buckets=buckets,
        )  # fmt: skip
        assert ["".join(pieces[b]) for b in (0, 1)] == [c.text for c in out]
        runs.append([(c.text, c.finish_reason, c.tokens.tolist()) for c in out])
    assert runs[0] == runs[1] and runs[0][1][1] == "stop"


def test_varied_calls_in_one_bucket_compile_once(model_and_variables):
    model, variables = model_and_variables
    buckets = Buckets(min_rows=8, min_length=32)
    kw = dict(key=jax.random.key(0), sampling=SamplingConfig(temperature=0), buckets=buckets)
    generate_tokens(model, variables, [PROMPTS[0]], max_new_tokens=5, **kw)
    programs = decode_tokens._begin_decoding._cache_size(), run_steps._cache_size()
    calls = [(PROMPTS, 30), (PROMPTS[:2] * 3, 17), ([np.arange(30) % 61], 1)]
    for prompts, n in calls:
        out = generate_tokens(model, variables, prompts, max_new_tokens=n, **kw)
        assert out.tokens.shape == (len(prompts), n)
    assert (decode_tokens._begin_decoding._cache_size(), run_steps._cache_size()) == programs


def test_bucket_sizes():
    b = Buckets(min_rows=2, min_length=16)
    assert [b.rows(n) for n in (1, 2, 3, 8, 9)] == [2, 2, 4, 8, 16]
    assert [b.length(n) for n in (1, 16, 17, 100)] == [16, 16, 32, 128]
    with pytest.raises(ValueError, match="Buckets.min_rows=0 is out of range"):
        Buckets(min_rows=0)
