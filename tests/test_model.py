"""The decoder: shapes and finiteness, causality, layouts, remat, GQA, every switch."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.config import ModelConfig
from llmjax.models import (
    REMAT_POLICIES,
    build_model,
    init_model,
    logical_axes,
    stack_layer_params,
    unstack_layer_params,
)

POSITIONS = ["learned", "sinusoidal", "rope", "alibi", "none"]


def _tokens(cfg: ModelConfig, batch: int = 2, length: int = 16, seed: int = 0) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), (batch, length), 0, cfg.vocab_size)


@functools.cache
def _apply(cfg: ModelConfig):
    model = build_model(cfg)
    return jax.jit(lambda p, t, pos, seg: model.apply({"params": p}, t, pos, seg).logits)


def _logits(cfg, params, tokens, positions=None, segments=None):
    """Jitted forward pass (one compile per config: eager flax is slow to dispatch)."""
    return _apply(cfg)(params, tokens, positions, segments)


VARIANTS = {
    "default": {},
    "rmsnorm-swiglu-rope-gqa": dict(
        norm="rmsnorm",
        mlp="swiglu",
        position="rope",
        n_kv_heads=2,
        use_bias=False,
        tie_embeddings=False,
    ),
    "mqa-alibi": dict(n_kv_heads=1, position="alibi"),
    "post-norm": dict(norm_position="post"),
    "no-residual": dict(residual=False),
    "sinusoidal-untied": dict(position="sinusoidal", tie_embeddings=False),
    "none-pos": dict(position="none"),
    "padded-vocab": dict(vocab_multiple=16),
    "loop": dict(scan_layers=False),
    "reference-attention": dict(attention="reference"),
    "window": dict(attention_window=4),
    "bf16": dict(dtype="bfloat16"),
}


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])
def test_shapes_dtype_finite(tiny_model, name, use_jit):
    cfg = dataclasses.replace(tiny_model, **VARIANTS[name])
    params, _ = init_model(cfg, jax.random.key(0))
    tokens = _tokens(cfg)
    model = build_model(cfg)
    fn = lambda p, t: model.apply({"params": p}, t).logits  # noqa: E731
    logits = (jax.jit(fn) if use_jit else fn)(params, tokens)
    assert logits.shape == (2, 16, cfg.padded_vocab_size)
    assert logits.dtype == jnp.float32
    real = np.asarray(logits[..., : cfg.vocab_size])
    assert np.isfinite(real).all()
    if cfg.padded_vocab_size > cfg.vocab_size:
        # padded rows can never be predicted
        assert (np.asarray(logits[..., cfg.vocab_size :]) < -1e8).all()


def test_batchnorm_trains_and_keeps_running_stats(tiny_model):
    cfg = dataclasses.replace(tiny_model, norm="batchnorm")
    params, state = init_model(cfg, jax.random.key(0))
    assert "batch_stats" in state
    model = build_model(cfg)
    tokens = _tokens(cfg)
    out, updates = jax.jit(
        lambda v, t: model.apply(v, t, deterministic=False, mutable=["batch_stats"])
    )({"params": params, **state}, tokens)
    logits = out.logits
    assert np.isfinite(np.asarray(logits)).all()
    before = jax.tree.leaves(state["batch_stats"])
    after = jax.tree.leaves(updates["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("norm", ["layernorm", "batchnorm"])
def test_causality_via_gradients(tiny_model, position, norm):
    """d logits[:, t] / d embeddings[:, s] is exactly zero for every s > t."""
    cfg = dataclasses.replace(tiny_model, position=position, norm=norm)
    params, state = init_model(cfg, jax.random.key(0))
    model = build_model(cfg)
    tokens = _tokens(cfg, batch=1, length=12)
    zero = {"embeddings": jnp.zeros((1, 12, cfg.d_model))}

    def logit_per_position(perturb):
        variables = {"params": params, **state, "perturbations": perturb}
        return model.apply(variables, tokens).logits[0].sum(-1)  # (T,)

    # jac[t, 0, s, :] = d sum(logits[t]) / d embedding[s]
    jac = np.asarray(jax.jit(jax.jacrev(logit_per_position))(zero)["embeddings"])[:, 0]
    for t in range(12):
        np.testing.assert_array_equal(jac[t, t + 1 :], 0.0)
        assert np.abs(jac[t, : t + 1]).sum() > 0


def test_scan_equals_loop(tiny_model):
    cfg = dataclasses.replace(tiny_model, position="rope", norm="rmsnorm")
    params, _ = init_model(cfg, jax.random.key(1))
    loop_cfg = dataclasses.replace(cfg, scan_layers=False)
    loop_params = unstack_layer_params(params, cfg.n_layers)
    ref_params, _ = init_model(loop_cfg, jax.random.key(1))
    assert jax.tree.structure(loop_params) == jax.tree.structure(ref_params)
    tokens = _tokens(cfg)
    np.testing.assert_allclose(
        _logits(cfg, params, tokens), _logits(loop_cfg, loop_params, tokens), atol=1e-5, rtol=1e-5
    )
    restacked = stack_layer_params(loop_params, cfg.n_layers)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), params, restacked))
    # An unrolled scan keeps the scan's params layout and computes the same thing.
    unrolled = dataclasses.replace(cfg, scan_unroll=cfg.n_layers)
    np.testing.assert_allclose(
        _logits(unrolled, params, tokens), _logits(cfg, params, tokens), atol=1e-5, rtol=1e-5
    )


def test_init_of_unrolled_layers_equals_flax_init_of_the_unrolled_module(tiny_model):
    """init_model keeps the layers' scan rolled (a shorter compile); the params are the bits
    that flax's own init of the configured (unrolled) module gives, under the same options."""
    from llmjax.runtime import RUN_ONCE_COMPILER_OPTIONS

    cfg = dataclasses.replace(tiny_model, scan_unroll=tiny_model.n_layers)
    params, _ = init_model(cfg, jax.random.key(5))
    tokens = jnp.zeros((1, min(cfg.max_seq_len, 8)), jnp.int32)

    def flax_init(key):
        return build_model(cfg).init({"params": key, "dropout": key}, tokens)

    ref = jax.jit(flax_init, compiler_options=RUN_ONCE_COMPILER_OPTIONS)(jax.random.key(5))
    ref = nn.meta.unbox(ref)["params"]
    assert jax.tree.structure(params) == jax.tree.structure(ref)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), params, ref))


