"""LoRA: adapters with B = 0 are the base, merging keeps the function, training moves the
adapters alone (the base bit for bit unchanged, optimizer state for adapters only), targets
and ranks are checked, and adapters shard as their base weights."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.config import PRESETS, ConfigError, apply_overrides
from llmjax.models import build_model, init_model, logical_axes
from llmjax.models.lora import (
    adapter_count,
    eligible_kernels,
    lora_targets,
    merge_adapters,
    split_adapters,
    with_fresh_adapters,
    without_lora,
)
from llmjax.train.fit import fit
from llmjax.train.trainer import Trainer

TOKENS = (jnp.arange(24).reshape(2, 12) * 7) % 250


def _cfg(*overrides):
    return apply_overrides(PRESETS["test-tiny"], ["model.lora.rank=4", *overrides])


def _perturbed(params, seed=1):
    """Adapters with B != 0 (trained ones), so that they change the function."""
    key = jax.random.key(seed)

    def move(path, x):
        return x + 0.1 * jax.random.normal(key, x.shape) if "lora_b" in str(path) else x

    return jax.tree_util.tree_map_with_path(move, params)


def _logits(model_cfg, params):
    return build_model(model_cfg).apply({"params": params}, TOKENS).logits


def test_new_adapters_compute_what_the_base_computes():
    cfg = _cfg().model
    params, _ = init_model(cfg, jax.random.key(0))
    base, adapters = split_adapters(params)
    assert adapter_count(params) > 0 and all(
        not np.any(np.asarray(b)) for p, b in _items(adapters) if p.endswith("lora_b")
    )
    np.testing.assert_array_equal(_logits(cfg, params), _logits(without_lora(cfg), base))


def _items(tree):
    from llmjax.train.frozen import param_path

    return [(param_path(p), x) for p, x in jax.tree_util.tree_leaves_with_path(tree)]


@pytest.mark.parametrize(
    "overrides",
    [
        (),
        ("model.scan_layers=false",),
        ("model.mlp=swiglu", "model.n_kv_heads=2", "model.position=rope", "model.use_bias=false"),
        ("model.lora.targets=query|value",),
    ],
    ids=["scanned", "unscanned", "llama-like", "query-value"],
)
def test_merged_adapters_give_the_unmerged_logits(overrides):
    cfg = _cfg(*overrides).model
    params = _perturbed(init_model(cfg, jax.random.key(0))[0])
    merged, merged_cfg = merge_adapters(params, cfg)
    assert merged_cfg.lora.rank == 0 and adapter_count(merged) == 0
    unmerged = _logits(cfg, params)
    fresh = _logits(cfg, init_model(cfg, jax.random.key(0))[0])
    assert float(jnp.abs(unmerged - fresh).max()) > 1e-3
    np.testing.assert_allclose(_logits(merged_cfg, merged), unmerged, atol=1e-5, rtol=0)


def test_targets_are_chosen_by_name_pattern():
    names = {t.path for t in lora_targets(_cfg("model.lora.targets=query|value").model)}
    assert names == {"blocks/attention/query_kernel", "blocks/attention/value_kernel"}
    names = {t.path for t in lora_targets(_cfg("model.lora.targets=mlp/").model)}
    assert names == {"blocks/mlp/fc_in/kernel", "blocks/mlp/fc_out/kernel"}
    one = _cfg("model.scan_layers=false", "model.lora.targets=blocks_1/attention/query").model
    assert [t.path for t in lora_targets(one)] == ["blocks_1/attention/query_kernel"]
    params, _ = init_model(one, jax.random.key(0))
    assert {p for p, _ in _items(params) if "lora" in p} == {
        "blocks_1/attention/query_lora_a",
        "blocks_1/attention/query_lora_b",
    }


def test_bad_targets_and_ranks_are_refused_with_the_weight_names():
    with pytest.raises(ConfigError, match="matches no weight") as e:
        build_model(_cfg("model.lora.targets=qkv_proj").model)
    for t in eligible_kernels(PRESETS["test-tiny"].model):
        assert t.path in str(e.value)
    with pytest.raises(ConfigError, match=r"rank <= 32"):
        build_model(_cfg("model.lora.rank=33").model)
    with pytest.raises(ConfigError, match="model.lora.rank must be an integer >= 1"):
        _cfg("model.lora.rank=-2")
    with pytest.raises(ConfigError, match="model.lora.alpha must be > 0"):
        _cfg("model.lora.alpha=0")
    with pytest.raises(ConfigError, match="model.lora.dropout must be in"):
        _cfg("model.lora.dropout=1.0")
    with pytest.raises(ConfigError, match="not a regular expression"):
        _cfg("model.lora.targets=(")


def test_adapters_follow_their_base_weights_logical_axes():
    axes = logical_axes(_cfg().model)["params"]["blocks"]
    attn, mlp = axes["attention"], axes["mlp"]["fc_in"]
    assert tuple(attn["query_lora_a"]) == (*tuple(attn["query_kernel"])[:2], None)
    layers = tuple(attn["query_kernel"])[0]
    assert tuple(attn["query_lora_b"]) == (layers, None, "heads", "head_dim")
    assert tuple(attn["out_lora_a"]) == (*tuple(attn["out_kernel"])[:3], None)
    assert tuple(mlp["lora_b"]) == (tuple(mlp["kernel"])[0], None, "mlp")


def test_training_moves_only_the_adapters_and_only_they_have_optimizer_state():
    cfg = _cfg("train.steps=3", "optim.warmup_steps=0", "optim.lr=0.05")
    trainer = Trainer(cfg)
    state = trainer.init_state()
    before = jax.device_get(state.params)
    rng = np.random.default_rng(0)
    batches = [
        {
            "inputs": rng.integers(0, 250, (4, 32), dtype=np.int32),
            "targets": rng.integers(0, 250, (4, 32), dtype=np.int32),
        }
        for _ in range(3)
    ]
    state, _ = trainer.train(batches, state=state)
    after = jax.device_get(state.params)
    for (path, x), (_, y) in zip(_items(before), _items(after), strict=True):
        if "lora" in path:
            if path.endswith("lora_b"):
                assert np.abs(y).max() > 0, path
        else:
            assert np.asarray(x).tobytes() == np.asarray(y).tobytes(), path
    opt_values = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.opt_state) if x.ndim)
    assert opt_values == 2 * adapter_count(after)  # Adam's two moments, adapters alone


def test_lora_on_a_mesh_matches_one_device():
    def run(mesh):
        cfg = _cfg(
            "train.steps=2",
            "optim.warmup_steps=0",
            "optim.lr=0.05",
            "data.batch_size=8",
            "model.vocab_multiple=8",
        )
        if mesh:
            cfg = apply_overrides(cfg, [f"parallel.mesh={mesh}"])
        trainer = Trainer(cfg)
        rng = np.random.default_rng(0)
        batches = [
            {"inputs": (x := rng.integers(0, 250, (8, 32), dtype=np.int32)), "targets": x}
            for _ in range(2)
        ]
        state, metrics = trainer.train(batches)
        return trainer, state, metrics

    _, one, m1 = run(None)
    trainer, sharded, m2 = run("data=2,fsdp=2,tensor=2")
    a = sharded.params["blocks"]["attention"]
    kernel_spec = a["query_kernel"].sharding.spec
    assert a["query_lora_a"].sharding.spec[:2] == kernel_spec[:2]
    assert a["query_lora_b"].sharding.spec[2:] == kernel_spec[2:]
    np.testing.assert_allclose(m1[-1]["loss"], m2[-1]["loss"], rtol=1e-5)
    for x, y in zip(jax.tree.leaves(one.params), jax.tree.leaves(sharded.params), strict=True):
        # Adam divides by the root of tiny second moments, so reduction-order differences of
        # the sharded sums grow to ~1e-5 of the lr in two steps.
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=2e-4)


def test_init_from_a_base_starts_with_fresh_adapters_and_resumes_exactly(tmp_path):
    base_cfg = apply_overrides(PRESETS["test-tiny"], ["train.steps=2"])
    base = fit(base_cfg, tmp_path / "base", progress=False)
    cfg = apply_overrides(
        base_cfg,
        [
            f"train.init_from={tmp_path / 'base'}",
            "model.lora.rank=4",
            "model.lora.dropout=0.1",
            "train.steps=6",
            "train.checkpoint_every=3",
            "optim.lr=0.01",
        ],
    )
    whole = fit(cfg, tmp_path / "whole", progress=False)
    fit(cfg, tmp_path / "split", progress=False, stop_after=3)
    resumed = fit(cfg, tmp_path / "split", resume=True, progress=False).state.params
    whole_leaves, resumed_leaves = jax.tree.leaves(whole.state.params), jax.tree.leaves(resumed)
    for x, y in zip(whole_leaves, resumed_leaves, strict=True):
        assert np.array_equal(x, y)
    tuned_base, _ = split_adapters(whole.state.params)
    for x, y in zip(jax.tree.leaves(base.state.params), jax.tree.leaves(tuned_base), strict=True):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
    # A full fine-tune from the LoRA run starts from the merged weights.
    full_cfg = dataclasses.replace(
        base_cfg,
        train=dataclasses.replace(base_cfg.train, init_from=str(tmp_path / "whole"), steps=1),
    )
    trainer = Trainer(full_cfg)
    from llmjax.runs import open_source, restore_params

    target = trainer.parallel.abstract_state()
    params, _, _ = restore_params(
        open_source(tmp_path / "whole"), full_cfg.model, target.params, target.model_state
    )
    merged, _ = merge_adapters(jax.device_get(whole.state.params), whole.config.model)
    for x, y in zip(jax.tree.leaves(merged), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)


def test_fresh_adapters_on_params_in_memory_keep_the_base_function():
    cfg = _cfg().model
    base, _ = split_adapters(init_model(cfg, jax.random.key(0))[0])
    tuned = with_fresh_adapters(base, cfg, seed=3)
    assert with_fresh_adapters(base, without_lora(cfg), seed=3) is base
    assert adapter_count(tuned) == adapter_count(init_model(cfg, jax.random.key(0))[0])
    np.testing.assert_array_equal(_logits(cfg, tuned), _logits(without_lora(cfg), base))
    a = lambda p: np.asarray(p["blocks"]["attention"]["query_lora_a"])  # noqa: E731
    assert not np.array_equal(a(tuned), a(with_fresh_adapters(base, cfg, seed=4)))
    np.testing.assert_array_equal(a(tuned), a(with_fresh_adapters(base, cfg, seed=3)))
    with pytest.raises(ConfigError, match="already hold LoRA adapters"):
        with_fresh_adapters(tuned, cfg, seed=0)


def test_state_memory_counts_the_trained_params_and_their_optimizer_state():
    from llmjax.train.bench import state_memory

    lora, full = Trainer(_cfg()), Trainer(apply_overrides(PRESETS["test-tiny"], []))
    lora_state, full_state = lora.init_state(), full.init_state()
    lm, fm = state_memory(lora, lora_state), state_memory(full, full_state)
    n_full = sum(x.size for x in jax.tree.leaves(full_state.params))
    assert lm["trained_params"] == adapter_count(lora_state.params) < n_full == fm["trained_params"]
    assert lm["params_bytes"] == 4 * (n_full + lm["trained_params"])  # base and adapters
    for m in (lm, fm):  # Adam's two float32 moments per trained param, and a few counters
        assert 0 <= m["opt_state_bytes"] - 8 * m["trained_params"] < 100
