"""Sharded training: meshes, the rules table, sharded == single device, pmap, checkpoints."""

import dataclasses

import jax
import numpy as np
import pytest

from llmjax import sharding
from llmjax.config import PRESETS, ConfigError, apply_overrides
from llmjax.runs import Checkpointer
from llmjax.sharding import MeshError
from llmjax.train.setup import build_training

STEPS = 3
# 8 heads, d_ff 64 and a vocabulary padded to 64 divide every axis of up to 8 devices. Adam's
# first steps move each weight by about lr * g / (|g| + eps): with the default eps=1e-8 a
# weight whose gradient is ~1e-8 (the key bias's is exactly zero but for rounding) moves by a
# share of lr that depends on its 1e-9 reduction-order noise. eps=1e-6 keeps the comparison
# about sharding; the gradients themselves agree to ~1e-9.
TINY = [
    "model.n_heads=8",
    "optim.eps=1e-6",
    "model.vocab_multiple=8",
    "data.batch_size=8",
    "optim.warmup_steps=0",
    "optim.schedule=constant",
    "train.mfu=false",
]


def _cfg(*overrides: str):
    cfg = apply_overrides(PRESETS["test-tiny"], TINY)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=61))
    return apply_overrides(cfg, list(overrides))


def _batches(cfg, n=STEPS):
    """One random batch, n times: its loss must fall, so the steps really train."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 61, (cfg.data.batch_size, cfg.seq_len + 1)).astype(np.int32)
    return [{"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}] * n


def _train(cfg):
    """(losses, host params, final state) after STEPS steps."""
    training = build_training(cfg)
    state = training.init_state()
    step = training.train_step()
    losses = []
    for batch in _batches(cfg):
        state, metrics = step(state, training.parallel.put(batch, batch["inputs"].shape))
        losses.append(float(metrics["loss"]))
    params = jax.device_get(training.parallel.host_state(state).params)
    return np.asarray(losses), params, state


@pytest.fixture(scope="module")
def single():
    return _train(_cfg())


@pytest.fixture(scope="module")
def mesh_222():
    return _train(_cfg("parallel.mesh=data=2,fsdp=2,tensor=2"))


def _assert_same_training(a, b, tol=1e-5):
    np.testing.assert_allclose(a[0], b[0], atol=tol, rtol=tol)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=tol, rtol=tol), a[1], b[1])


# ----------------------------------------------------------------------------- meshes


def test_parse_mesh_fills_unnamed_axes_and_the_rest():
    assert sharding.parse_mesh("data=2,tensor=4") == {
        "data": 2,
        "fsdp": 1,
        "expert": 1,
        "sequence": 1,
        "tensor": 4,
    }
    shape = sharding.resolve_mesh_shape(sharding.parse_mesh("fsdp=-1,tensor=2"), 8)
    assert shape["fsdp"] == 4 and shape["tensor"] == 2
    mesh = sharding.make_mesh("data=2,fsdp=2,tensor=2")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "expert": 1, "sequence": 1, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize(
    "spec, match",
    [
        ("data=2,fsdp=2", r"has 4 devices but 8 are available"),
        ("data=16", r"has 16 devices but 8 are available"),
        ("model=8", r"AXIS one of data, fsdp, expert, sequence, tensor"),
        ("data=3,fsdp=-1", r"use 3 devices, which does not divide the 8"),
        ("data=two", r"not an integer"),
        ("data=2,data=4", r"given twice"),
    ],
)
def test_bad_meshes_are_rejected_with_the_reason(spec, match):
    with pytest.raises(MeshError, match=match):
        sharding.make_mesh(spec)


def test_mesh_syntax_is_checked_in_the_config():
    with pytest.raises(ConfigError, match="parallel.mesh: .*AXIS=SIZE"):
        _cfg("parallel.mesh=data2")
    with pytest.raises(ConfigError, match="needs parallel.mode=mesh"):
        _cfg("parallel.mode=pmap", "parallel.mesh=data=8")
    assert _cfg("parallel.mesh=data=8").parallel.kind == "mesh"
    assert _cfg().parallel.kind == "none"


def test_rules_table_maps_params_and_activations():
    P = jax.sharding.PartitionSpec
    assert sharding.logical_to_mesh(("layers", "embed", "heads", "head_dim")) == P(
        None, "fsdp", "tensor", None
    )
    assert sharding.logical_to_mesh(("vocab", "embed")) == P("tensor", "fsdp")
    # fsdp (and expert) serve the batch of an activation, so its embed dimension stays whole.
    assert sharding.logical_to_mesh(("batch", "length", "embed")) == P(
        ("data", "fsdp", "expert"), "sequence", None
    )
    assert sharding.logical_to_mesh(("batch", "length", "mlp")) == P(
        ("data", "fsdp", "expert"), "sequence", "tensor"
    )


# ----------------------------------------------------------------------------- equivalence


def test_mesh_2x2x2_matches_single_device(single, mesh_222):
    assert single[0][-1] < single[0][0]  # it trains
    _assert_same_training(single, mesh_222)


def test_params_and_optimizer_state_are_really_sharded(mesh_222):
    state = mesh_222[2]
    q = state.params["blocks"]["attention"]["query_kernel"]  # (layers, D, N, H)
    assert q.shape == (2, 32, 8, 4)
    assert {s.data.shape for s in q.addressable_shards} == {(2, 16, 4, 4)}  # fsdp x tensor
    table = state.params["embed"]["embedding"]  # (V, D): vocab over tensor, embed over fsdp
    assert {s.data.shape for s in table.addressable_shards} == {(32, 16)}
    mu = state.opt_state.inner_state[1][0].mu["blocks"]["attention"]["query_kernel"]
    assert mu.sharding == q.sharding


def _optimizers():
    from llmjax.train.optim import OPTIMIZERS

    return OPTIMIZERS.names()


@pytest.mark.parametrize("optimizer", _optimizers())
def test_optimizer_state_is_sharded_like_its_params(optimizer):
    """Every optimizer's per-param state (moments, momentum) gets its param's logical axes."""
    from flax import linen as nn

    from llmjax.train.state import state_initializer

    training = build_training(_cfg(f"optim.name={optimizer}"))
    init = state_initializer(training.cfg.model, training.tx, boxed=True)
    specs = nn.get_partition_spec(jax.eval_shape(init, jax.random.key(0)))
    by_path = dict(jax.tree_util.tree_leaves_with_path(specs.params, is_leaf=_is_spec))
    mirrored = 0
    for path, spec in jax.tree_util.tree_leaves_with_path(specs.opt_state, is_leaf=_is_spec):
        for start in range(len(path)):
            if tuple(path[start:]) in by_path:
                assert spec == by_path[tuple(path[start:])], jax.tree_util.keystr(path)
                mirrored += 1
                break
    assert mirrored >= len(by_path)  # at least one state leaf per param


def _is_spec(x):
    return isinstance(x, jax.sharding.PartitionSpec)


@pytest.mark.slow
@pytest.mark.parametrize(
    "mesh",
    ["data=8", "fsdp=4,tensor=2", "tensor=8", "fsdp=8", "data=2,sequence=2,tensor=2"],
)
def test_more_meshes_match_single_device(single, mesh):
    _assert_same_training(single, _train(_cfg(f"parallel.mesh={mesh}")))


def test_muon_on_a_mesh_matches_single_device():
    """Muon reads the params' structure by name: the optimizer must see plain arrays."""
    single = _train(_cfg("optim.name=muon"))
    assert single[0][-1] < single[0][0]
    _assert_same_training(single, _train(_cfg("optim.name=muon", "parallel.mesh=fsdp=4,tensor=2")))


