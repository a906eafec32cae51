"""The grpo objective: the clipped surrogate on group advantages plus kl_coef * k3."""

import jax.numpy as jnp
import numpy as np

from llmjax.align.advantages import group_advantages
from llmjax.objectives import OBJECTIVES
from llmjax.objectives.grpo import GRPO, k3
from llmjax.objectives.losses import token_log_probs
from tests.test_ppo import FakeModel, experience


def grpo_batch(seed=0, ref_shift=0.3):
    logits, _, batch, logp = experience(seed)
    B = logits.shape[0]
    rng = np.random.default_rng(seed + 10)
    adv = group_advantages(rng.normal(size=B), 2)
    batch = {k: batch[k] for k in ("inputs", "targets", "mask", "old_logp")}
    batch["advantages"] = (adv[:, None] * batch["mask"]).astype(np.float32)
    batch["ref_logp"] = (logp + rng.uniform(-ref_shift, ref_shift, logp.shape)).astype(np.float32)
    batch["kl_coef"] = np.full(B, 0.05, np.float32)
    return logits, batch, logp


def test_registered():
    assert OBJECTIVES.get("grpo") is GRPO


def test_grpo_loss_equals_its_closed_form():
    logits, batch, logp = grpo_batch()
    obj = GRPO(clip=0.2, entropy_coef=0.0)
    loss, m = obj.loss(FakeModel(logits), batch, obj.weight(batch))
    w = batch["mask"].astype(np.float64)
    ratio = np.exp(logp - batch["old_logp"])
    a = batch["advantages"]
    pol = -np.minimum(ratio * a, np.clip(ratio, 0.8, 1.2) * a)
    d = batch["ref_logp"] - logp
    kl = np.exp(d) - d - 1
    want = ((pol + 0.05 * kl) * w).sum() / w.sum()
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    np.testing.assert_allclose(float(m["kl"]), (kl * w).sum() / w.sum(), rtol=1e-5)
    np.testing.assert_allclose(float(m["policy_loss"]), (pol * w).sum() / w.sum(), rtol=1e-5)


def test_the_kl_term_is_zero_when_policy_equals_reference():
    logits, batch, logp = grpo_batch()
    batch["ref_logp"] = logp.astype(np.float32)
    obj = GRPO(clip=0.2, entropy_coef=0.0)
    loss, m = obj.loss(FakeModel(logits), batch, obj.weight(batch))
    assert float(m["kl"]) == 0.0
    np.testing.assert_allclose(float(loss), float(m["policy_loss"]), rtol=0, atol=1e-7)
    lp = token_log_probs(jnp.asarray(logits), jnp.asarray(batch["targets"]))
    assert float(jnp.abs(k3(lp, lp)).max()) == 0.0


def test_group_advantages_of_a_batch_have_zero_mean_per_group():
    _, batch, _ = grpo_batch(3)
    per_row = batch["advantages"].sum(1) / np.maximum(batch["mask"].sum(1), 1)
    np.testing.assert_allclose(per_row.reshape(-1, 2).mean(1), 0.0, atol=1e-6)
