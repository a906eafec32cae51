"""Generation past a learned position table crops the context as nanoGPT's `generate` does:
token for token against a reference loop that recomputes the cropped window every step, with
and without the cache, for prompts shorter and longer than the context, and beam search."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.decode import Buckets, SamplingConfig, beam_search_tokens, generate_tokens
from llmjax.decode.steps import plan_cache
from llmjax.models import build_model
from tests.decode_utils import random_params

GREEDY = SamplingConfig(temperature=0)


@pytest.fixture(scope="module")
def learned():
    from llmjax.config import PRESETS

    cfg = dataclasses.replace(PRESETS["test-tiny"].model, vocab_size=61)  # position="learned"
    assert cfg.position == "learned" and cfg.max_seq_len == 32
    return build_model(cfg), {"params": random_params(cfg, seed=3)}


def last_logits(model, variables, cond):
    """The model's logits after `cond` (at most max_seq_len tokens), from a full forward pass.

    The window is right-padded to max_seq_len so one program serves every length: the model is
    causal, so the logits at the last real token see that token and those before it alone.
    """
    L = model.cfg.max_seq_len
    window = np.zeros(L, np.int32)
    window[: len(cond)] = cond
    return _forward(model, variables, jnp.asarray(window))[len(cond) - 1, : model.cfg.vocab_size]


@jax.jit(static_argnums=0)
def _forward(model, variables, window_L):
    return model.apply(variables, window_L[None]).logits[0]


def nanogpt_generate(model, variables, prompt, max_new_tokens):
    """nanoGPT's greedy loop: idx_cond = idx[:, -block_size:], a full forward pass, argmax."""
    L = model.cfg.max_seq_len
    idx = [int(t) for t in prompt]
    for _ in range(max_new_tokens):
        idx.append(int(jnp.argmax(last_logits(model, variables, idx[-L:]))))
    return np.asarray(idx[len(prompt) :], np.int32)


PROMPTS = [np.arange(5) % 61, (np.arange(20) * 7) % 61, (np.arange(31) * 3 + 1) % 61]


def test_cropped_greedy_sampling_equals_nanogpts_loop(learned):
    model, variables = learned
    N = 40  # every row runs past the 32-token context
    want = [nanogpt_generate(model, variables, p, N) for p in PROMPTS]
    kw = dict(max_new_tokens=N, key=jax.random.key(0), sampling=GREEDY)
    assert plan_cache(model.cfg, 31, N).crop
    for options in (dict(), dict(use_cache=False), dict(padding="right"), dict(buckets=Buckets())):
        out = generate_tokens(model, variables, PROMPTS, **options, **kw)
        for b, w in enumerate(want):
            np.testing.assert_array_equal(out.tokens[b], w, err_msg=f"row {b}, {options}")
        assert (out.lengths == N).all()


def test_a_prompt_longer_than_the_context_is_cropped_too(learned):
    model, variables = learned
    long = (np.arange(45) * 5) % 61
    out = generate_tokens(
        model, variables, [long, PROMPTS[0]], max_new_tokens=6, key=jax.random.key(0),
        sampling=GREEDY,
    )  # fmt: skip
    np.testing.assert_array_equal(out.tokens[0], nanogpt_generate(model, variables, long, 6))
    np.testing.assert_array_equal(out.tokens[1], nanogpt_generate(model, variables, PROMPTS[0], 6))
    assert plan_cache(model.cfg, 45, 6).cache_len == 0  # no step fits: no cache at all


def test_log_probs_are_those_of_the_window(learned):
    model, variables = learned
    out = generate_tokens(
        model, variables, [PROMPTS[1]], max_new_tokens=20, key=jax.random.key(0),
        sampling=GREEDY,
    )  # fmt: skip
    seq = np.concatenate([PROMPTS[1], out.tokens[0]])
    L = model.cfg.max_seq_len
    for k in (0, 11, 12, 19):  # before and after the window starts to slide
        context = seq[: len(PROMPTS[1]) + k][-L:]
        logits = last_logits(model, variables, context)
        want = jax.nn.log_softmax(logits)[out.tokens[0, k]]
        np.testing.assert_allclose(out.log_probs[0, k], want, atol=2e-5)


def test_sampling_crops_alike_with_and_without_the_cache(learned):
    model, variables = learned
    kw = dict(max_new_tokens=30, key=jax.random.key(4), sampling=SamplingConfig(temperature=0.8))
    cached = generate_tokens(model, variables, PROMPTS, **kw)
    recomputed = generate_tokens(model, variables, PROMPTS, use_cache=False, **kw)
    np.testing.assert_array_equal(cached.tokens, recomputed.tokens)
    np.testing.assert_allclose(cached.log_probs, recomputed.log_probs, atol=1e-5)


def test_beam_search_runs_past_the_context(learned):
    model, variables = learned
    out = beam_search_tokens(model, variables, PROMPTS[2:], num_beams=2, max_new_tokens=6)
    assert out.tokens.shape == (1, 2, 6) and np.isfinite(out.scores).all()
    # With one beam and no length penalty beam search is greedy search.
    one = beam_search_tokens(
        model, variables, PROMPTS[2:], num_beams=1, max_new_tokens=6, length_penalty=0.0
    )
    np.testing.assert_array_equal(
        one.tokens[0, 0], nanogpt_generate(model, variables, PROMPTS[2], 6)
    )


def test_positions_that_extrapolate_are_not_cropped():
    from llmjax.config import PRESETS

    for position in ("rope", "alibi", "sinusoidal", "none"):
        cfg = dataclasses.replace(PRESETS["test-tiny"].model, position=position)
        plan = plan_cache(cfg, 20, 40)
        assert not plan.crop and plan.cache_len == 24 + 40
        with pytest.raises(ValueError, match="longer than the model's context"):
            plan_cache(cfg, 40, 4)