def test_pmap_matches_single_device(single):
    _assert_same_training(single, _train(_cfg("parallel.mode=pmap")))


def _remat_cases():
    from llmjax.models import REMAT_POLICIES

    return [
        pytest.param(p, scan, marks=() if (p, scan) == ("full", True) else pytest.mark.slow)
        for p in REMAT_POLICIES.names()
        for scan in (True, False)
    ]


@pytest.mark.parametrize("policy, scan", _remat_cases())
def test_remat_policy_gives_the_same_gradients_sharded(policy, scan):
    """Gradients on a 2x2x2 mesh (params and batch sharded) equal unsharded no-remat ones."""
    from llmjax.models import build_model, init_model, logical_axes
    from llmjax.objectives.losses import cross_entropy

    cfg = _cfg(f"model.scan_layers={scan}")
    params, _ = init_model(cfg.model, jax.random.key(0))
    batch = _batches(cfg, 1)[0]

    def grads_fn(model_cfg):
        model = build_model(model_cfg)

        def loss(p, b):
            return cross_entropy(model.apply({"params": p}, b["inputs"]).logits, b["targets"])[0]

        return jax.jit(jax.grad(loss))

    reference = grads_fn(cfg.model)(params, batch)
    mesh = sharding.make_mesh("data=2,fsdp=2,tensor=2")
    placed = sharding.logical_shardings(logical_axes(cfg.model)["params"], mesh)
    model_cfg = dataclasses.replace(cfg.model, remat=policy)
    with sharding.use_mesh(mesh):
        grads = grads_fn(model_cfg)(
            jax.device_put(params, placed),
            jax.device_put(batch, sharding.batch_sharding(mesh)),
        )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), reference, grads
    )


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_saved_on_one_mesh_restores_on_another(mesh_222, tmp_path):
    state = mesh_222[2]
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        ckpt.save(STEPS, state)
    expected = jax.device_get(state)
    for spec in ("fsdp=4,tensor=2", None):
        cfg = _cfg() if spec is None else _cfg(f"parallel.mesh={spec}")
        target = build_training(cfg).abstract_state()
        with Checkpointer(tmp_path / "ckpt") as ckpt:
            restored, step = ckpt.restore(target)
        assert step == STEPS
        table = restored.params["embed"]["embedding"]
        if spec is None:
            assert len(table.sharding.device_set) == 1
        else:
            assert {s.data.shape for s in table.addressable_shards} == {(32, 8)}
        jax.tree.map(np.testing.assert_array_equal, expected, jax.device_get(restored))


