"""llmjax.align.advantages against straightforward NumPy references."""

import numpy as np
import pytest

from llmjax.align.advantages import (
    KLController,
    gae,
    group_advantages,
    kl_estimate,
    last_index,
    masked_group_advantages,
    token_rewards,
    whiten,
)


def _rows(seed=0, B=5, N=9):
    rng = np.random.default_rng(seed)
    mask = np.zeros((B, N))
    starts = rng.integers(0, 3, B)
    lengths = rng.integers(1, N - 3, B)
    for b in range(B):
        mask[b, starts[b] : starts[b] + lengths[b]] = 1
    return rng, mask


def _gae_reference(rewards, values, mask, gamma, lam):
    """Per row, over its completion tokens only, the textbook backward recursion."""
    adv = np.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        idx = np.flatnonzero(mask[b])
        last = 0.0
        for j in reversed(range(len(idx))):
            t = idx[j]
            v_next = values[b, idx[j + 1]] if j + 1 < len(idx) else 0.0
            delta = rewards[b, t] + gamma * v_next - values[b, t]
            last = delta + gamma * lam * last
            adv[b, t] = last
    return adv, (adv + values) * mask


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0), (0.99, 0.0)])
def test_gae_equals_a_numpy_reference(gamma, lam):
    rng, mask = _rows()
    rewards = rng.normal(size=mask.shape)
    values = rng.normal(size=mask.shape)
    got_adv, got_ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    want_adv, want_ret = _gae_reference(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(got_adv, want_adv, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_ret, want_ret, rtol=1e-12, atol=1e-12)
    assert np.all(got_adv[mask == 0] == 0)


def test_gae_with_lambda_one_and_no_values_is_the_reward_to_go():
    _, mask = _rows(1)
    rewards = np.random.default_rng(1).normal(size=mask.shape) * mask
    adv, _ = gae(rewards, np.zeros_like(rewards), mask, gamma=1.0, lam=1.0)
    to_go = np.cumsum(rewards[:, ::-1], axis=1)[:, ::-1] * mask
    np.testing.assert_allclose(adv, to_go, atol=1e-12)


def test_kl_estimates():
    rng = np.random.default_rng(0)
    logp, ref = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    np.testing.assert_allclose(kl_estimate(logp, ref, "k1"), logp - ref)
    d = ref - logp
    np.testing.assert_allclose(kl_estimate(logp, ref, "k3"), np.exp(d) - d - 1)
    assert np.all(kl_estimate(logp, ref, "k3") >= 0)
    assert np.all(kl_estimate(logp, logp, "k3") == 0) and np.all(kl_estimate(logp, logp, "k1") == 0)


def test_token_rewards_penalise_every_token_and_add_the_reward_at_the_last():
    rng, mask = _rows(2)
    kl = rng.normal(size=mask.shape)
    rewards = rng.normal(size=mask.shape[0])
    got = token_rewards(rewards, kl, mask, 0.1)
    want = -0.1 * kl * mask
    for b in range(mask.shape[0]):
        want[b, np.flatnonzero(mask[b])[-1]] += rewards[b]
    np.testing.assert_allclose(got, want)
    np.testing.assert_array_equal(last_index(mask), [np.flatnonzero(m)[-1] for m in mask])


def test_whitening_over_the_mask():
    rng, mask = _rows(3)
    x = rng.normal(3.0, 2.0, size=mask.shape)
    w = whiten(x, mask)
    sel = w[mask > 0]
    assert abs(sel.mean()) < 1e-9 and abs(sel.std() - 1) < 1e-6
    assert np.all(w[mask == 0] == 0)
    kept = whiten(x, mask, shift_mean=False)[mask > 0]
    np.testing.assert_allclose(kept.mean(), x[mask > 0].mean(), rtol=1e-9)


def test_group_advantages_have_zero_mean_per_group():
    rewards = np.random.default_rng(0).normal(size=12)
    a = group_advantages(rewards, 4).reshape(3, 4)
    np.testing.assert_allclose(a.mean(axis=1), 0.0, atol=1e-12)
    r = rewards.reshape(3, 4)
    want = (r - r.mean(1, keepdims=True)) / (r.std(1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(a, want)
    # A group whose rewards are all equal has no signal: zero advantages, not a division by 0.
    np.testing.assert_array_equal(group_advantages(np.ones(4), 4), 0.0)


def test_masked_group_advantages_leave_invalid_rows_out():
    rewards = np.array([1.0, 0.0, 5.0, 2.0, 3.0, 3.0])
    valid = np.array([1, 1, 0, 1, 1, 1], bool)
    got = masked_group_advantages(rewards, valid, 3).reshape(2, 3)
    assert got[0, 2] == 0
    np.testing.assert_allclose(got[0, :2], group_advantages(np.array([1.0, 0.0]), 2))
    np.testing.assert_allclose(got[1], group_advantages(rewards[3:], 3))


def test_adaptive_kl_controller_follows_ziegler_et_al():
    c = KLController(0.1, target=6.0, horizon=100)
    c.update(kl=9.0, n=10)  # error clipped to 0.2
    assert c.coef == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))
    c2 = KLController(0.1, target=6.0, horizon=100)
    c2.update(kl=5.4, n=10)  # error -0.1
    assert c2.coef == pytest.approx(0.1 * (1 - 0.1 * 10 / 100))
    fixed = KLController(0.1)
    fixed.update(kl=100.0, n=10)
    assert fixed.coef == 0.1
    restored = KLController(0.5, target=6.0)
    restored.load_state_dict(c.state_dict())
    assert restored.coef == c.coef
