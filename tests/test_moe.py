"""Mixture-of-experts MLP: one expert is the dense MLP, dropless dispatch equals a per-token
loop (forward and gradients) for every router and kernel, the balance and z-losses equal their
formulas, the losses reach the training gradient, expert-sharded == one device, cached decoding
== recomputation, active-parameter FLOPs, config errors, routing metrics in the train log."""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax import scaling
from llmjax.config import PRESETS, ConfigError, MoEConfig, apply_overrides
from llmjax.decode import init_cache
from llmjax.layers.grouped import GROUPED
from llmjax.layers.moe import (
    ROUTERS,
    ROUTING_METRICS,
    MoEMLP,
    load_balancing_loss,
    router_z_loss,
)
from llmjax.models import build_model
from llmjax.train.step import make_gradient_fn
from tests.corpus_utils import write_word_corpus
from tests.decode_utils import random_params
from tests.kernel_utils import needs_kernel

TOL = dict(atol=1e-5, rtol=1e-5)


def _moe_cfg(tiny_model, **moe):
    return dataclasses.replace(tiny_model, moe=MoEConfig(**{"n_experts": 4, **moe}))


def _tokens(cfg, shape=(2, 12), seed=1):
    return jax.random.randint(jax.random.key(seed), shape, 0, cfg.vocab_size)


# ----------------------------------------------------------------------------- dense parity


@pytest.mark.parametrize("mlp, bias", [("gelu", True), ("swiglu", False)])
def test_one_expert_top1_is_the_dense_mlp(tiny_model, mlp, bias):
    dense_cfg = dataclasses.replace(tiny_model, mlp=mlp, use_bias=bias, scan_layers=False)
    moe_cfg = dataclasses.replace(dense_cfg, moe=MoEConfig(n_experts=1, top_k=1))
    dense = random_params(dense_cfg)
    params = random_params(moe_cfg)  # the router's value is irrelevant: one expert, gate 1
    for i in range(dense_cfg.n_layers):
        block = dict(dense[f"blocks_{i}"])
        experts = {"router": params[f"blocks_{i}"]["mlp"]["router"]}
        for name, linear in block["mlp"].items():
            experts[name] = linear["kernel"][None]
            if "bias" in linear:
                experts[f"{name}_bias"] = linear["bias"][None]
        block["mlp"] = experts
        params[f"blocks_{i}"] = block
    params = {**dense, **{k: v for k, v in params.items() if k.startswith("blocks_")}}
    tokens = _tokens(dense_cfg)
    want = build_model(dense_cfg).apply({"params": dense}, tokens).logits
    out = build_model(moe_cfg).apply({"params": params}, tokens)
    np.testing.assert_allclose(out.logits, want, **TOL)
    np.testing.assert_allclose(out.aux["moe_load"], 1.0)
    np.testing.assert_allclose(out.aux["metrics"]["moe_aux_loss"], 1.0, rtol=1e-6)


# ----------------------------------------------------------------------------- dropless dispatch


def _reference(cfg, params, x_BxTxD):
    """The MoE MLP token by token (vmapped over tokens): route, then sum gate * expert MLP
    over the chosen experts, each expert's weights read by index."""
    moe = cfg.moe

    def token(x):
        logits = x @ params["router"]
        scores = jax.nn.softmax(logits) if moe.router == "softmax" else jax.nn.sigmoid(logits)
        chosen = jnp.argsort(-scores, stable=True)[: moe.top_k]
        gates = scores[chosen]
        if moe.renormalize:
            gates = gates / gates.sum()
        y = 0.0
        for j in range(moe.top_k):
            e = chosen[j]
            h = jax.nn.gelu(x @ params["fc_in"][e] + params["fc_in_bias"][e], approximate=True)
            y = y + gates[j] * (h @ params["fc_out"][e] + params["fc_out_bias"][e])
        return y

    return jax.vmap(token)(x_BxTxD.reshape(-1, cfg.d_model)).reshape(x_BxTxD.shape)


