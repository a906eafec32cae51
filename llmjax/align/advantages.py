"""What a rollout's rewards become before the update: per-token KL estimates to the reference,
the KL-penalised per-token reward, GAE advantages and returns (PPO), group-normalised
advantages (GRPO), whitening, and the adaptive KL coefficient (Ziegler et al. 2019).

Everything here is a NumPy function of [B, N] arrays over the completion tokens of B rows
(`mask_BxN` 1 on completion tokens, the stop token included; completions are left-aligned,
so a row's tokens are its first `mask.sum()` positions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmjax.errors import ConfigError


def kl_estimate(logp_BxN: np.ndarray, ref_logp_BxN: np.ndarray, estimator: str) -> np.ndarray:
    """Per-token estimate of KL(policy || reference) from log-probs of sampled tokens:
    k1 = logp - ref_logp (unbiased, may be negative); k3 = exp(ref - logp) - (ref - logp) - 1
    (unbiased and >= 0, Schulman 2020)."""
    if estimator == "k1":
        return logp_BxN - ref_logp_BxN
    if estimator == "k3":
        d = ref_logp_BxN - logp_BxN
        return np.exp(d) - d - 1.0
    raise ConfigError(f"rl.kl_estimator={estimator!r} is not one of k1, k3")


def last_index(mask_BxN: np.ndarray) -> np.ndarray:
    """Each row's last masked position (0 for a row with none)."""
    n = mask_BxN.shape[1]
    has = mask_BxN.any(axis=1)
    last = n - 1 - np.argmax(mask_BxN[:, ::-1] > 0, axis=1)
    return np.where(has, last, 0)


def token_rewards(
    rewards_B: np.ndarray, kl_BxN: np.ndarray, mask_BxN: np.ndarray, kl_coef: float
) -> np.ndarray:
    """-kl_coef * KL on every completion token, plus the sequence's reward at its last one."""
    mask = mask_BxN.astype(np.float64)
    out = -kl_coef * kl_BxN * mask
    rows = np.arange(len(rewards_B))
    out[rows, last_index(mask_BxN)] += np.where(mask.any(axis=1), rewards_B, 0.0)
    return out


def whiten(x: np.ndarray, mask: np.ndarray, *, shift_mean: bool = True, eps: float = 1e-8):
    """(x - mean) / std over the masked entries (mean kept with shift_mean=False); zeros
    elsewhere."""
    m = mask.astype(np.float64)
    n = max(m.sum(), 1.0)
    mean = (x * m).sum() / n
    var = (np.square(x - mean) * m).sum() / n
    out = (x - mean) / np.sqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * m


def gae(
    rewards_BxN: np.ndarray,
    values_BxN: np.ndarray,
    mask_BxN: np.ndarray,
    *,
    gamma: float,
    lam: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(advantages, returns) by generalised advantage estimation over each row's completion
    tokens: delta_t = r_t + gamma V_{t+1} - V_t (V after the last token is 0),
    A_t = delta_t + gamma lam A_{t+1}; returns = A + V. Zero off the mask."""
    mask = mask_BxN.astype(np.float64)
    values = values_BxN * mask
    rewards = rewards_BxN * mask
    B, N = rewards.shape
    adv = np.zeros((B, N))
    running = np.zeros(B)
    for t in reversed(range(N)):
        next_value = values[:, t + 1] if t + 1 < N else np.zeros(B)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        adv[:, t] = running
    return adv * mask, (adv + values) * mask


def group_advantages(rewards_B: np.ndarray, group_size: int, eps: float = 1e-6) -> np.ndarray:
    """GRPO's (r - mean of its group) / (std of its group + eps); rows of a group adjacent."""
    r = np.asarray(rewards_B, np.float64).reshape(-1, group_size)
    mean = r.mean(axis=1, keepdims=True)
    std = r.std(axis=1, keepdims=True)
    return ((r - mean) / (std + eps)).reshape(-1)


def masked_group_advantages(
    rewards_B: np.ndarray, valid_B: np.ndarray, group_size: int, eps: float = 1e-6
) -> np.ndarray:
    """`group_advantages` over the valid rows of each group only (0 for invalid rows)."""
    r = np.asarray(rewards_B, np.float64).reshape(-1, group_size)
    v = np.asarray(valid_B, np.float64).reshape(-1, group_size)
    n = np.maximum(v.sum(axis=1, keepdims=True), 1.0)
    mean = (r * v).sum(axis=1, keepdims=True) / n
    std = np.sqrt((np.square(r - mean) * v).sum(axis=1, keepdims=True) / n)
    return ((r - mean) / (std + eps) * v).reshape(-1)


@dataclass
class KLController:
    """The KL penalty's coefficient; adaptive with a `target` (Ziegler et al. 2019):
    coef *= 1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon after each rollout of n rows
    whose mean per-sequence KL is KL. Fixed without a target."""

    coef: float
    target: float | None = None
    horizon: int = 10_000

    def update(self, kl: float, n: int) -> None:
        if self.target is None:
            return
        error = float(np.clip(kl / self.target - 1.0, -0.2, 0.2))
        self.coef *= 1.0 + error * n / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"kl_coef": self.coef}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.coef = float(state["kl_coef"])
