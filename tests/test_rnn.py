"""The LSTM and GRU families: shapes, causality, cached decoding, packing, padding, the cell
equations against NumPy, sharding, config checks and training through fit."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import llmjax
from llmjax import scaling, sharding
from llmjax.config import PRESETS, ConfigError, apply_overrides
from llmjax.decode import init_cache
from llmjax.models import build_model, family_of, init_model, logical_axes
from llmjax.models.rnn import GRU_CELL, LSTM_CELL, RecurrentLayer, RecurrentState
from llmjax.train.fit import fit
from tests.corpus_utils import write_word_corpus

ARCHS = ["lstm", "gru"]


def _cfg(arch, **fields):
    base = dataclasses.replace(PRESETS["test-tiny"].model, vocab_size=61, d_model=16)
    return dataclasses.replace(base, arch=arch, **fields)


def _tokens(cfg, batch=2, length=12, seed=0):
    return jax.random.randint(jax.random.key(seed), (batch, length), 0, cfg.vocab_size)


@functools.cache
def _model(cfg):
    """(model, params, jitted apply) per config; params sharper than the default init, so
    logits differ well beyond rounding and greedy choices are far from ties."""
    params, _ = init_model(cfg, jax.random.key(0))
    params = jax.tree.map(lambda x: 3.0 * x, params)
    model = build_model(cfg)

    @jax.jit
    def apply(p, tokens, positions=None, segments=None, cache=None):
        return model.apply({"params": p}, tokens, positions, segments, cache=cache)

    return model, params, apply


VARIANTS = {
    "default": {},
    "post-norm-untied-padded": dict(norm_position="post", tie_embeddings=False, vocab_multiple=16),
    "plain-stack-rmsnorm-no-bias": dict(residual=False, norm="rmsnorm", use_bias=False),
}


@pytest.mark.parametrize(
    "variant, use_jit", [("default", False)] + [(v, True) for v in VARIANTS], ids=str
)
@pytest.mark.parametrize("arch", ARCHS)
def test_shapes_dtype_finite(arch, variant, use_jit):
    cfg = _cfg(arch, **VARIANTS[variant])
    params, _ = init_model(cfg, jax.random.key(0))
    model = build_model(cfg)
    fn = lambda p, t: model.apply({"params": p}, t, return_hidden=True)  # noqa: E731
    out = (jax.jit(fn) if use_jit else fn)(params, _tokens(cfg))
    assert out.logits.shape == (2, 12, cfg.padded_vocab_size) and out.logits.dtype == jnp.float32
    assert out.hidden.shape == (2, 12, cfg.d_model) and out.cache is None
    assert np.isfinite(np.asarray(out.logits[..., : cfg.vocab_size])).all()
    assert (np.asarray(out.logits[..., cfg.vocab_size :]) < -1e8).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_causality_via_gradients(arch):
    """d logits[:, t] / d embeddings[:, s] is exactly zero for every s > t, and not for s <= t."""
    cfg = _cfg(arch)
    model, params, _ = _model(cfg)
    tokens = _tokens(cfg, batch=1)
    zero = {"embeddings": jnp.zeros((1, 12, cfg.d_model))}

    def logit_per_position(perturb):
        return model.apply({"params": params, "perturbations": perturb}, tokens).logits[0].sum(-1)

    jac = np.asarray(jax.jit(jax.jacrev(logit_per_position))(zero)["embeddings"])[:, 0]
    for t in range(12):
        np.testing.assert_array_equal(jac[t, t + 1 :], 0.0)
        assert (np.abs(jac[t, : t + 1]).sum(-1) > 0).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_decoding_equals_recomputation(arch):
    """A prefill of 5 tokens, then one token at a time: each step's logits are those of the
    whole sequence run at once; rows of the state taken in another order (beam search's
    reordering) continue as those rows."""
    cfg = _cfg(arch)
    _, params, apply = _model(cfg)
    tokens = _tokens(cfg, batch=3)
    full = apply(params, tokens).logits
    out = apply(params, tokens[:, :5], cache=init_cache(cfg, 3, 12))
    steps = [out.logits]
    for t in range(5, 12):
        out = apply(params, tokens[:, t : t + 1], cache=out.cache)
        steps.append(out.logits)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5, rtol=1e-5)
    assert isinstance(out.cache, RecurrentState) and out.cache.batch_size == 3
    rows, next_Bx1 = jnp.asarray([2, 0, 2]), tokens[:, :1]
    taken = apply(params, next_Bx1[rows], cache=out.cache.take(rows)).logits
    np.testing.assert_allclose(taken, apply(params, next_Bx1, cache=out.cache).logits[rows])


@pytest.mark.parametrize("arch", ARCHS)
def test_packed_segments_equal_separate_rows(arch):
    cfg = _cfg(arch)
    _, params, apply = _model(cfg)
    a, b = _tokens(cfg, 1, 5, seed=1), _tokens(cfg, 1, 7, seed=2)
    segments = jnp.asarray([[3] * 5 + [4] * 7])
    packed = apply(params, jnp.concatenate([a, b], axis=1), None, segments).logits
    np.testing.assert_allclose(packed[:, :5], apply(params, a).logits, atol=1e-5)
    np.testing.assert_allclose(packed[:, 5:], apply(params, b).logits, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_padding_leaves_the_state_unchanged(arch):
    """Padding (negative positions) inside and around a row: the real tokens' logits and the
    final state are those of the row without it, with a cache and without."""
    cfg = _cfg(arch)
    _, params, apply = _model(cfg)
    real = _tokens(cfg, 1, 6, seed=3)
    where = np.array([0, 0, 1, 1, 0, 1, 1, 1, 0, 1, 0, 0], bool)  # 6 real among 12
    padded = jnp.zeros((1, 12), jnp.int32).at[0, np.flatnonzero(where)].set(real[0])
    positions = jnp.where(where, jnp.cumsum(where) - 1, -1)[None]
    alone = apply(params, real, cache=init_cache(cfg, 1, 6))
    for cache in (None, init_cache(cfg, 1, 12)):
        out = apply(params, padded, positions, cache=cache)
        np.testing.assert_allclose(out.logits[:, where], alone.logits, atol=1e-5)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), out.cache, alone.cache)


@pytest.mark.parametrize("arch", ARCHS)
def test_generate_greedy_is_the_argmax_of_recomputation(arch):
    """Greedy decoding of left-padded prompts with the recurrent state picks, at every step,
    the argmax of the whole sequence run again."""
    cfg = _cfg(arch)
    model, params, apply = _model(cfg)
    prompts = [[5, 9, 2], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [8, 8, 1]]
    kw = dict(params=params, max_new_tokens=5, temperature=0.0)
    cached = llmjax.generate(model, prompts, **kw)
    for prompt, completion in zip(prompts, cached, strict=True):
        seq = prompt + completion.tokens.tolist()
        logits = apply(params, jnp.asarray([seq])).logits[0, len(prompt) - 1 : -1]
        assert completion.tokens.tolist() == np.argmax(logits[:, : cfg.vocab_size], -1).tolist()


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _numpy_steps(cell_name, p, x_TxD):
    """The gate equations (PyTorch's) step by step, in float64."""
    w_ih, w_hh = (np.asarray(p[k], np.float64) for k in ("input_kernel", "recurrent_kernel"))
    b_ih = np.asarray(p["input_bias"], np.float64)
    D = w_hh.shape[0]
    h, c, hs = np.zeros(D), np.zeros(D), []
    for x in x_TxD:
        gx, gh = x @ w_ih + b_ih, h @ w_hh
        if cell_name == "lstm":
            i, f, g, o = np.split(gx + gh, 4)
            c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
            h = _sigmoid(o) * np.tanh(c)
        else:
            xr, xz, xn = np.split(gx, 3)
            hr, hz, hn = np.split(gh + np.asarray(p["recurrent_bias"], np.float64), 3)
            r, z = _sigmoid(xr + hr), _sigmoid(xz + hz)
            n = np.tanh(xn + r * hn)
            h = (1 - z) * n + z * h
        hs.append(h)
    return np.stack(hs), h, c


@pytest.mark.parametrize("cell", [LSTM_CELL, GRU_CELL], ids=ARCHS)
def test_cell_matches_numpy_gate_equations(cell):
    cfg = _cfg(cell.name, d_model=4)
    layer = RecurrentLayer(cfg, cell)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(1, 3, 4)), jnp.float32)
    carry = tuple(jnp.zeros((1, 4)) for _ in range(cell.carries))
    ones = jnp.ones((1, 3), bool)
    args = (x, carry, ~ones, ones)
    params = nn.meta.unbox(layer.init(jax.random.key(0), *args)["params"])
    # Random biases too (the LSTM's start at 1 for the forget gate, the GRU's at 0).
    params = jax.tree.map(lambda v: jnp.asarray(rng.normal(size=v.shape), jnp.float32), params)
    h_BxTxD, new = layer.apply({"params": params}, *args)
    hs, h, c = _numpy_steps(cell.name, params, np.asarray(x[0], np.float64))
    np.testing.assert_allclose(h_BxTxD[0], hs, atol=1e-6)
    np.testing.assert_allclose(new[0][0], h, atol=1e-6)
    if cell.name == "lstm":
        np.testing.assert_allclose(new[1][0], c, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_flop_count_is_the_cells_and_the_head(arch):
    cfg = _cfg(arch, tie_embeddings=False)
    params, _ = init_model(cfg, jax.random.key(0))
    kernels = sum(x.size for path, x in jax.tree_util.tree_leaves_with_path(params)
                  if "kernel" in jax.tree_util.keystr(path))  # fmt: skip
    gates = {"lstm": 4, "gru": 3}[arch]
    D = cfg.d_model
    assert scaling.matmul_params(cfg) == kernels == 2 * 2 * gates * D * D + 61 * D
    assert scaling.train_flops_per_token(cfg, 4096) == 6.0 * kernels
    assert scaling.attention_flops_per_token(cfg, 128) == 0.0
    limits = family_of(cfg).decoding_limits(cfg)
    assert limits.window is None and limits.extrapolates


def test_every_param_has_logical_axes():
    cfg = _cfg("gru", tie_embeddings=False)
    params, _ = init_model(cfg, jax.random.key(0))
    axes = logical_axes(cfg)["params"]
    specs = dict(jax.tree_util.tree_leaves_with_path(
        axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)))  # fmt: skip
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        assert len(specs[path]) == leaf.ndim and any(specs[path]), path


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("attention", "reference", r"model\.attention='reference' does not apply.*'auto'"),
        ("attention_window", 4, r"model\.attention_window=4 does not apply.*unset"),
        ("position", "rope", r"model\.position='rope' does not apply.*model\.position=none"),
        ("remat", "full", r"model\.remat='full' does not apply.*model\.remat=none"),
        ("norm", "nonesuch", r"model\.norm='nonesuch' is not known"),
    ],
)
def test_config_fields_a_recurrence_cannot_serve_are_rejected(field, value, match):
    with pytest.raises(ConfigError, match=match):
        build_model(_cfg("lstm", **{field: value}))