@pytest.mark.parametrize(
    "kernel, router, zero_router",
    [(k, r, False) for k in sorted(GROUPED.names()) for r in sorted(ROUTERS.names())]
    + [(k, "softmax", True) for k in ("blocks", "cpu")],  # a zero router: all to experts 0, 1
)
@needs_kernel
def test_dropless_dispatch_equals_a_per_token_loop(tiny_model, kernel, router, zero_router):
    # block_size 3 with uneven loads: groups padded to blocks, and (zero router) empty groups.
    cfg = _moe_cfg(tiny_model, top_k=2, router=router, kernel=kernel, block_size=3)
    layer = MoEMLP(cfg)
    x = jax.random.normal(jax.random.key(0), (2, 5, cfg.d_model))
    params = jax.tree.map(
        lambda p: 0.3 * jax.random.normal(jax.random.key(p.size), p.shape),
        nn.meta.unbox(layer.init(jax.random.key(1), x)["params"]),
    )
    if zero_router:
        params["router"] = jnp.zeros_like(params["router"])

    def value_and_grads(fn):
        loss = lambda p, x: jnp.sum(jnp.sin(fn(p, x)))  # noqa: E731
        return jax.jit(lambda p, x: (fn(p, x), jax.grad(loss, argnums=(0, 1))(p, x)))

    got = value_and_grads(lambda p, x: layer.apply({"params": p}, x)[0])(params, x)
    want = value_and_grads(lambda p, x: _reference(cfg, p, x))(params, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), got, want)


# ----------------------------------------------------------------------------- auxiliary losses


def test_balance_loss_equals_its_formula_on_a_hand_made_routing():
    probs_NxE = jnp.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.5, 0.1, 0.4]])
    experts_NxK = jnp.array([[0, 1], [0, 1], [1, 0], [0, 2]])
    # f = counts / (N k) = [4, 3, 1] / 8; P = column means; E * sum f P.
    f = np.array([4, 3, 1]) / 8
    P = np.asarray(probs_NxE).mean(0)
    np.testing.assert_allclose(load_balancing_loss(probs_NxE, experts_NxK), 3 * (f * P).sum())
    # Gradients flow through P only: d/dp_ne = E f_e / N.
    grad = jax.grad(load_balancing_loss)(probs_NxE, experts_NxK)
    np.testing.assert_allclose(grad, np.broadcast_to(3 * f / 4, (4, 3)), rtol=1e-6)
    # Uniform routing gives 1; everything on one expert with probability 1 gives E.
    uniform = jnp.full((6, 3), 1 / 3)
    balanced = jnp.arange(6)[:, None] % 3
    np.testing.assert_allclose(load_balancing_loss(uniform, balanced), 1.0, rtol=1e-6)
    one = jnp.zeros((6, 3)).at[:, 0].set(1.0)
    np.testing.assert_allclose(load_balancing_loss(one, jnp.zeros((6, 1), jnp.int32)), 3.0,
                               rtol=1e-6)  # fmt: skip


def test_router_z_loss_equals_its_formula():
    logits = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    lse = np.log(np.exp([1.0, 2.0, 3.0]).sum()), np.log(3.0)
    np.testing.assert_allclose(router_z_loss(logits), np.mean(np.square(lse)), rtol=1e-6)


@pytest.mark.slow  # compiles three gradient programs (~20 s of CPU here)
def test_auxiliary_losses_reach_the_training_gradient(tiny_model):
    """grads(coefs) - grads(no coefs) == grad of aux["loss"]: the step adds exactly it."""
    base = _moe_cfg(tiny_model, aux_loss_coef=0.0, z_loss_coef=0.0)
    cfg = dataclasses.replace(base, moe=dataclasses.replace(base.moe, aux_loss_coef=0.5,
                                                            z_loss_coef=0.1))  # fmt: skip
    params = random_params(cfg)
    tokens = _tokens(cfg, (2, 9))
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
    denominator = jnp.asarray(batch["targets"].size, jnp.float32)

    def grads(c):
        fn = make_gradient_fn(build_model(c))
        return fn(params, {}, batch, jax.random.key(0), denominator, None)

    with_aux, metrics, _ = grads(cfg)
    without, _, _ = grads(base)
    model = build_model(cfg)
    aux = lambda p: model.apply({"params": p}, batch["inputs"]).aux["loss"]  # noqa: E731
    want = jax.grad(aux)(params)
    jax.tree.map(lambda a, b, c: np.testing.assert_allclose(a - b, c, atol=1e-6), with_aux,
                 without, want)  # fmt: skip
    assert set(ROUTING_METRICS) <= set(metrics)
    assert float(metrics["moe_aux_loss"]) > 0


