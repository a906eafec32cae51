"""The KV cache: prefill + one-token steps give the logits of a full forward pass (float32, 1e-5)
for every position scheme, MHA/GQA/MQA, scan and loop layouts, padded rows and rolling caches."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.decode import init_cache
from llmjax.models import build_model
from tests.decode_utils import random_params

T, P, PAD = 14, 6, 3  # sequence length, prompt length, left padding of row 1's prompt


@functools.cache
def _runner(cfg, cache_len: int, rolling: bool):
    """One jitted program: the full forward pass and the cached one (prefill, then a scan of
    single-token steps). Row 0 has a P-token prompt; row 1 a (P - PAD)-token prompt padded on
    the left, so its cached positions run behind row 0's."""
    model = build_model(cfg)

    def run(params, tokens_BxT):
        variables = {"params": params}
        full_BxTxV = model.apply(variables, tokens_BxT).logits
        pad = jnp.zeros((PAD,), jnp.int32)
        row1 = jnp.concatenate([pad, tokens_BxT[1, : P - PAD]])
        prompt_BxP = jnp.stack([tokens_BxT[0, :P], row1])
        positions_BxP = jnp.stack([jnp.arange(P), jnp.arange(P) - PAD])  # < 0: padding
        cache = init_cache(cfg, 2, cache_len, rolling=rolling)
        prefill = model.apply(variables, prompt_BxP, positions_BxP, cache=cache)
        prefill_BxPxV, cache = prefill.logits, prefill.cache
        rest_BxR = jnp.stack([tokens_BxT[0, P:], tokens_BxT[1, P - PAD : T - PAD]])

        def step(cache, token_B):
            out = model.apply(variables, token_B[:, None], cache=cache)
            return out.cache, out.logits[:, 0]

        _, steps_RxBxV = jax.lax.scan(step, cache, rest_BxR.T)
        return full_BxTxV, prefill_BxPxV, jnp.moveaxis(steps_RxBxV, 0, 1)

    return jax.jit(run)


def _check(cfg, cache_len=T, rolling=False):
    params = random_params(cfg)
    tokens = jax.random.randint(jax.random.key(1), (2, T), 0, cfg.vocab_size)
    full, prefill, steps = (np.asarray(x) for x in _runner(cfg, cache_len, rolling)(params, tokens))
    tol = dict(atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(prefill[0], full[0, :P], **tol)
    np.testing.assert_allclose(steps[0], full[0, P:], **tol)
    np.testing.assert_allclose(prefill[1, PAD:], full[1, : P - PAD], **tol)
    np.testing.assert_allclose(steps[1], full[1, P - PAD : T - PAD], **tol)


# Every position scheme; MHA, GQA and MQA; scan and loop layouts (RoPE in both); each compiled
# program costs seconds here, so the combinations are chosen rather than crossed.
VARIANTS = {
    "learned-scan-mha": dict(position="learned"),
    "sinusoidal-loop-gqa": dict(position="sinusoidal", scan_layers=False, n_kv_heads=2),
    "rope-scan-gqa": dict(position="rope", n_kv_heads=2),
    "rope-loop-mqa-llama": dict(
        position="rope",
        scan_layers=False,
        n_kv_heads=1,
        norm="rmsnorm",
        mlp="swiglu",
        use_bias=False,
        tie_embeddings=False,
    ),
    "alibi-scan-mqa": dict(position="alibi", n_kv_heads=1),
    "none-loop-window-reference-kernel": dict(
        position="none", scan_layers=False, attention_window=5, attention="reference"
    ),
    "learned-scan-gqa-padded-vocab": dict(n_kv_heads=2, vocab_multiple=16),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_cached_logits_equal_full_forward(tiny_model, name):
    _check(dataclasses.replace(tiny_model, **VARIANTS[name]))


@pytest.mark.parametrize("scan", [True, False], ids=["scan", "loop"])
def test_rolling_cache_for_sliding_window(tiny_model, scan):
    """A cache of window + P - 1 slots (fewer than T) reproduces the sliding-window model."""
    cfg = dataclasses.replace(tiny_model, attention_window=4, position="rope", scan_layers=scan)
    cache_len = 4 + P - 1
    assert cache_len < T
    _check(cfg, cache_len=cache_len, rolling=True)


def test_cache_shapes_store_only_kv_heads(tiny_model):
    cfg = dataclasses.replace(tiny_model, n_kv_heads=2)
    scan = init_cache(cfg, 3, 10)
    assert scan.layers.k.shape == (cfg.n_layers, 3, 10, 2, cfg.dim_head)
    loop = init_cache(dataclasses.replace(cfg, scan_layers=False), 3, 10)
    assert len(loop.layers) == cfg.n_layers
    assert loop.layers[0].v.shape == (3, 10, 2, cfg.dim_head)
    taken = scan.take(jnp.asarray([2, 2, 0, 1]))
    assert taken.layers.k.shape[1] == 4 and taken.positions.shape == (4, 10)


def test_too_many_tokens_for_a_rolling_cache(tiny_model):
    cfg = dataclasses.replace(tiny_model, attention_window=4, position="rope")
    with pytest.raises(ValueError, match="attention_window"):
        init_cache(cfg, 1, 3, rolling=True)
    cache = init_cache(cfg, 1, 6, rolling=True)  # 6 - 4 + 1 = 3 tokens per call at most
    params = random_params(cfg)
    with pytest.raises(ValueError, match="at most 3"):
        build_model(cfg).apply({"params": params}, jnp.zeros((1, 4), jnp.int32), cache=cache)


def test_segments_with_a_cache_are_rejected(tiny_model):
    params = random_params(tiny_model)
    tokens = jnp.zeros((1, 3), jnp.int32)
    with pytest.raises(ValueError, match="segments .* cannot be combined with a cache"):
        build_model(tiny_model).apply(
            {"params": params}, tokens, None, tokens, cache=init_cache(tiny_model, 1, 8)
        )
