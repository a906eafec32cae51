"""Training: loss, optimizer, steps, the fit loop, exact resume, the non-finite guard."""

import dataclasses
import json
import logging
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llmjax.config import PRESETS, MuonConfig, OptimConfig, apply_overrides
from llmjax.objectives.losses import bits_per_byte, cross_entropy, perplexity, token_log_probs
from llmjax.runs import load_run
from llmjax.train.fit import fit
from llmjax.train.hooks import TrainingDiverged
from llmjax.train.optim import SCHEDULES, decay_mask, make_optimizer, muon_dimensions
from llmjax.train.setup import create_state
from llmjax.train.step import make_train_step
from tests.corpus_utils import write_word_corpus

# ----------------------------------------------------------------------------- loss


def test_cross_entropy_matches_numpy_with_mask_and_z_loss():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32) * 3
    targets = rng.integers(0, 7, (2, 5))
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.float32)
    lse = np.log(np.exp(logits.astype(np.float64)).sum(-1))
    nll = lse - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    expected = (nll * mask).sum() / mask.sum()
    loss, m = cross_entropy(
        jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask), z_loss=1e-2
    )
    np.testing.assert_allclose(m["loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(
        loss, expected + 1e-2 * (lse**2 * mask).sum() / mask.sum(), rtol=1e-5
    )
    assert float(m["tokens"]) == 8
    np.testing.assert_allclose(
        token_log_probs(jnp.asarray(logits), jnp.asarray(targets)), -nll, rtol=1e-5, atol=1e-6
    )


def test_loss_is_computed_in_float32_from_bf16_logits():
    logits = jnp.full((1, 1, 50000), 0.0, jnp.bfloat16).at[0, 0, 3].set(20.0)
    loss, _ = cross_entropy(logits, jnp.asarray([[3]]))
    exact = math.log(49999 * math.exp(-20) + 1)
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, exact, rtol=1e-3)


def test_perplexity_and_bits_per_byte():
    assert perplexity(math.log(7.0)) == pytest.approx(7.0)
    # 10 bytes coded in 10 * ln 2 nats is exactly one bit per byte.
    assert bits_per_byte(10 * math.log(2), 10) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- optimizer


def test_decay_mask_excludes_norms_biases_and_embeddings(tiny_model):
    from llmjax.models import init_model

    cfg = dataclasses.replace(tiny_model, use_bias=True, tie_embeddings=False)
    params, _ = init_model(cfg, jax.random.key(0))
    flat = {
        jax.tree_util.keystr(p): v
        for p, v in jax.tree_util.tree_leaves_with_path(decay_mask(params))
    }
    decayed = {k for k, v in flat.items() if v}
    assert decayed and all("kernel" in k for k in decayed)
    assert not any(("embedding" in k or "bias" in k or "scale" in k) for k in decayed)
    with_emb = jax.tree.leaves(decay_mask(params, decay_embeddings=True))
    assert sum(with_emb) == len(decayed) + 2  # token and position tables


def test_muon_sees_every_kernel_as_a_matrix_and_the_rest_as_adam(tiny_model):
    from llmjax.models import init_model

    params, _ = init_model(tiny_model, jax.random.key(0))
    dims = muon_dimensions(params)
    attention = dims["blocks"]["attention"]  # scanned: axis 0 is the layer (batch) axis
    assert attention["query_kernel"] == optax.contrib.MuonDimensionNumbers((1,), (2, 3))
    assert attention["out_kernel"] == optax.contrib.MuonDimensionNumbers((1, 2), (3,))
    assert dims["blocks"]["mlp"]["fc_in"]["kernel"] == optax.contrib.MuonDimensionNumbers(
        (1,), (2,)
    )
    assert dims["embed"]["embedding"] is None
    assert dims["final_norm"]["scale"] is None


def test_more_newton_schulz_steps_orthogonalize_muon_updates_further():
    """A Muon update's singular values approach one value as the iterations grow."""
    grad = {"kernel": jax.random.normal(jax.random.key(1), (16, 32)) * jnp.linspace(0.1, 3, 32)}
    params = jax.tree.map(jnp.zeros_like, grad)

    one, five = _muon_spread(grad, params, 1), _muon_spread(grad, params, 5)
    assert five < one
    assert five < 2.0  # the quintic iteration aims at [0.7, 1.2], not exactly 1