# ----------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    "scan, kernel",
    [(True, "blocks"), (False, "blocks"), pytest.param(True, "cpu", marks=needs_kernel)],
)
def test_cached_decoding_equals_recomputation(tiny_model, scan, kernel):
    # The loop layout mixes a dense layer 0 with an MoE layer 1 (first_dense=1).
    base = dataclasses.replace(tiny_model, scan_layers=scan, position="rope")
    cfg = _moe_cfg(base, n_shared_experts=1, first_dense=0 if scan else 1, kernel=kernel)
    model, params = build_model(cfg), random_params(cfg)
    T, P = 10, 4
    tokens = _tokens(cfg, (2, T))

    @jax.jit
    def run(params, tokens):
        full = model.apply({"params": params}, tokens).logits
        prefill = model.apply({"params": params}, tokens[:, :P], cache=init_cache(cfg, 2, T))

        def step(cache, token_B):
            out = model.apply({"params": params}, token_B[:, None], cache=cache)
            return out.cache, out.logits[:, 0]

        _, steps = jax.lax.scan(step, prefill.cache, tokens[:, P:].T)
        return full, prefill.logits, jnp.moveaxis(steps, 0, 1)

    full, prefill, steps = run(params, tokens)
    np.testing.assert_allclose(prefill, full[:, :P], **TOL)
    np.testing.assert_allclose(steps, full[:, P:], **TOL)


# ----------------------------------------------------------------------------- accounting


def test_flops_count_active_parameters():
    dense, moe = PRESETS["nano"].model, PRESETS["nano-moe"].model
    # 8 experts of width 256, top-2: nano's 512-wide MLP active, plus the 128 x 8 router.
    router = moe.n_layers * moe.d_model * moe.moe.n_experts
    assert scaling.matmul_params(moe) == scaling.matmul_params(dense) + router
    expert_weights = 8 * 2 * moe.d_model * 256
    dense_mlp = 2 * dense.d_model * dense.ffn_dim
    extra = moe.n_layers * (expert_weights + moe.d_model * 8 - dense_mlp)
    assert scaling.param_counts(moe).total == scaling.param_counts(dense).total + extra


def test_shared_gate_scales_the_shared_mlp_per_token(tiny_model):
    """With a zero gate vector every token's shared output is scaled by sigmoid(0) = 1/2: the
    layer equals the ungated layer with the shared MLP's down projection halved. d_shared sets
    the shared MLP's width and the FLOP count follows it."""
    cfg = dataclasses.replace(tiny_model, mlp="swiglu", use_bias=False, scan_layers=False)
    gated = _moe_cfg(cfg, n_shared_experts=1, d_shared=24, shared_gate=True)
    plain = _moe_cfg(cfg, n_shared_experts=1, d_shared=24)
    params = random_params(gated)
    halved = dict(params)  # the same embeddings; its blocks are set below
    for i in range(cfg.n_layers):
        mlp = dict(params[f"blocks_{i}"]["mlp"])
        assert mlp["shared"]["up"]["kernel"].shape == (cfg.d_model, 24)
        mlp["shared_gate"] = jnp.zeros_like(mlp.pop("shared_gate"))
        params[f"blocks_{i}"] = {**params[f"blocks_{i}"], "mlp": mlp}
        shared = dict(mlp["shared"])
        shared["down"] = {"kernel": shared["down"]["kernel"] / 2}
        plain_mlp = {k: v for k, v in mlp.items() if k != "shared_gate"}
        halved[f"blocks_{i}"] = {**params[f"blocks_{i}"], "mlp": {**plain_mlp, "shared": shared}}
    tokens = _tokens(cfg)
    got = build_model(gated).apply({"params": params}, tokens).logits
    want = build_model(plain).apply({"params": halved}, tokens).logits
    np.testing.assert_allclose(got, want, **TOL)
    per_layer = scaling.matmul_params(gated) - scaling.matmul_params(plain)
    assert per_layer == cfg.n_layers * cfg.d_model  # the gate vector
    wider = _moe_cfg(cfg, n_shared_experts=1, d_shared=48)
    assert scaling.matmul_params(wider) - scaling.matmul_params(plain) == (
        cfg.n_layers * 3 * cfg.d_model * 24
    )