@pytest.mark.parametrize("policy", [p for p in REMAT_POLICIES.names() if p != "none"])
@pytest.mark.parametrize("scan", [True, False], ids=["scan", "loop"])
def test_remat_equals_no_remat(tiny_model, policy, scan):
    base = dataclasses.replace(tiny_model, scan_layers=scan, remat="none")
    params, _ = init_model(base, jax.random.key(2))
    tokens = _tokens(base)

    def loss(cfg):
        return lambda p: _logits(cfg, p, tokens).mean()

    remat = dataclasses.replace(base, remat=policy)
    v0, g0 = jax.jit(jax.value_and_grad(loss(base)))(params)
    v1, g1 = jax.jit(jax.value_and_grad(loss(remat)))(params)
    np.testing.assert_allclose(v0, v1, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), g0, g1)


def test_gqa_with_duplicated_kv_heads_equals_mha(tiny_model):
    """A GQA model whose kv projections are copied per group computes exactly MHA."""
    gqa = dataclasses.replace(tiny_model, n_heads=4, n_kv_heads=2, position="rope")
    mha = dataclasses.replace(gqa, n_kv_heads=4)
    params, _ = init_model(gqa, jax.random.key(3))
    mha_params = jax.tree.map(lambda x: x, params)
    attn = dict(mha_params["blocks"]["attention"])
    for name in ("key_kernel", "value_kernel"):
        attn[name] = jnp.repeat(attn[name], 2, axis=2)  # (L, D, K, H) -> (L, D, N, H)
    for name in ("key_bias", "value_bias"):
        if name in attn:
            attn[name] = jnp.repeat(attn[name], 2, axis=1)
    mha_params["blocks"] = {**mha_params["blocks"], "attention": attn}
    tokens = _tokens(gqa)
    np.testing.assert_allclose(
        _logits(gqa, params, tokens), _logits(mha, mha_params, tokens), atol=1e-5, rtol=1e-5
    )


