"""The decoder's attention probabilities (`return_attention`) and head mask (`head_mask`).

Probabilities: rows sum to 1 over the keys a query sees and are exactly 0 on the others
(causal, packed segments, padded and unwritten cache slots); each layer's equal a NumPy softmax
of that layer's queries and keys recomputed from its params; the scan and loop layouts agree;
asking for them changes no logit. Head mask: ones are None bit for bit; zeros everywhere are
the model whose attention branches add only their output bias.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.decode import init_cache
from llmjax.layers.positions import POSITIONS
from llmjax.models import build_model, unstack_layer_params
from tests.decode_utils import random_params

B, T = 2, 10
SEGMENTS = np.asarray([[0] * 4 + [1] * 6, [0] * T])
CAP = 4.0


def _cfg(tiny_model, **overrides):
    base = dict(position="rope", qk_norm=True, attn_logit_softcap=CAP, n_kv_heads=2)
    return dataclasses.replace(tiny_model, **{**base, **overrides})


def _tokens(cfg, seed=0):
    return jax.random.randint(jax.random.key(seed), (B, T), 0, cfg.vocab_size)


@functools.cache
def _apply(cfg, **kwargs):
    model = build_model(cfg)
    return jax.jit(
        lambda p, t, s=None, m=None: model.apply({"params": p}, t, None, s, head_mask=m, **kwargs)
    )


def _visible(segments):
    causal = np.tril(np.ones((T, T), bool))
    same = segments[:, :, None] == segments[:, None, :]
    return causal[None] & same  # [B, T, S]


def _layer_probs(cfg, layer_params, x_BxTxD, segments):
    """This layer's probabilities from its params, in NumPy (float64): projections, QK-norm,
    RoPE (the library's rotation), capped logits, masked softmax."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), layer_params["attention"])
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))
    heads = {}
    for name in ("query", "key"):
        h = np.einsum("btd,dnh->btnh", x_BxTxD, p[f"{name}_kernel"]) + p[f"{name}_bias"]
        h = h / np.sqrt(np.mean(h**2, -1, keepdims=True) + cfg.norm_eps)
        h = h * p[f"{name}_norm"]["scale"]
        rotated = POSITIONS.get("rope").rotate(jnp.asarray(h, jnp.float32), positions, cfg)
        heads[name] = np.asarray(rotated, np.float64)
    group = cfg.n_heads // cfg.kv_heads
    k = np.repeat(heads["key"], group, axis=2)
    raw = np.einsum("btnh,bsnh->bnts", heads["query"], k) / np.sqrt(cfg.dim_head)
    logits = CAP * np.tanh(raw / CAP)
    logits = np.where(_visible(segments)[:, None], logits, -np.inf)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_probabilities_equal_a_softmax_of_each_layers_queries_and_keys(tiny_model):
    cfg = _cfg(tiny_model, scan_layers=False)
    params = random_params(cfg)
    model = build_model(cfg)
    tokens, segments = _tokens(cfg), jnp.asarray(SEGMENTS)
    out, state = jax.jit(
        lambda p: model.apply(
            {"params": p},
            tokens,
            None,
            segments,
            return_attention=True,
            capture_intermediates=True,
            mutable=["intermediates"],
        )
    )(params)
    probs = np.asarray(out.attention)
    assert probs.shape == (cfg.n_layers, B, cfg.n_heads, T, T) and probs.dtype == np.float32
    for i in range(cfg.n_layers):
        x = np.asarray(state["intermediates"][f"blocks_{i}"]["attention_norm"]["__call__"][0])
        want = _layer_probs(cfg, params[f"blocks_{i}"], np.asarray(x, np.float64), SEGMENTS)
        np.testing.assert_allclose(probs[i], want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["xla", "flash"])
def test_rows_sum_to_one_and_hidden_keys_get_zero(tiny_model, attention):
    """Causal and packed segments, scan and loop layouts alike (the same params); whichever
    kernel computes the output, the probabilities are the same, and asking for them changes
    no logit."""
    scanned = random_params(_cfg(tiny_model))
    tokens, segments = _tokens(tiny_model), jnp.asarray(SEGMENTS)
    hidden = ~_visible(SEGMENTS)[None, :, None]
    outs = {}
    for scan in (True, False):
        cfg = _cfg(tiny_model, scan_layers=scan, attention=attention)
        params = scanned if scan else unstack_layer_params(scanned, cfg.n_layers)
        out = _apply(cfg, return_attention=True)(params, tokens, segments)
        plain = _apply(cfg)(params, tokens, segments)
        np.testing.assert_array_equal(out.logits, plain.logits)
        assert plain.attention is None
        probs = np.asarray(out.attention)
        assert (probs[np.broadcast_to(hidden, probs.shape)] == 0).all()
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
        outs[scan] = probs
    np.testing.assert_allclose(outs[True], outs[False], atol=1e-6, rtol=1e-6)
    xla = _apply(_cfg(tiny_model), return_attention=True)(scanned, tokens, segments)
    np.testing.assert_allclose(outs[True], xla.attention, atol=1e-6, rtol=1e-6)


P, PAD = 6, 2  # prompt length; left padding of row 1


