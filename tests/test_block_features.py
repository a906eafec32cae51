"""The block features the model zoo's families need, on llmjax's own tiny models: local/global
layers in both layouts and with the cache, the offset RMSNorm, soft caps, the logit scale,
partial RoPE, parallel blocks, their config checks, and export refusing what a family lacks.
(HF parity of each is in tests/test_hf_zoo.py.)"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.config import ConfigError, ModelConfig
from llmjax.hf.family import HFError, choose_family
from llmjax.layers.norms import OffsetRMSNorm
from llmjax.layers.positions import apply_rope, rope, rope_frequencies
from llmjax.models import build_model, init_cache, unstack_layer_params
from tests.hf_helpers import random_params

# Every feature on at once: a Gemma-3-like block with parallel-free sandwich norms.
GEMMA_LIKE = ModelConfig(
    vocab_size=61,
    max_seq_len=32,
    d_model=32,
    n_layers=3,
    n_heads=4,
    n_kv_heads=2,
    head_dim=8,
    d_ff=48,
    mlp="geglu",
    norm="rmsnorm_plus1",
    norm_position="sandwich",
    position="rope",
    rope_theta=5_000.0,
    attention_window=3,
    global_every=2,
    rope_local_theta=50.0,
    qk_norm=True,
    embed_scale=True,
    attn_scale_dim=12.0,
    attn_logit_softcap=5.0,
    final_logit_softcap=4.0,
    use_bias=False,
)
NEOX_LIKE = dataclasses.replace(
    GEMMA_LIKE,
    n_kv_heads=None,
    mlp="gelu_exact",
    norm="layernorm",
    norm_position="pre",
    parallel_block=True,
    rotary_fraction=0.5,
    attention_window=None,
    global_every=None,
    rope_local_theta=None,
    qk_norm=False,
    embed_scale=False,
    attn_scale_dim=None,
    attn_logit_softcap=None,
    final_logit_softcap=None,
    use_bias=True,
)


def _logits(cfg, params, tokens):
    model = build_model(cfg)
    return np.asarray(jax.jit(lambda p, t: model.apply({"params": p}, t).logits)(params, tokens))


def _cached(cfg):
    """Jitted (params, tokens, cache) -> (logits, cache)."""
    model = build_model(cfg)

    def step(p, t, cache):
        out = model.apply({"params": p}, t, cache=cache)
        return out.logits, out.cache

    return jax.jit(step)


def _tokens(length=12, seed=0):
    return np.random.default_rng(seed).integers(0, 61, (2, length)).astype(np.int32)


@pytest.mark.parametrize("cfg", [GEMMA_LIKE, NEOX_LIKE], ids=["gemma-like", "neox-like"])
def test_scan_and_loop_agree(cfg):
    """The scan traces each layer's kind (lax.cond), the unrolled loop knows it: same logits."""
    params = random_params(cfg, seed=1)
    tokens = _tokens()
    want = _logits(cfg, params, tokens)
    assert np.isfinite(want).all()
    loop = dataclasses.replace(cfg, scan_layers=False)
    got = _logits(loop, unstack_layer_params(params, cfg.n_layers), tokens)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.slow  # four compiles per config: ~10 s of CPU
@pytest.mark.parametrize("cfg", [GEMMA_LIKE, NEOX_LIKE], ids=["gemma-like", "neox-like"])
@pytest.mark.parametrize("scan", [True, False], ids=["scan", "loop"])
def test_cache_in_chunks_matches_the_whole_sequence(cfg, scan):
    params = random_params(cfg, seed=1)
    tokens = _tokens()
    want = _logits(cfg, params, tokens)
    c = dataclasses.replace(cfg, scan_layers=scan)
    p = params if scan else unstack_layer_params(params, cfg.n_layers)
    step, cache = _cached(c), init_cache(c, 2, 16)
    first, cache = step(p, tokens[:, :6], cache)
    rest, _ = step(p, tokens[:, 6:], cache)  # same chunk shape: one compile
    np.testing.assert_allclose(np.concatenate([first, rest], axis=1), want, atol=1e-5, rtol=0)


def test_global_layers_see_past_the_window():
    """Two local layers of window 3 see 5 tokens back at most; with the second layer global,
    the last position depends on the first token."""
    local = dataclasses.replace(GEMMA_LIKE, n_layers=2, global_every=None, rope_local_theta=None)
    alternating = dataclasses.replace(local, global_every=2)
    params = random_params(local, seed=2)
    tokens = _tokens()
    changed = tokens.copy()
    changed[:, 0] = (changed[:, 0] + 1) % 61
    for cfg, reaches in ((local, False), (alternating, True)):
        diff = np.abs(_logits(cfg, params, tokens) - _logits(cfg, params, changed))[:, -1].max()
        assert (diff > 1e-4) == reaches, (cfg.global_every, diff)