def test_aol_preconditioning_orthogonalizes_three_muon_iterations_further():
    """Rescaling each row by its Gram row sum (AOL) evens out rows of very different norms
    before the first iteration; dividing by the Frobenius norm leaves the small rows small, so
    three iterations do not lift them as far as five do."""
    rows = jnp.logspace(-2, 0, 16)[:, None]  # row norms over two decades
    grad = {"kernel": jax.random.normal(jax.random.key(1), (16, 64)) * rows}
    params = jax.tree.map(jnp.zeros_like, grad)
    frobenius_3, frobenius_5 = _muon_spread(grad, params, 3), _muon_spread(grad, params, 5)
    aol_3 = _muon_spread(grad, params, 3, preconditioning="aol")
    assert frobenius_3 > 1.5 * frobenius_5  # three iterations are not enough here ...
    assert aol_3 < 1.1 * frobenius_5  # ... unless the first one starts from AOL's rescaling
    assert _muon_spread(grad, params, 3, preconditioning="frobenius") == frobenius_3  # default


def _muon_spread(grad, params, ns_steps, **muon):
    """Largest over smallest singular value of Muon's first update of `grad`."""
    cfg = OptimConfig(
        name="muon",
        warmup_steps=0,
        weight_decay=0.0,
        clip_norm=None,
        muon=MuonConfig(ns_steps=ns_steps, **muon),
    )
    tx = make_optimizer(cfg, steps=10)
    updates, _ = tx.update(grad, tx.init(params), params)
    singular = np.linalg.svd(np.asarray(updates["kernel"]), compute_uv=False)
    return singular.max() / singular.min()


def test_adamw_decouples_weight_decay_but_adam_l2_does_not():
    """With zero gradient AdamW still shrinks weights by lr * wd; Adam+L2 normalizes the decay."""
    params = {"kernel": jnp.full((3,), 2.0)}
    zero = {"kernel": jnp.zeros(3)}
    base = dataclasses.replace(
        PRESETS["nano"].optim,
        lr=0.1,
        warmup_steps=0,
        schedule="constant",
        weight_decay=0.5,
        clip_norm=None,
    )
    outs = {}
    for name in ("adamw", "adam"):
        tx = make_optimizer(dataclasses.replace(base, name=name), steps=10)
        updates, _ = tx.update(zero, tx.init(params), params)
        outs[name] = float(optax.apply_updates(params, updates)["kernel"][0])
    assert outs["adamw"] == pytest.approx(2.0 - 0.1 * 0.5 * 2.0, rel=1e-5)
    # Adam+L2 sees gradient wd*w and normalizes it to about -lr per step.
    assert outs["adam"] == pytest.approx(2.0 - 0.1, rel=1e-3)


@pytest.mark.parametrize("schedule", SCHEDULES.names())
def test_schedules_warm_up_then_end_at_min_lr(schedule):
    cfg = dataclasses.replace(
        PRESETS["nano"].optim, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1, schedule=schedule
    )
    sched = SCHEDULES.get(schedule)(cfg, 100)
    assert float(sched(0)) == pytest.approx(0.0, abs=1e-12)
    assert float(sched(10)) == pytest.approx(1e-3, rel=1e-5)
    expected_end = 1e-3 if schedule == "constant" else 1e-4
    assert float(sched(100)) == pytest.approx(expected_end, rel=1e-4)


def test_clipping_bounds_the_update():
    cfg = dataclasses.replace(
        PRESETS["nano"].optim,
        name="sgd",
        lr=1.0,
        momentum=0.0,
        warmup_steps=0,
        schedule="constant",
        weight_decay=0.0,
        clip_norm=1.0,
    )
    tx = make_optimizer(cfg, steps=10)
    params = {"kernel": jnp.zeros(4)}
    updates, _ = tx.update({"kernel": jnp.full(4, 100.0)}, tx.init(params), params)
    np.testing.assert_allclose(optax.tree.norm(updates), 1.0, rtol=1e-5)


# ----------------------------------------------------------------------------- steps


