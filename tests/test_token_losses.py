"""Next-token losses other than cross-entropy: their values against the closed forms, their
gradients when the model is confidently wrong, and training with them through the one loop."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.config import PRESETS, apply_overrides
from llmjax.data import prepare_data
from llmjax.objectives.token_losses import (
    brier_per_token,
    confidently_wrong_logits,
    focal_per_token,
    logit_gradient_norms,
    nll_per_token,
)
from llmjax.train.fit import fit, with_vocab


def _logits(seed=0, shape=(2, 5, 7)):
    return jax.random.normal(jax.random.key(seed), shape) * 3, jnp.asarray(
        np.random.default_rng(seed).integers(0, shape[-1], shape[:-1]))  # fmt: skip


def test_losses_equal_their_closed_forms():
    logits, targets = _logits()
    p = np.asarray(jax.nn.softmax(logits, -1), np.float64)
    onehot = np.eye(7)[np.asarray(targets)]
    np.testing.assert_allclose(brier_per_token(logits, targets), ((p - onehot) ** 2).sum(-1),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    p_y = (p * onehot).sum(-1)
    np.testing.assert_allclose(focal_per_token(logits, targets, 2.0),
                               -((1 - p_y) ** 2) * np.log(p_y), rtol=1e-4, atol=1e-6)  # fmt: skip
    cross_entropy = nll_per_token(logits, targets)
    np.testing.assert_allclose(focal_per_token(logits, targets, 0.0), cross_entropy, rtol=1e-6)


def test_only_cross_entropy_and_focal_keep_a_gradient_when_confidently_wrong():
    logits = confidently_wrong_logits(jnp.asarray([1e-5, 0.5]), 50)[:, None]
    targets = jnp.zeros((2, 1), jnp.int32)
    np.testing.assert_allclose(jax.nn.softmax(logits, -1)[:, 0, 0], [1e-5, 0.5], rtol=1e-3)
    ce = np.asarray(logit_gradient_norms(nll_per_token, logits, targets))[:, 0]
    brier = np.asarray(logit_gradient_norms(brier_per_token, logits, targets))[:, 0]
    focal = np.asarray(logit_gradient_norms(focal_per_token, logits, targets))[:, 0]
    # p - onehot(y) with the mass on one wrong token: norm sqrt(2) as p_y -> 0
    assert ce[0] == pytest.approx(np.sqrt(2), rel=1e-3)
    assert brier[0] < 1e-3 * ce[0]  # the softmax saturates: the squared error stops pulling
    assert focal[0] == pytest.approx(ce[0], rel=1e-3)
    assert focal[1] < ce[1]  # down-weighted once the right token is likely


@pytest.mark.parametrize("objective", ["brier", "focal"])
def test_training_with_another_loss_reports_nll(objective):
    data = prepare_data(None, "byte")
    data = dataclasses.replace(data, train=data.train[:20_000], val=data.val[:4_000])
    cfg = with_vocab(apply_overrides(PRESETS["test-tiny"], [
        f"train.objective={objective}", "train.steps=4", "train.log_every=2",
        "train.eval_every=4", "train.eval_batches=1", "train.mfu=false",
    ]), data.tokenizer)  # fmt: skip
    result = fit(cfg, data=data, progress=False)
    train = [r for r in result.history if r.get("split") == "train"]
    assert all(np.isfinite(r["objective"]) and r["loss"] > r["objective"] for r in train)
    assert np.isfinite(result.final_eval["loss"]) and "bits_per_byte" in result.final_eval
