"""The ppo objective against its closed form on hand-made ratios, advantages and values."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.config import PRESETS, ConfigError, apply_overrides
from llmjax.objectives import OBJECTIVES, build_objective
from llmjax.objectives.losses import token_log_probs
from llmjax.objectives.ppo import PPO


class FakeModel:
    """A Forward stand-in: fixed logits and values for any batch."""

    def __init__(self, logits, values=None):
        self.logits, self.values = jnp.asarray(logits), values

    def on(self, batch):
        rows = batch["targets"].shape[0]
        aux = {} if self.values is None else {"value": jnp.asarray(self.values)[:rows]}
        return SimpleNamespace(logits=self.logits[:rows], aux=aux)


def experience(seed=0, B=4, T=6, V=7):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(B, T, V)).astype(np.float32)
    targets = rng.integers(0, V, (B, T)).astype(np.int32)
    mask = (rng.random((B, T)) < 0.7).astype(np.float32)
    mask[:, 0] = 1
    logp = np.asarray(token_log_probs(jnp.asarray(logits), jnp.asarray(targets)))
    ratio = np.exp(rng.uniform(-0.5, 0.5, (B, T))).astype(np.float32)  # some beyond the clip
    values = rng.normal(size=(B, T)).astype(np.float32)
    batch = {
        "inputs": targets,
        "targets": targets,
        "mask": mask,
        "old_logp": (logp - np.log(ratio)).astype(np.float32),
        "old_values": (values + rng.uniform(-0.5, 0.5, (B, T))).astype(np.float32),
        "advantages": rng.normal(size=(B, T)).astype(np.float32),
        "returns": rng.normal(size=(B, T)).astype(np.float32),
    }
    return logits, values, batch, logp


def closed_form(logits, values, batch, logp, clip, vclip, vf, ent):
    m = batch["mask"].astype(np.float64)
    n = m.sum()
    ratio = np.exp(logp - batch["old_logp"])
    a = batch["advantages"]
    pol = -np.minimum(ratio * a, np.clip(ratio, 1 - clip, 1 + clip) * a)
    old = batch["old_values"]
    vc = old + np.clip(values - old, -vclip, vclip)
    R = batch["returns"]
    vl = np.maximum((values - R) ** 2, (vc - R) ** 2)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    h = -(p * np.log(p)).sum(-1)
    out = {
        "policy_loss": (pol * m).sum() / n,
        "value_loss": (vl * m).sum() / n,
        "entropy": (h * m).sum() / n,
        "clip_frac": ((np.abs(ratio - 1) > clip) * m).sum() / n,
        "approx_kl": (((ratio - 1) - np.log(ratio)) * m).sum() / n,
        "value_mse": ((values - R) ** 2 * m).sum() / n,
    }
    out["loss"] = out["policy_loss"] + vf * out["value_loss"] - ent * out["entropy"]
    return out


def test_registered():
    assert OBJECTIVES.get("ppo") is PPO


def test_clipped_ppo_loss_equals_its_closed_form():
    logits, values, batch, logp = experience()
    obj = PPO(clip=0.2, entropy_coef=0.01, value_clip=0.3, vf_coef=0.5)
    model = FakeModel(logits, values)
    loss, metrics = obj.loss(model, batch, obj.weight(batch))
    want = closed_form(logits, values, batch, logp, 0.2, 0.3, 0.5, 0.01)
    assert 0 < want["clip_frac"] < 1  # the hand-made ratios cross the clip on some tokens
    np.testing.assert_allclose(float(loss), want["loss"], rtol=1e-5)
    for k, v in want.items():
        np.testing.assert_allclose(float(metrics[k]), v, rtol=1e-5, atol=1e-7, err_msg=k)


def test_hand_made_ratios_give_the_clipped_values():
    # One token each: ratio 1.5 with A=+1 is clipped to 1.2; ratio 0.5 with A=+1 is not;
    # ratio 0.5 with A=-1 is clipped to 0.8; ratio 1.5 with A=-1 is not.
    B, T, V = 4, 1, 3
    logits = np.zeros((B, T, V), np.float32)
    targets = np.zeros((B, T), np.int32)
    logp = np.log(1 / 3)
    ratios = np.array([1.5, 0.5, 0.5, 1.5])
    adv = np.array([1.0, 1.0, -1.0, -1.0])
    batch = {
        "inputs": targets,
        "targets": targets,
        "mask": np.ones((B, T), np.float32),
        "old_logp": (logp - np.log(ratios))[:, None].astype(np.float32),
        "old_values": np.zeros((B, T), np.float32),
        "advantages": adv[:, None].astype(np.float32),
        "returns": np.zeros((B, T), np.float32),
    }
    obj = PPO(clip=0.2, entropy_coef=0.0, value_clip=0.2, vf_coef=0.0)
    _, m = obj.loss(FakeModel(logits, np.zeros((B, T))), batch, obj.weight(batch))
    want = np.mean([-1.2, -0.5, 0.8, 1.5])
    np.testing.assert_allclose(float(m["policy_loss"]), want, rtol=1e-5)
    np.testing.assert_allclose(float(m["clip_frac"]), 1.0)  # every ratio is outside [0.8, 1.2]


def test_value_loss_is_clipped_around_the_old_values():
    B, T, V = 2, 1, 3
    targets = np.zeros((B, T), np.int32)
    logits = np.zeros((B, T, V), np.float32)
    values = np.array([[1.0], [1.0]])
    batch = {
        "inputs": targets,
        "targets": targets,
        "mask": np.ones((B, T), np.float32),
        "old_logp": np.full((B, T), np.log(1 / 3), np.float32),
        "old_values": np.array([[0.0], [0.9]], np.float32),
        "advantages": np.zeros((B, T), np.float32),
        "returns": np.array([[0.0], [1.0]], np.float32),
    }
    obj = PPO(clip=0.2, entropy_coef=0.0, value_clip=0.2, vf_coef=1.0)
    _, m = obj.loss(FakeModel(logits, values), batch, obj.weight(batch))
    # Row 0: v=1 (err 1), clipped v=0.2 (err 0.04): max 1. Row 1: v=1 (err 0), clipped 1.0 (0).
    np.testing.assert_allclose(float(m["value_loss"]), 0.5, rtol=1e-6)


def test_micro_batches_sum_to_the_whole_batch():
    logits, values, batch, _ = experience(1, B=4)
    obj = PPO(clip=0.2, entropy_coef=0.01, value_clip=0.2, vf_coef=0.1)
    model = FakeModel(logits, values)
    whole, _ = obj.loss(model, batch, obj.weight(batch))
    denom = obj.weight(batch)
    parts = 0.0
    for rows in (slice(0, 2), slice(2, 4)):
        half = {k: v[rows] for k, v in batch.items()}
        sub = FakeModel(logits[rows], values[rows])
        parts += float(obj.loss(sub, half, denom)[0])
    np.testing.assert_allclose(parts, float(whole), rtol=1e-5)


def test_ppo_needs_the_value_head_and_gradients_flow():
    cfg = apply_overrides(PRESETS["test-tiny"], ["train.objective=ppo"])
    with pytest.raises(ConfigError, match="value_head"):
        build_objective(cfg)
    cfg = apply_overrides(cfg, ["model.value_head=true", "rl.clip=0.3", "rl.vf_coef=0.7"])
    obj = build_objective(cfg)
    assert (obj.clip, obj.vf_coef) == (0.3, 0.7)
    # The gradient of the closed form at ratio 1 (no clipping): -A * d logp.
    logits, values, batch, _ = experience(2, B=2, T=3)
    batch["old_logp"] = np.asarray(
        token_log_probs(jnp.asarray(logits), jnp.asarray(batch["targets"]))
    )
    obj = PPO(clip=0.2, entropy_coef=0.0, value_clip=0.2, vf_coef=0.0)

    def f(lg):
        return obj.loss(FakeModel(lg, values), batch, obj.weight(batch))[0]

    def g(lg):
        lp = token_log_probs(lg, jnp.asarray(batch["targets"]))
        w = batch["mask"]
        return -(lp * batch["advantages"] * w).sum() / w.sum()

    np.testing.assert_allclose(
        jax.grad(f)(jnp.asarray(logits)), jax.grad(g)(jnp.asarray(logits)), rtol=1e-4, atol=1e-6
    )