def test_rolling_cache_is_refused():
    with pytest.raises(ValueError, match="rolling=False"):
        init_cache(_cfg("gru"), 1, 8, rolling=True)


@pytest.mark.parametrize("preset", ["test-tiny", "nano", "llama-tiny"])
def test_arch_override_builds_on_presets(preset):
    cfg = apply_overrides(PRESETS[preset], ["model.arch=lstm", "model.position=none"])
    assert type(build_model(cfg.model)).__name__ == "LSTM"


def test_gradients_on_a_mesh_equal_one_devices():
    """Params split by their logical axes over a data x fsdp x tensor mesh of 8 CPU devices,
    a batch split over data x fsdp: the loss gradients are one device's."""
    cfg = _cfg("lstm", d_model=32, vocab_multiple=8)
    model, params, _ = _model(cfg)
    tokens = _tokens(cfg, batch=8)

    def loss(p, tokens):
        logits = model.apply({"params": p}, tokens[:, :-1]).logits
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1).mean()

    grad = jax.jit(jax.grad(loss))
    single = grad(params, tokens)
    mesh = sharding.make_mesh("data=2,fsdp=2,tensor=2")
    with sharding.use_mesh(mesh):
        placed = jax.device_put(
            params, sharding.logical_shardings(logical_axes(cfg)["params"], mesh)
        )
        split = grad(placed, jax.device_put(tokens, sharding.batch_sharding(mesh)))
    assert placed["blocks_0"]["input_kernel"].sharding.spec == jax.P("fsdp", "tensor")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), single, split)


@pytest.mark.parametrize("arch", ARCHS)
def test_two_steps_of_fit(arch, tmp_path):
    corpus = write_word_corpus(tmp_path / "corpus.txt", lines=200)
    cfg = apply_overrides(
        PRESETS["test-tiny"],
        [f"model.arch={arch}", f"data.path={corpus}", "train.steps=2", "train.eval_every=2",
         "train.log_every=1", "train.eval_batches=1", "train.checkpoint_every=2"],
    )  # fmt: skip
    result = fit(cfg, tmp_path / "run", progress=False)
    assert int(result.state.step) == 2 and np.isfinite(result.final_eval["loss"])
    assert llmjax.load_run(tmp_path / "run").config.model.arch == arch
