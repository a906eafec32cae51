"""The decoder's one output type: which ModelOutput fields each kind of call fills, jit or not."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.decode import KVCache, StateCache, init_cache
from llmjax.models import ModelOutput, build_model
from tests.decode_utils import random_params

B, T = 2, 6


def _call(cfg, use_jit, cache=None, **kw):
    """(output, params) of one call on random tokens."""
    model, params = build_model(cfg), random_params(cfg)
    tokens = jax.random.randint(jax.random.key(0), (B, T), 0, cfg.vocab_size)
    fn = lambda p, t, c: model.apply({"params": p}, t, cache=c, **kw)  # noqa: E731
    return (jax.jit(fn) if use_jit else fn)(params, tokens, cache), params


@pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])
def test_plain_call_fills_logits_only(tiny_model, use_jit):
    out, _ = _call(tiny_model, use_jit)
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (B, T, tiny_model.padded_vocab_size)
    assert out.logits.dtype == jnp.float32
    assert out.hidden is None and out.cache is None and out.aux == {}


@pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])
def test_return_hidden_adds_the_final_hidden_states(tiny_model, use_jit):
    """With tied embeddings the logits are the hidden states times the embedding table."""
    out, params = _call(tiny_model, use_jit, return_hidden=True)
    plain, _ = _call(tiny_model, use_jit)
    assert out.hidden.shape == (B, T, tiny_model.d_model) and out.cache is None
    np.testing.assert_array_equal(out.logits, plain.logits)
    table = params["embed"]["embedding"]
    np.testing.assert_allclose(out.hidden @ table.T, out.logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "lm_head"])
def test_logits_at_gives_the_logits_of_those_positions_only(tiny_model, tie):
    cfg = dataclasses.replace(tiny_model, tie_embeddings=tie)
    at = jnp.asarray([[5, 0, 2], [1, 1, 4]], jnp.int32)
    out, _ = _call(cfg, True, logits_at=at, return_hidden=True)
    plain, _ = _call(cfg, True)
    assert out.logits.shape == (B, 3, cfg.padded_vocab_size) and out.hidden.shape[1] == T
    want = np.take_along_axis(np.asarray(plain.logits), np.asarray(at)[..., None], axis=1)
    np.testing.assert_allclose(out.logits, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("attention", ["xla", "linear"])
def test_a_cache_in_gives_the_updated_cache_out(tiny_model, use_jit, attention):
    cfg = dataclasses.replace(tiny_model, attention=attention, position="rope")
    cache = init_cache(cfg, B, 8)
    out, _ = _call(cfg, use_jit, cache=cache)
    assert isinstance(out.cache, KVCache if attention == "xla" else StateCache)
    assert int(out.cache.index) == T and out.hidden is None
    np.testing.assert_array_equal(out.cache.next_positions, [T, T])
    assert out.logits.shape == (B, T, cfg.padded_vocab_size)
