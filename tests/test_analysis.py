"""Ablation tooling: what a position depends on (leakage through gradients, padding), token
representations by layer (effective rank, rank collapse), per-block gradient norms, and the
settings x seeds sweep."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.analysis.leakage import gradient_leakage, padding_shift
from llmjax.analysis.representations import (
    effective_rank,
    layer_grad_norms,
    layer_outputs,
    rank_one_residual,
)
from llmjax.config import PRESETS, apply_overrides
from llmjax.data import prepare_data
from llmjax.models import build_model, init_model, unstack_layer_params
from llmjax.train.fit import with_vocab
from llmjax.train.sweep import Trial, mean_columns, run_trials, summarize, tune

V = 61


def _model(**changes):
    cfg = dataclasses.replace(PRESETS["test-tiny"].model, vocab_size=V, **changes)
    params, state = init_model(cfg, jax.random.key(0))
    return build_model(cfg), {"params": params, **state}


def _tokens(batch=3, length=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (batch, length)), rng.integers(0, V, (batch, length))


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_a_causal_model_leaks_nothing(norm):
    model, variables = _model(norm=norm)
    inputs, targets = _tokens()
    for train_mode in (True, False):
        leak = gradient_leakage(model, variables, inputs, targets, train_mode=train_mode)
        assert leak == {"future": 0.0, "future_max": 0.0, "other_rows": 0.0}
        shift = padding_shift(model, variables, inputs, targets, pad_fraction=0.5,
                              train_mode=train_mode)  # fmt: skip
        assert shift < 1e-6


def test_batchnorm_leaks_the_future_and_other_rows_in_training_mode_only():
    model, variables = _model(norm="batchnorm")
    inputs, targets = _tokens()
    train = gradient_leakage(model, variables, inputs, targets, train_mode=True)
    assert train["future"] > 1e-4 and train["other_rows"] > 1e-4
    assert (
        padding_shift(model, variables, inputs, targets, pad_fraction=0.5, train_mode=True) > 1e-4
    )
    evaluated = gradient_leakage(model, variables, inputs, targets, train_mode=False)
    assert evaluated["future"] == 0.0 and evaluated["other_rows"] == 0.0


def test_effective_rank_and_rank_one_residual_on_known_matrices():
    same = np.tile(np.arange(1.0, 9.0), (1, 1, 6, 1))  # L=1 B=1 T=6 D=8, every token alike
    np.testing.assert_allclose(effective_rank(same), [1.0], rtol=1e-9)
    np.testing.assert_allclose(rank_one_residual(same), [0.0], atol=1e-12)
    spread = np.eye(8)[None, None, :6]  # 6 orthonormal tokens
    np.testing.assert_allclose(effective_rank(spread), [6.0], rtol=1e-9)
    # centred: I - 1/6, whose norm over I's is sqrt(5/6)
    np.testing.assert_allclose(rank_one_residual(spread), [math.sqrt(5 / 6)], rtol=1e-9)


def test_layer_outputs_and_grad_norms_agree_across_layer_layouts():
    scanned, variables = _model(scan_layers=True)
    looped = build_model(dataclasses.replace(scanned.cfg, scan_layers=False))
    n = scanned.cfg.n_layers
    loop_vars = {"params": unstack_layer_params(variables["params"], n)}
    inputs, _ = _tokens()
    h = layer_outputs(scanned, variables, inputs)
    assert h.shape == (n, 3, 16, scanned.cfg.d_model)
    np.testing.assert_allclose(h, layer_outputs(looped, loop_vars, inputs), atol=1e-5)
    # the last block's output is what the final norm and head read
    grads = jax.tree.map(jnp.ones_like, variables["params"])
    norms = layer_grad_norms(grads, n)
    np.testing.assert_allclose(norms, layer_grad_norms(unstack_layer_params(grads, n), n))
    per_layer = sum(x[0].size for x in jax.tree.leaves(variables["params"]["blocks"]))
    np.testing.assert_allclose(norms, [math.sqrt(per_layer)] * n)


def test_summarize_spreads_and_leaves_diverged_seeds_out():
    def trial(setting, seed, val, diverged=False):
        return Trial(setting, seed, (), [(1, val + 0.5)], [(1, val)], [], 1.0, diverged)

    rows = summarize([trial("a", 0, 2.0), trial("a", 1, 3.0), trial("a", 2, 9.0, True),
                      trial("b", 0, 1.0)])  # fmt: skip
    a, b = rows
    assert (a["seeds"], a["diverged"], a["val_loss"], a["val_loss_min"], a["val_loss_max"]) == (
        3, 1, 2.5, 2.0, 3.0)  # fmt: skip
    assert b["val_loss"] == 1.0 and b["train_loss"] == 1.5
    assert "val_loss_min" not in mean_columns(rows)[0]
    assert trial("c", 0, 1.0, True).final_val == math.inf


def test_tune_picks_the_lowest_validation_loss_and_a_huge_lr_diverges():
    data = prepare_data(None, "byte")
    data = dataclasses.replace(data, train=data.train[:20_000], val=data.val[:4_000])
    base = with_vocab(apply_overrides(PRESETS["test-tiny"], [
        "train.steps=6", "train.eval_every=3", "train.eval_batches=1", "train.log_every=2",
        "train.mfu=false", "optim.warmup_steps=1"]), data.tokenizer)  # fmt: skip
    found = tune(base, {"adamw": ["optim.name=adamw"]}, "optim.lr", (1e-2, 1e-6), data=data)
    assert found.best == {"adamw": 1e-2}
    assert [t.setting for t in found.trials] == ["adamw optim.lr=0.01", "adamw optim.lr=1e-06"]
    assert found.best_trials["adamw"].setting == "adamw"
    assert found.trials[0].final_val < found.trials[1].final_val
    (wild,) = run_trials(base, {"sgd": ["optim.name=sgd", "optim.lr=1e4", "optim.clip_norm=none"]},
                         data=data)  # fmt: skip
    assert wild.diverged and wild.final_val == math.inf
