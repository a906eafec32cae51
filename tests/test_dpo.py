"""The dpo objective: DPO's and IPO's losses against closed forms on hand-made log-probs, log 2
when the policy is the reference, cached reference log-probs, the pair-count contract; and DPO
runs: the frozen reference bit-identical after training, a killed and resumed run equal to an
uninterrupted one, and the chosen-vs-rejected margin raised on the built-in pairs."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.align.preference import (
    fit_dpo,
    open_preference,
    preference_config,
    reference_logps,
    reference_policy,
)
from llmjax.config import load_config
from llmjax.data.preference import PreferenceDataConfig
from llmjax.errors import ConfigError
from llmjax.objectives import DirectPreference, Forward
from llmjax.runs import RunDir
from llmjax.runs.init_from import read_params
from tests.preference_helpers import (
    RUN_SET,
    TableModel,
    base_run,
    jnp_batch,
    log_sigmoid,
    np_sequence_logps,
    pair_batch,
    table_params,
)

V = 7


def _setup(seed=0):
    rng = np.random.default_rng(seed)
    policy, reference = table_params(rng, V), table_params(rng, V)
    return policy, reference, pair_batch(rng, V)


def _loss(objective, policy, reference, batch, denominator=None):
    model = Forward(TableModel(), policy, frozen={"reference": reference})
    batch = jnp_batch(batch)
    denominator = objective.weight(batch) if denominator is None else denominator
    return objective.loss(model, batch, denominator)


@pytest.mark.parametrize("beta, smoothing", [(0.1, 0.0), (0.5, 0.2)])
def test_dpo_loss_is_the_closed_form(beta, smoothing):
    policy, reference, batch = _setup()
    loss, metrics = _loss(DirectPreference(beta, "sigmoid", smoothing), policy, reference, batch)
    pc, pr = (np_sequence_logps(policy, batch, s) for s in ("chosen", "rejected"))
    rc, rr = (np_sequence_logps(reference, batch, s) for s in ("chosen", "rejected"))
    h = (pc - rc) - (pr - rr)
    want = -(1 - smoothing) * log_sigmoid(beta * h) - smoothing * log_sigmoid(-beta * h)
    np.testing.assert_allclose(loss, want.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["chosen_reward"], (beta * (pc - rc)).mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["rejected_reward"], (beta * (pr - rr)).mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["margin"], (beta * h).mean(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(metrics["accuracy"], (h > 0).mean())


def test_ipo_loss_is_the_closed_form_on_length_averaged_log_probs():
    policy, reference, batch = _setup(1)
    beta = 0.3
    loss, metrics = _loss(DirectPreference(beta, "ipo"), policy, reference, batch)
    nc, nr = batch["chosen_mask"].sum(1), batch["rejected_mask"].sum(1)
    pc, pr = (np_sequence_logps(policy, batch, s) for s in ("chosen", "rejected"))
    rc, rr = (np_sequence_logps(reference, batch, s) for s in ("chosen", "rejected"))
    h = (pc - rc) / nc - (pr - rr) / nr
    np.testing.assert_allclose(loss, ((h - 1 / (2 * beta)) ** 2).mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["chosen_reward"], (beta * (pc - rc) / nc).mean(), rtol=1e-5)


def test_the_loss_is_log_2_when_the_policy_is_the_reference():
    policy, _, batch = _setup(2)
    loss, metrics = _loss(DirectPreference(0.1), policy, policy, batch)
    assert float(loss) == pytest.approx(math.log(2.0), abs=1e-7)
    assert float(metrics["margin"]) == 0.0 and float(metrics["accuracy"]) == 0.0
    ipo, _ = _loss(DirectPreference(0.1, "ipo"), policy, policy, batch)
    assert float(ipo) == pytest.approx((1 / 0.2) ** 2, rel=1e-6)


def test_cached_reference_log_probs_give_the_same_loss_and_no_reference_gradient():
    policy, reference, batch = _setup(3)
    objective = DirectPreference(0.2)
    want, _ = _loss(objective, policy, reference, batch)
    cached = {
        **batch,
        "chosen_ref_logp": np_sequence_logps(reference, batch, "chosen").astype(np.float32),
        "rejected_ref_logp": np_sequence_logps(reference, batch, "rejected").astype(np.float32),
    }
    got, _ = _loss(objective, policy, {}, cached)  # no frozen tree: it must not be read
    np.testing.assert_allclose(got, want, rtol=1e-5)
    grad = jax.grad(lambda r: _loss(objective, policy, r, batch)[0])(reference)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grad))


def test_padding_rows_count_for_nothing_and_micro_batches_add_up():
    policy, reference, batch = _setup(4)
    objective = DirectPreference(0.1)
    whole, metrics = _loss(objective, policy, reference, batch)
    padded = {k: np.concatenate([v, np.zeros_like(v[:2])]) for k, v in batch.items()}
    assert float(objective.weight(jnp_batch(padded))) == 4.0
    np.testing.assert_allclose(_loss(objective, policy, reference, padded)[0], whole, rtol=1e-6)
    # Sums over a shared denominator: two halves add up to the whole batch's mean.
    halves = [{k: v[s] for k, v in batch.items()} for s in (slice(0, 2), slice(2, 4))]
    parts = [_loss(objective, policy, reference, h, jnp.float32(4.0)) for h in halves]
    np.testing.assert_allclose(sum(p[0] for p in parts), whole, rtol=1e-6)
    np.testing.assert_allclose(sum(p[1]["margin"] for p in parts), metrics["margin"], rtol=1e-5)
    sums = objective.eval_sums(
        Forward(TableModel(), policy, frozen={"reference": reference}), jnp_batch(padded)
    )
    report = objective.report({k: float(v) for k, v in sums.items()})
    assert report["pairs"] == 4.0
    np.testing.assert_allclose(report["loss"], whole, rtol=1e-6)


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="beta must be > 0"):
        DirectPreference(0.0)
    with pytest.raises(ConfigError, match="sigmoid, ipo"):
        DirectPreference(0.1, "hinge")


# ----------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def base(tmp_path_factory, word_corpus):
    return base_run(tmp_path_factory.mktemp("dpo"), word_corpus)


def _dpo(base, steps, *extra):
    overrides = [*RUN_SET, f"train.steps={steps}", f"train.eval_every={steps}", *extra]
    cfg = preference_config("dpo", init_from=base, overrides=overrides)
    return cfg, open_preference(cfg, PreferenceDataConfig("builtin", builtin_pairs=200))


def _train_records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("split") == "train"]


def _params_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_killed_and_resumed_run_ends_as_an_uninterrupted_one_with_the_reference_untouched(
    base, tmp_path
):
    extra = ("train.checkpoint_every=2", "optim.lr=1e-3", "train.eval_batches=1")
    cfg, data = _dpo(base, 4, *extra)
    whole = fit_dpo(cfg, tmp_path / "whole", data, progress=False)
    # The reference in the state is train.init_from's params, bit for bit, after training.
    params, _, step = read_params(RunDir(base), load_config(base / "config.json"))
    _params_equal(whole.state.frozen["reference"], params)
    assert not np.array_equal(
        np.asarray(whole.state.params["embed"]["embedding"]),
        np.asarray(params["embed"]["embedding"]),
    )
    fit_dpo(cfg, tmp_path / "split", data, progress=False, stop_after=2)
    resumed_cfg = preference_config("dpo", resume=tmp_path / "split")
    resumed_data = open_preference(resumed_cfg, None, tmp_path / "split", resume=True)
    assert resumed_data.reference_step == step
    resumed = fit_dpo(resumed_cfg, tmp_path / "split", resumed_data, resume=True, progress=False)
    assert int(resumed.state.step) == 4
    # The train record at step 4 averages steps 1-4 across the interruption, metrics included.
    records = [_train_records(tmp_path / name)[-1] for name in ("whole", "split")]
    for k in ("loss", "accuracy", "margin", "chosen_reward", "rejected_reward"):
        np.testing.assert_allclose(records[1][k], records[0][k], rtol=1e-6, atol=1e-7)
    _params_equal(resumed.state.params, whole.state.params)
    _params_equal(resumed.state.frozen["reference"], params)


@pytest.mark.slow
def test_dpo_raises_the_margin_of_held_out_pairs(base, tmp_path):
    cfg, data = _dpo(base, 30, "optim.lr=1e-3", "train.eval_batches=2")
    result = fit_dpo(cfg, tmp_path / "dpo", data, progress=False)
    final = result.final_eval
    # At the start the policy is the reference: loss log 2, margin 0, no pair with h > 0.
    assert final["loss"] < math.log(2.0) - 0.05
    assert final["margin"] > 0.05 and final["accuracy"] > 0.65
    assert final["chosen_reward"] > final["rejected_reward"]
    last = _train_records(tmp_path / "dpo")[-1]  # training records carry the pair metrics too
    assert last["margin"] > 0 and 0 <= last["accuracy"] <= 1
    assert last["chosen_reward"] - last["rejected_reward"] == pytest.approx(last["margin"])


@pytest.mark.slow
def test_cached_reference_log_probs_train_as_the_reference_forward_does(base, tmp_path):
    cfg, data = _dpo(base, 3, "optim.lr=1e-3", "train.eval_batches=1")
    reference, _ = reference_policy(cfg)
    logps = reference_logps(reference, data, 16, split="train")
    assert logps.shape == (len(data.train), 2) and (logps < 0).all()
    live = fit_dpo(cfg, tmp_path / "live", data, progress=False)
    cached = fit_dpo(cfg, tmp_path / "cached", data, progress=False, cache_reference=True)
    assert cached.state.frozen in (None, {})
    pairs = zip(
        jax.tree.leaves(live.state.params), jax.tree.leaves(cached.state.params), strict=True
    )
    for x, y in pairs:
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_dpo_on_a_mesh_matches_one_device(base, tmp_path):
    extra = ("optim.lr=1e-3", "train.eval_batches=1", "data.batch_size=8")
    cfg, data = _dpo(base, 2, *extra)
    one = fit_dpo(cfg, tmp_path / "one", data, progress=False)
    cfg, data = _dpo(base, 2, *extra, "parallel.mesh=data=2,fsdp=2,tensor=2")
    mesh = fit_dpo(cfg, tmp_path / "mesh", data, progress=False)
    assert mesh.final_eval["loss"] == pytest.approx(one.final_eval["loss"], rel=1e-4)
    for x, y in zip(
        jax.tree.leaves(one.state.params), jax.tree.leaves(mesh.state.params), strict=True
    ):
        n = min(x.shape[0], y.shape[0]) if x.ndim else None  # a mesh may pad the vocabulary
        np.testing.assert_allclose(np.asarray(y)[:n], np.asarray(x)[:n], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_bench_dpo_quick_times_both_steps(tmp_path, capsys):
    from experiments import bench_dpo

    result = bench_dpo.main(["--quick", "--out-dir", str(tmp_path)])
    assert result["sft_rows"] == 2 * result["pairs"] == 4
    for side in ("sft", "dpo"):
        assert len(result[side]["step_ms"]) == 2 and result[side]["ms_per_step"] > 0
    # DPO's first step is at the reference: loss log 2.
    assert result["dpo"]["loss_first_last"][0] == pytest.approx(math.log(2.0), abs=1e-4)
    assert result["ratios"]["xla_flops"] > 1.0  # the reference's forward adds work
    assert set(result["meets_targets"]) == {"step_time"}
    assert (
        json.loads(capsys.readouterr().out.strip().splitlines()[-1])["ratios"] == result["ratios"]
    )