def _tiny_cfg(**overrides):
    cfg = PRESETS["test-tiny"]
    return apply_overrides(cfg, [f"{k}={v}" for k, v in overrides.items()])


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_single_batch_is_overfit(optimizer):
    cfg = _tiny_cfg(
        **{
            "optim.name": optimizer,
            "optim.lr": 3e-3,
            "optim.warmup_steps": 0,
            "optim.schedule": "constant",
            "optim.weight_decay": 0.0,
            "train.steps": 150,
        }
    )
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=50))
    model, tx, state = create_state(cfg)
    step = jax.jit(
        make_train_step(model, tx, optax.constant_schedule(3e-3), seed=0), donate_argnums=0
    )
    tokens = np.random.default_rng(0).integers(0, 50, (4, 33)).astype(np.int32)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
    first = None
    for _ in range(150):
        state, metrics = step(state, batch)
        first = first if first is not None else float(metrics["loss"])
    assert first > 3.5
    assert float(metrics["loss"]) < 0.05


def test_train_step_is_deterministic_for_a_seed():
    cfg = _tiny_cfg(**{"model.dropout": 0.1})
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=50))
    tokens = np.random.default_rng(0).integers(0, 50, (4, 33)).astype(np.int32)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
    results = []
    for _ in range(2):
        model, tx, state = create_state(cfg)
        step = jax.jit(make_train_step(model, tx, optax.constant_schedule(1e-3), seed=0))
        for _ in range(3):
            state, metrics = step(state, batch)
        results.append(jax.device_get(state.params))
    jax.tree.map(np.testing.assert_array_equal, *results)


# ----------------------------------------------------------------------------- fit loop


@pytest.fixture(scope="module")
def fit_cfg(tmp_path_factory):
    path = write_word_corpus(tmp_path_factory.mktemp("data") / "corpus.txt", lines=800)
    return apply_overrides(
        PRESETS["test-tiny"],
        [
            f"data.path={path}",
            "train.steps=12",
            "train.eval_every=6",
            "train.checkpoint_every=4",
            "train.log_every=2",
            "train.eval_batches=2",
            "train.keep_checkpoints=5",
            "model.dropout=0.1",
        ],
    )


def test_fit_writes_a_complete_run_directory(fit_cfg, tmp_path):
    result = fit(fit_cfg, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert (run / "config.json").is_file() and (run / "tokenizer.json").is_file()
    assert (run / "loss.png").stat().st_size > 1000
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "val"] == [6, 12]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [2, 4, 6, 8, 10, 12]
    assert all(r["tokens_per_s"] > 0 and math.isfinite(r["loss"]) for r in train)
    assert all(0 < r["mfu"] < 1 for r in train)  # against the CPU's measured matmul peak
    assert set(result.final_eval) >= {"loss", "perplexity", "bits_per_byte", "accuracy"}
    assert int(result.state.step) == 12
    loaded = load_run(run)
    assert loaded.step == 12 and loaded.config.model.vocab_size == 259
    jax.tree.map(np.testing.assert_array_equal, loaded.params, jax.device_get(result.state.params))


def test_fit_compiles_each_step_once_ahead_of_its_first_call(fit_cfg, tmp_path, caplog):
    """The stand-ins fit compiles from on other threads match the real calls: a mismatch would
    compile the step a second time, at its first call."""
    compiled = []
    jax.config.update("jax_log_compiles", True)  # for every thread (the context is per thread)
    try:
        with caplog.at_level(logging.WARNING, logger="jax._src.dispatch"):
            fit(fit_cfg, tmp_path / "run", progress=False)
    finally:
        jax.config.update("jax_log_compiles", False)
    for record in caplog.records:
        found = re.match(r"Finished XLA compilation of jit\((\w+)\)", record.getMessage())
        compiled += [found.group(1)] if found else []
    assert compiled.count("train_step") == 1 and compiled.count("eval_step") == 1
    assert compiled.count("_all_finite") <= 1  # module-wide: an earlier test may have made it


