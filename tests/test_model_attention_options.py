"""The decoder's QK-norm (`model.qk_norm`) and attention-logit soft cap (attn_logit_softcap).

Off, the model is today's, params and logits bit for bit; QK-norm gives unit-RMS query and key
heads (times their learned scale) and trains; a huge cap is no cap; cached decoding equals
recomputation with both on; configs refuse bad values; Hugging Face export refuses both and
imported configs keep them off. The attention-level cap: tests/test_attention_softcap.py.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llmjax.attention import Mask
from llmjax.config import ConfigError, ModelConfig
from llmjax.decode import init_cache
from llmjax.hf import HF_FAMILIES, HFError, export_hf
from llmjax.layers.self_attention import SelfAttention
from llmjax.models import build_model, init_model
from llmjax.objectives.losses import cross_entropy
from tests.decode_utils import random_params

B, T = 2, 12


def _tokens(cfg, seed=0, length=T):
    return jax.random.randint(jax.random.key(seed), (B, length), 0, cfg.vocab_size)


@functools.cache
def _forward(cfg):
    model = build_model(cfg)
    return jax.jit(lambda p, t: model.apply({"params": p}, t).logits)


def _shapes(params):
    return jax.tree.map(lambda x: (x.shape, x.dtype), params)


@pytest.mark.parametrize("scan", [True, False], ids=["scan", "loop"])
def test_options_off_are_todays_model(tiny_model, scan):
    """Explicitly off (and the defaults) build the same params from the same key, with the
    same logits bit for bit; QK-norm on adds exactly the two scales per layer."""
    base = dataclasses.replace(tiny_model, position="rope", scan_layers=scan)
    off = dataclasses.replace(base, qk_norm=False, attn_logit_softcap=None)
    params, _ = init_model(base, jax.random.key(3))
    params_off, _ = init_model(off, jax.random.key(3))
    assert _shapes(params_off) == _shapes(params)
    jax.tree.map(np.testing.assert_array_equal, params_off, params)
    tokens = _tokens(base)
    np.testing.assert_array_equal(_forward(off)(params, tokens), _forward(base)(params, tokens))

    normed, _ = init_model(dataclasses.replace(base, qk_norm=True), jax.random.key(3))
    layers = ["blocks"] if scan else [f"blocks_{i}" for i in range(base.n_layers)]
    added = {}
    for name in layers:
        attention = dict(normed[name]["attention"])
        added[name] = {k: attention.pop(k) for k in ("query_norm", "key_norm")}
        normed[name] = {**normed[name], "attention": attention}
    assert _shapes(normed) == _shapes(params)
    for scales in added.values():
        for norm in scales.values():
            assert norm["scale"].shape[-1] == base.dim_head and (norm["scale"] == 1).all()
    capped, _ = init_model(dataclasses.replace(base, attn_logit_softcap=30.0), jax.random.key(3))
    assert _shapes(capped) == _shapes(params)  # the cap has no params


def test_qk_norm_gives_unit_rms_heads_before_rope(tiny_model):
    """The layer's normalized queries and keys (captured as the norms' outputs) equal the
    projections divided by their RMS over each head, times the learned scale."""
    cfg = dataclasses.replace(tiny_model, qk_norm=True, position="rope", n_kv_heads=2)
    layer = SelfAttention(cfg)
    x = 10 * jax.random.normal(jax.random.key(0), (B, T, cfg.d_model))  # RMS >> sqrt(eps)
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))
    mask = Mask.causal_lm(positions)
    params = dict(nn.meta.unbox(layer.init(jax.random.key(1), x, mask)["params"]))
    rng = np.random.default_rng(0)
    for name in ("query_norm", "key_norm"):  # a non-trivial learned scale
        params[name] = {"scale": jnp.asarray(1 + 0.3 * rng.standard_normal(cfg.dim_head))}
    _, state = layer.apply(
        {"params": params}, x, mask, capture_intermediates=True, mutable=["intermediates"]
    )
    captured = state["intermediates"]
    for name, heads in (("query", cfg.n_heads), ("key", cfg.kv_heads)):
        normed = np.asarray(captured[f"{name}_norm"]["__call__"][0])
        assert normed.shape == (B, T, heads, cfg.dim_head)
        raw = np.einsum("btd,dnh->btnh", x, params[f"{name}_kernel"]) + params[f"{name}_bias"]
        rms = np.sqrt(np.mean(raw**2, axis=-1, keepdims=True) + cfg.norm_eps)
        scale = np.asarray(params[f"{name}_norm"]["scale"])
        np.testing.assert_allclose(normed, raw / rms * scale, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(
            np.sqrt(np.mean((normed / scale) ** 2, -1)), 1.0, atol=1e-3, rtol=0
        )


def test_qk_norm_and_softcap_train(tiny_model):
    """A few Adam steps on one batch: the loss stays finite and falls, and the QK-norm scales
    are learned (they get gradients)."""
    cfg = dataclasses.replace(
        tiny_model, qk_norm=True, attn_logit_softcap=5.0, position="rope", norm="rmsnorm"
    )
    model = build_model(cfg)
    params, _ = init_model(cfg, jax.random.key(0))
    tokens = _tokens(cfg, length=17)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    optimizer = optax.adam(3e-3)

    def loss_fn(p):
        return cross_entropy(model.apply({"params": p}, inputs).logits, targets)[0]

    @jax.jit
    def step(p, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss, grads

    opt_state, losses = optimizer.init(params), []
    for _ in range(8):
        params, opt_state, loss, grads = step(params, opt_state)
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0] - 0.3, losses
    norm_grad = grads["blocks"]["attention"]["query_norm"]["scale"]
    assert float(jnp.abs(norm_grad).max()) > 0


def test_a_huge_cap_is_no_cap_in_the_model(tiny_model):
    """Per attention call a cap of 1e6 is no cap to 1e-6 (tests/test_attention_softcap.py);
    through the two layers of a random model the logits agree to 1e-5."""
    cfg = dataclasses.replace(tiny_model, position="alibi")
    params = random_params(cfg)
    tokens = _tokens(cfg)
    huge = dataclasses.replace(cfg, attn_logit_softcap=1e6)
    np.testing.assert_allclose(
        _forward(huge)(params, tokens), _forward(cfg)(params, tokens), atol=1e-5, rtol=1e-5
    )
    small = dataclasses.replace(cfg, attn_logit_softcap=0.5)
    assert not np.allclose(_forward(small)(params, tokens), _forward(cfg)(params, tokens))


P = 5  # prompt length of the decoding check


@pytest.mark.parametrize(
    "overrides",
    [
        dict(scan_layers=True, position="rope", n_kv_heads=2),
        dict(scan_layers=False, position="alibi", attention="flash"),
        dict(scan_layers=True, position="rope", attention="sliding_window", attention_window=4),
    ],
    ids=["scan-rope-gqa", "loop-alibi-flash", "scan-sliding-window"],
)
def test_cached_decoding_equals_recomputation(tiny_model, overrides):
    """Both options on: a prompt into the cache, then one token at a time, gives the logits of
    the full forward pass."""
    cfg = dataclasses.replace(tiny_model, qk_norm=True, attn_logit_softcap=2.0, **overrides)
    model, params = build_model(cfg), random_params(cfg)
    tokens = _tokens(cfg, seed=1)

    @jax.jit
    def run(params, tokens):
        full = model.apply({"params": params}, tokens).logits
        prefill = model.apply({"params": params}, tokens[:, :P], cache=init_cache(cfg, B, T))

        def step(cache, token_B):
            out = model.apply({"params": params}, token_B[:, None], cache=cache)
            return out.cache, out.logits[:, 0]

        _, steps = jax.lax.scan(step, prefill.cache, tokens[:, P:].T)
        return full, jnp.concatenate([prefill.logits, jnp.moveaxis(steps, 0, 1)], axis=1)

    full, cached = run(params, tokens)
    np.testing.assert_allclose(cached, full, atol=1e-5, rtol=1e-5)


def test_linear_attention_refuses_the_cap_in_the_model(tiny_model):
    cfg = dataclasses.replace(tiny_model, attention="linear", attn_logit_softcap=5.0)
    with pytest.raises(ValueError, match="'linear' cannot serve an attention-logit soft cap"):
        build_model(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))


@pytest.mark.parametrize(
    "value, message",
    [
        (0.0, "model.attn_logit_softcap must be > 0"),
        (-5.0, "model.attn_logit_softcap must be > 0"),
        (float("inf"), "model.attn_logit_softcap must be a finite number"),
        (float("nan"), "model.attn_logit_softcap must be a finite number"),
    ],
)
def test_config_refuses_a_bad_cap(value, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(attn_logit_softcap=value)


def test_config_refuses_a_non_boolean_qk_norm():
    with pytest.raises(ConfigError, match="model.qk_norm must be true or false"):
        ModelConfig(qk_norm="yes")


LLAMA = dict(norm="rmsnorm", mlp="swiglu", position="rope", use_bias=False, tie_embeddings=False)


@pytest.mark.parametrize("option", [dict(qk_norm=True), dict(attn_logit_softcap=50.0)])
def test_hf_export_refuses_what_no_family_holds(tiny_model, tmp_path, option):
    for shape, family in ((dict(), "GPT-2"), (LLAMA, "Llama")):
        cfg = dataclasses.replace(tiny_model, **shape, **option)
        ((field, value),) = option.items()
        if family == "Llama" and field == "qk_norm":
            continue  # Qwen3 holds it (tests/test_block_features.py)
        with pytest.raises(HFError, match=rf"{family} needs model.{field}="):
            export_hf(cfg, {}, tmp_path / "out")
    for model_type in ("gpt2", "llama", "mistral", "qwen2"):
        with pytest.raises(HFError, match=f"cannot export this model as {model_type!r}"):
            export_hf(cfg, {}, tmp_path / "out", model_type=model_type)
    assert not (tmp_path / "out").exists()


def test_hf_imported_configs_keep_the_options_off():
    llama = dict(
        vocab_size=64,
        max_position_embeddings=32,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
    )
    gpt2 = dict(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    for model_type, hf in (("llama", llama), ("mistral", llama), ("qwen2", llama), ("gpt2", gpt2)):
        cfg = HF_FAMILIES.get(model_type)().config_from_hf(hf)
        assert cfg.qk_norm is False and cfg.attn_logit_softcap is None, model_type