def test_config_errors_name_the_fix(tiny_model):
    with pytest.raises(ConfigError, match="scan_layers=false"):
        dataclasses.replace(tiny_model, moe=MoEConfig(n_experts=4, every=2))
    with pytest.raises(ConfigError, match="top_k=5 is more than n_experts=4"):
        MoEConfig(n_experts=4, top_k=5)
    with pytest.raises(ConfigError, match="n_shared_experts is 0; set n_shared_experts=1"):
        MoEConfig(n_experts=4, shared_gate=True)
    with pytest.raises(ConfigError, match="d_shared"):
        MoEConfig(n_experts=4, n_shared_experts=1, d_shared=0)
    with pytest.raises(ConfigError, match="model.moe.router='tanh' is not known"):
        build_model(_moe_cfg(tiny_model, router="tanh"))


def test_export_to_hugging_face_is_refused_by_name():
    from llmjax.hf.family import HFError, choose_family

    with pytest.raises(HFError, match="GPT-2 has dense MLPs only.*n_experts=8"):
        choose_family(PRESETS["nano-moe"].model)


# ----------------------------------------------------------------------------- training


@pytest.mark.slow  # a 4-step fit: compiles the train and eval steps
def test_routing_metrics_are_logged(tmp_path):
    from llmjax.train.fit import fit

    path = write_word_corpus(tmp_path / "corpus.txt", lines=200)
    cfg = apply_overrides(
        PRESETS["test-moe-tiny"],
        [f"data.path={path}", "train.steps=4", "train.log_every=2", "train.eval_every=4",
         "train.checkpoint_every=4", "train.mfu=false"],
    )  # fmt: skip
    fit(cfg, tmp_path / "run", progress=False)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert len(train) == 2
    for r in train:
        assert r["moe_aux_loss"] > 0 and r["moe_z_loss"] > 0
        assert r["moe_load_cv"] >= 0 and 1.0 <= r["moe_load_max"] <= 4.0


@pytest.mark.slow  # compiles the train step twice, for 1 and 8 devices (~30 s here)
def test_expert_sharded_training_equals_one_device():
    from tests.test_sharding import TINY, _batches

    def train(*overrides):
        from llmjax.train.setup import build_training

        cfg = apply_overrides(PRESETS["test-moe-tiny"], [*TINY, "model.moe.n_experts=8",
                                                         *overrides])  # fmt: skip
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=61))
        training = build_training(cfg)
        state, step = training.init_state(), training.train_step()
        losses = []
        for batch in _batches(cfg):
            state, metrics = step(state, training.parallel.put(batch, batch["inputs"].shape))
            losses.append(float(metrics["loss"]))
        params = jax.device_get(training.parallel.host_state(state).params)
        return (np.asarray(losses), params), state

    (losses, params), _ = train()
    (sharded_losses, sharded_params), state = train("parallel.mesh=expert=8")
    np.testing.assert_allclose(sharded_losses, losses, **TOL)
    assert losses[-1] < losses[0]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), sharded_params, params)
    kernel = state.params["blocks"]["mlp"]["fc_in"]
    assert kernel.sharding.spec[1] == "expert"  # [layers, expert, embed, mlp]
    assert {s.data.shape[1] for s in kernel.addressable_shards} == {1}