@pytest.mark.parametrize("scan", [True, False], ids=["scan", "loop"])
def test_probabilities_over_a_cache_hide_padding_and_empty_slots(tiny_model, scan):
    """A left-padded prompt into a cache of T slots, then one token: each query's row is over
    the cache's slots, 0 on padding and unwritten slots, and equals the full pass's row."""
    cfg = _cfg(tiny_model, scan_layers=scan)
    model, params = build_model(cfg), random_params(cfg)
    tokens = _tokens(cfg)

    @jax.jit
    def run(params):
        full = model.apply({"params": params}, tokens, return_attention=True).attention
        row1 = jnp.concatenate([jnp.zeros((PAD,), jnp.int32), tokens[1, : P - PAD]])
        prompt = jnp.stack([tokens[0, :P], row1])
        positions = jnp.stack([jnp.arange(P), jnp.arange(P) - PAD])
        kw = dict(return_attention=True)
        prefill = model.apply(
            {"params": params}, prompt, positions, cache=init_cache(cfg, B, T), **kw
        )
        nxt = jnp.stack([tokens[0, P], tokens[1, P - PAD]])[:, None]
        step = model.apply({"params": params}, nxt, cache=prefill.cache, **kw)
        return full, prefill.attention, step.attention

    full, prefill, step = (np.asarray(x) for x in run(params))
    assert prefill.shape == (cfg.n_layers, B, cfg.n_heads, P, T)
    assert step.shape == (cfg.n_layers, B, cfg.n_heads, 1, T)
    assert (prefill[..., P:] == 0).all() and (step[..., P + 1 :] == 0).all()  # unwritten
    assert (prefill[:, 1, ..., :PAD] == 0).all() and (step[:, 1, ..., :PAD] == 0).all()
    np.testing.assert_allclose(prefill[:, 1, :, PAD:].sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(step.sum(-1), 1.0, atol=1e-6)
    tol = dict(atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(prefill[:, 0, :, :, :P], full[:, 0, :, :P, :P], **tol)
    np.testing.assert_allclose(step[:, 0, :, 0, : P + 1], full[:, 0, :, P, : P + 1], **tol)
    # Row 1's slots PAD.. hold its positions 0..; its step is at position P - PAD.
    np.testing.assert_allclose(
        step[:, 1, :, 0, PAD : P + 1], full[:, 1, :, P - PAD, : P - PAD + 1], **tol
    )


def test_a_recurrent_state_has_no_probabilities(tiny_model):
    cfg = dataclasses.replace(tiny_model, attention="linear", position="rope")
    model, params = build_model(cfg), random_params(cfg)
    out = model.apply({"params": params}, _tokens(cfg), return_attention=True)
    assert out.attention.shape == (cfg.n_layers, B, cfg.n_heads, T, T)  # the softmax stand-in
    with pytest.raises(ValueError, match="keeps no keys"):
        model.apply(
            {"params": params}, _tokens(cfg), cache=init_cache(cfg, B, T), return_attention=True
        )


@pytest.mark.parametrize("scan", [True, False], ids=["scan", "loop"])
def test_a_head_mask_of_ones_is_no_mask_bit_for_bit(tiny_model, scan):
    cfg = _cfg(tiny_model, scan_layers=scan)
    params, tokens = random_params(cfg), _tokens(cfg)
    ones = jnp.ones((cfg.n_layers, cfg.n_heads))
    np.testing.assert_array_equal(
        _apply(cfg)(params, tokens, None, ones).logits, _apply(cfg)(params, tokens).logits
    )
    model, cache = build_model(cfg), init_cache(cfg, B, T)
    cached = jax.jit(
        lambda p, m: model.apply({"params": p}, tokens, cache=cache, head_mask=m).logits
    )
    np.testing.assert_array_equal(cached(params, ones), cached(params, None))


@pytest.mark.parametrize("scan", [True, False], ids=["scan", "loop"])
def test_ablating_every_head_leaves_only_the_output_bias(tiny_model, scan):
    """All heads zeroed = every attention output projection zeroed: each attention branch
    then adds only its bias to the residual stream."""
    cfg = _cfg(tiny_model, scan_layers=scan)
    assert cfg.has_out_bias
    params, tokens = random_params(cfg), _tokens(cfg)
    layers = ["blocks"] if scan else [f"blocks_{i}" for i in range(cfg.n_layers)]
    no_attention = dict(params)
    for name in layers:
        attention = dict(params[name]["attention"])
        attention["out_kernel"] = jnp.zeros_like(attention["out_kernel"])
        no_attention[name] = {**params[name], "attention": attention}
    zeros = jnp.zeros((cfg.n_layers, cfg.n_heads))
    ablated = _apply(cfg)(params, tokens, None, zeros).logits
    np.testing.assert_allclose(ablated, _apply(cfg)(no_attention, tokens).logits, atol=1e-6)
    assert not np.allclose(ablated, _apply(cfg)(params, tokens).logits)


def test_a_head_mask_of_the_wrong_shape_is_refused(tiny_model):
    cfg = _cfg(tiny_model)
    model, params = build_model(cfg), random_params(cfg)
    with pytest.raises(ValueError, match=r"head_mask must be \[n_layers, n_heads\] = \[2, 4\]"):
        model.apply({"params": params}, _tokens(cfg), head_mask=jnp.ones((4, 2)))