def test_local_rope_base_is_used_by_local_layers_only():
    params = random_params(GEMMA_LIKE, seed=3)
    tokens = _tokens()
    want = _logits(GEMMA_LIKE, params, tokens)
    same_base = dataclasses.replace(GEMMA_LIKE, rope_local_theta=GEMMA_LIKE.rope_theta)
    assert np.abs(_logits(same_base, params, tokens) - want).max() > 1e-3


def test_offset_rmsnorm_is_x_over_rms_times_one_plus_w():
    x = np.random.default_rng(0).standard_normal((2, 3, 8)).astype(np.float32)
    norm = OffsetRMSNorm(1e-6, jnp.float32, jnp.float32)
    variables = norm.init(jax.random.key(0), x)
    w = np.linspace(-0.5, 0.5, 8, dtype=np.float32)
    got = norm.apply({"params": {"scale": w}}, x)
    want = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6) * (1 + w)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    scale = nn.meta.unbox(variables)["params"]["scale"]
    assert not np.asarray(scale).any()  # a new norm scales by one


def test_final_logit_softcap_bounds_the_logits():
    uncapped = dataclasses.replace(GEMMA_LIKE, final_logit_softcap=None)
    params = random_params(uncapped, seed=4)
    tokens = _tokens()
    raw = _logits(uncapped, params, tokens)
    capped = _logits(GEMMA_LIKE, params, tokens)
    assert np.abs(capped).max() <= 4.0 < np.abs(raw).max()
    np.testing.assert_allclose(capped, 4.0 * np.tanh(raw / 4.0), atol=1e-5, rtol=0)


def test_attn_scale_dim_of_head_dim_is_the_default_scale():
    cfg = dataclasses.replace(GEMMA_LIKE, attn_scale_dim=None)
    params = random_params(cfg, seed=5)
    tokens = _tokens()
    want = _logits(cfg, params, tokens)
    np.testing.assert_array_equal(
        _logits(dataclasses.replace(cfg, attn_scale_dim=8.0), params, tokens), want
    )
    assert np.abs(_logits(GEMMA_LIKE, params, tokens) - want).max() > 1e-3


def test_partial_rope_rotates_the_first_dims_only():
    cfg = ModelConfig(d_model=32, n_heads=2, position="rope", rotary_fraction=0.25)
    assert cfg.rotary_dim == 4
    x = np.random.default_rng(1).standard_normal((1, 5, 2, 16)).astype(np.float32)
    positions = np.arange(5, dtype=np.int32)[None]
    got = np.asarray(rope(x, positions, cfg))
    np.testing.assert_array_equal(got[..., 4:], x[..., 4:])
    inv_freq, _ = rope_frequencies(cfg)
    assert inv_freq.shape == (2,) and inv_freq[1] == pytest.approx(10_000.0**-0.5)
    np.testing.assert_allclose(got[..., :4], apply_rope(x[..., :4], positions, inv_freq))


def test_parallel_block_differs_from_sequential():
    params = random_params(NEOX_LIKE, seed=6)
    tokens = _tokens()
    sequential = dataclasses.replace(NEOX_LIKE, parallel_block=False)
    diff = np.abs(_logits(NEOX_LIKE, params, tokens) - _logits(sequential, params, tokens)).max()
    assert diff > 1e-3


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(global_every=2), "attention_window is unset"),
        (dict(attention_window=4, rope_local_theta=10.0), "set model.global_every"),
        (dict(parallel_block=True, norm_position="post"), "norm_position='pre'"),
        (dict(position="rope", rotary_fraction=0.3), "positive even number"),
        (dict(rotary_fraction=1.5), r"must be in \(0, 1\]"),
        (dict(final_logit_softcap=0.0), "final_logit_softcap must be > 0"),
        (dict(qk_norm_scope="heads"), "valid choices: head, all"),
        (dict(norm_position="middle"), "sandwich, post_branch"),
    ],
)
def test_config_checks_name_the_fix(changes, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**changes)


def test_export_picks_the_family_that_stores_the_features():
    llama = ModelConfig(
        d_model=32, n_heads=4, mlp="swiglu", norm="rmsnorm", position="rope", use_bias=False
    )
    assert choose_family(llama).model_type == "llama"
    assert choose_family(dataclasses.replace(llama, qk_norm=True)).model_type == "qwen3"
    post_branch = dataclasses.replace(
        llama, qk_norm=True, qk_norm_scope="all", norm_position="post_branch"
    )
    assert choose_family(post_branch).model_type == "olmo2"
    assert choose_family(dataclasses.replace(GEMMA_LIKE, rotary_fraction=1.0)).model_type == (
        "gemma3_text"
    )
    assert choose_family(NEOX_LIKE).model_type == "gpt_neox"
    with pytest.raises(HFError, match="embed_scale"):
        choose_family(dataclasses.replace(llama, embed_scale=True))
    with pytest.raises(HFError, match="final_logit_softcap"):
        choose_family(dataclasses.replace(llama, final_logit_softcap=30.0), "llama")