def test_resume_equals_uninterrupted_run(fit_cfg, tmp_path):
    full = fit(fit_cfg, tmp_path / "full", progress=False)
    fit(fit_cfg, tmp_path / "split", progress=False, stop_after=5)  # checkpoint at 4 and 5
    resumed = fit(fit_cfg, tmp_path / "split", resume=True, progress=False)
    assert int(resumed.state.step) == 12
    jax.tree.map(
        np.testing.assert_array_equal,
        jax.device_get(full.state.params),
        jax.device_get(resumed.state.params),
    )
    steps = [json.loads(x)["step"] for x in (tmp_path / "split" / "metrics.jsonl").open()]
    assert steps == sorted(steps)  # records past the restored step were dropped, not duplicated


def test_existing_run_directory_is_never_overwritten(fit_cfg, tmp_path):
    from llmjax.runs import RunDirError

    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="already exists.*--resume.*--overwrite"):
        fit(fit_cfg, run, progress=False)
    fit(
        dataclasses.replace(fit_cfg, train=dataclasses.replace(fit_cfg.train, steps=2)),
        run,
        overwrite=True,
        progress=False,
    )
    assert (run / "notes.txt").read_text() == "mine"  # files llmjax did not write are kept


def test_resume_rejects_a_different_model(fit_cfg, tmp_path):
    from llmjax.runs import RunDirError

    short = dataclasses.replace(fit_cfg, train=dataclasses.replace(fit_cfg.train, steps=4))
    fit(short, tmp_path / "run", progress=False)
    other = apply_overrides(short, ["model.n_layers=3"])
    with pytest.raises(RunDirError, match=r"model\.n_layers"):
        fit(other, tmp_path / "run", resume=True, progress=False)


def test_resume_of_a_foreign_directory_names_it(tmp_path, fit_cfg):
    from llmjax.runs import RunDirError

    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "a.txt").write_text("x")
    with pytest.raises(RunDirError, match="not an llmjax run directory"):
        fit(fit_cfg, tmp_path / "stuff", resume=True, progress=False)
    assert (tmp_path / "stuff" / "a.txt").read_text() == "x"


def test_truncated_checkpoint_falls_back_to_previous_good_step(fit_cfg, tmp_path):
    short = dataclasses.replace(fit_cfg, train=dataclasses.replace(fit_cfg.train, steps=8))
    fit(short, tmp_path / "run", progress=False)
    ckpts = tmp_path / "run" / "checkpoints"
    latest = ckpts / "8"
    victims = [p for p in latest.rglob("*") if p.is_file() and p.stat().st_size > 0]
    for p in victims:
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])  # truncate every file
    with pytest.warns(UserWarning, match=r"skipping damaged checkpoint .*checkpoints/8"):
        loaded = load_run(tmp_path / "run")
    assert loaded.step == 4
    assert latest.exists() and all(p.exists() for p in victims)  # reading moves nothing


def test_non_finite_steps_are_skipped_then_stop_the_run(fit_cfg, tmp_path):
    # An absurd learning rate blows the params up after one update; every later step is
    # non-finite, skipped, and after max_nonfinite in a row the run stops with a message.
    cfg = apply_overrides(
        fit_cfg,
        [
            "optim.lr=1e30",
            "optim.warmup_steps=0",
            "optim.schedule=constant",
            "train.max_nonfinite=3",
            "optim.clip_norm=none",
        ],
    )
    with pytest.raises(TrainingDiverged, match="non-finite for 3 steps in a row"):
        fit(cfg, tmp_path / "run", progress=False)


def test_nonfinite_guard_skips_the_update():
    cfg = _tiny_cfg()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=50))
    model, tx, state = create_state(cfg)
    before = jax.device_get(state.params)
    step = jax.jit(make_train_step(model, tx, optax.constant_schedule(1e-3), seed=0))
    tokens = np.zeros((2, 33), np.int32)
    bad = {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "mask": np.full((2, 32), np.nan, np.float32),
    }
    state, metrics = step(state, bad)
    assert int(metrics["nonfinite_streak"]) == 1
    jax.tree.map(np.testing.assert_array_equal, before, jax.device_get(state.params))
    good = {**bad, "mask": np.ones((2, 32), np.float32)}
    state, metrics = step(state, good)
    assert int(metrics["nonfinite_streak"]) == 0 and int(metrics["nonfinite_total"]) == 1