def test_n_kv_heads_equal_n_heads_is_mha(tiny_model):
    explicit = dataclasses.replace(tiny_model, n_kv_heads=tiny_model.n_heads)
    params, _ = init_model(explicit, jax.random.key(4))
    tokens = _tokens(explicit)
    np.testing.assert_array_equal(
        _logits(explicit, params, tokens), _logits(tiny_model, params, tokens)
    )


def test_dropout_is_random_in_training_and_off_in_eval(tiny_model):
    cfg = dataclasses.replace(tiny_model, dropout=0.5)
    params, _ = init_model(cfg, jax.random.key(0))
    model = build_model(cfg)
    tokens = _tokens(cfg)
    train = jax.jit(
        lambda p, t, k: (
            model.apply({"params": p}, t, deterministic=False, rngs={"dropout": k}).logits
        )
    )
    a = train(params, tokens, jax.random.key(1))
    b = train(params, tokens, jax.random.key(2))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(_logits(cfg, params, tokens), _logits(cfg, params, tokens))


def test_packed_segments_equal_separate_sequences(tiny_model):
    """Two documents packed in one row with segment ids give the logits of each alone."""
    cfg = dataclasses.replace(tiny_model, position="rope")
    params, _ = init_model(cfg, jax.random.key(5))
    a, b = _tokens(cfg, 1, 6, seed=1), _tokens(cfg, 1, 10, seed=2)
    packed = jnp.concatenate([a, b], axis=1)
    positions = jnp.concatenate([jnp.arange(6), jnp.arange(10)])[None]
    segments = jnp.concatenate([jnp.zeros(6, int), jnp.ones(10, int)])[None]
    out = _logits(cfg, params, packed, positions, segments)
    np.testing.assert_allclose(out[:, :6], _logits(cfg, params, a), atol=1e-5)
    np.testing.assert_allclose(out[:, 6:], _logits(cfg, params, b), atol=1e-5)


def test_sequence_longer_than_learned_table_is_rejected(tiny_model):
    params, _ = init_model(tiny_model, jax.random.key(0))
    with pytest.raises(ValueError, match="longer than the learned position table"):
        _logits(tiny_model, params, _tokens(tiny_model, length=tiny_model.max_seq_len + 1))


def test_every_param_has_logical_axes(tiny_model):
    for cfg in (
        tiny_model,
        dataclasses.replace(
            tiny_model, mlp="swiglu", tie_embeddings=False, norm="rmsnorm", use_bias=True
        ),
    ):
        params, _ = init_model(cfg, jax.random.key(0))
        axes = logical_axes(cfg)["params"]
        flat_p = jax.tree_util.tree_leaves_with_path(params)
        flat_a = dict(
            jax.tree_util.tree_leaves_with_path(
                axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
            )
        )
        for path, leaf in flat_p:
            spec = flat_a[path]
            assert len(spec) == leaf.ndim, (path, spec, leaf.shape)
            assert any(name is not None for name in spec), path


def test_param_count_matches_gpt2_small():
    from llmjax.config import PRESETS
    from llmjax.models import _init_variables

    cfg = dataclasses.replace(PRESETS["gpt2-small"].model, vocab_multiple=1)
    shapes = jax.eval_shape(lambda k: _init_variables(cfg, k), jax.random.key(0))["params"]
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    assert n == 124_439_808  # GPT-2 small with tied embeddings, as HF counts it


def test_init_model_runs_inside_other_traces(tiny_model):
    """The initializer compiles with its own options when called directly, and inline when an
    enclosing jit or eval_shape traces it (jit refuses nested compiler options)."""
    key = jax.random.key(0)
    params, _ = init_model(tiny_model, key)
    shapes = jax.eval_shape(lambda k: init_model(tiny_model, k)[0], key)
    assert jax.tree.map(lambda x: x.shape, shapes) == jax.tree.map(lambda x: x.shape, params)
    inside = jax.jit(lambda k: init_model(tiny_model, k)[0])(key)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), inside, params
    )