# ----------------------------------------------------------------------------- memory


def test_fsdp_8_keeps_an_eighth_of_params_and_optimizer_state_per_device():
    state = build_training(_cfg("parallel.mesh=fsdp=8")).init_state()
    local, total = sharding.shard_bytes((state.params, state.opt_state))
    assert local <= total / 7, (local, total)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["data.batch_size=6", "parallel.mesh=data=4,tensor=2"], r"batch axis cannot be split"),
        (["model.n_heads=4", "parallel.mesh=tensor=8"], r"heads' dimension \(4\) .*tensor=8"),
        (["model.vocab_multiple=1", "parallel.mesh=data=4,tensor=2"], r"'vocab' dimension \(61\)"),
        (["data.seq_len=30", "parallel.mesh=data=2,sequence=4"], r"length axis .*sequence=4"),
    ],
)
def test_axes_that_do_not_divide_are_named(overrides, match):
    with pytest.raises(MeshError, match=match):
        build_training(_cfg(*overrides))


def test_a_fresh_mesh_run_pads_the_vocabulary_to_fit_the_tensor_axis():
    from llmjax.train.parallel import MeshParallel

    cfg = _cfg("model.vocab_multiple=1", "parallel.mesh=data=4,tensor=2")
    adapted = MeshParallel.adapt_config(cfg)
    assert adapted.model.padded_vocab_size == 128
    assert MeshParallel.adapt_config(_cfg("parallel.mesh=data=8")).model.vocab_multiple == 8
