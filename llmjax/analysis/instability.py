"""Training instability, measured: loss spikes, divergence, learning-rate sensitivity, and the
two logit growths Wortsman et al. (2023) find behind the instabilities of large transformers.

    spikes(losses)                       # [(first, last) step index of each loss spike]
    lr_sensitivity(final_losses, initial_loss)      # over an lr grid, in nats
    logit_stats(model, variables, tokens_BxT)       # per-layer max attention logit, log Z ...
    monitor = InstabilityMonitor(tokens_BxT, every=25)   # a hook: all of it during training

Wortsman et al. reproduce at small scale, by raising the learning rate, two instabilities seen
in large models: attention logits that grow until the softmax saturates into one-hot
attention (Dehghani et al. 2023; QK-norm cures it) and output logits that drift away from the
log probabilities, log Z = logsumexp(logits) running off to large negative values (z-loss,
z * log^2 Z, holds log Z near 0). Their learning-rate sensitivity summarizes how much final
loss a setting loses over a grid of learning rates: mean over the grid of min(final loss,
initial loss) minus the best of them, so a diverged run counts as the initial loss.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llmjax.train.trainer import Hook, Trainer
from llmjax.typing import Array, Int

# What a spike is (see `spikes`): a step's loss this far above the median of the steps before.
# Small batches of varied text (source code) move the loss by up to ~15% from step to step at
# a steady state; 25% stands clear of that.
SPIKE_WINDOW = 10
SPIKE_THRESHOLD = 0.25
SPIKE_MIN_HISTORY = 3


def spikes(
    losses: Sequence[float],
    *,
    window: int = SPIKE_WINDOW,
    threshold: float = SPIKE_THRESHOLD,
    min_history: int = SPIKE_MIN_HISTORY,
) -> list[tuple[int, int]]:
    """The loss spikes of a per-step loss curve, as (first, last) indices of each.

    A step t >= `min_history` is above the curve when its loss is non-finite, or more than
    `threshold` (relative) above the median of the finite losses of the (up to) `window` steps
    before it; a spike is a run of consecutive such steps (however long, it counts once). The
    median of a trailing window follows a falling loss, so steady descent is no spike, and a
    short spike barely moves it; a long plateau after a jump becomes the new level."""
    if window < 1 or threshold <= 0 or not 1 <= min_history <= window:
        raise ValueError(
            f"need window >= 1, threshold > 0 and 1 <= min_history <= window, got {window}, "
            f"{threshold} and {min_history}"
        )
    x = np.asarray(losses, np.float64)
    out: list[tuple[int, int]] = []
    start = None
    for t in range(min_history, len(x) + 1):
        above = False
        if t < len(x):
            before = x[max(0, t - window) : t]
            before = before[np.isfinite(before)]
            reference = np.median(before) if before.size else np.inf
            above = not np.isfinite(x[t]) or x[t] > (1 + threshold) * reference
        if above and start is None:
            start = t
        elif not above and start is not None:
            out.append((start, t - 1))
            start = None
    return out


def count_spikes(losses: Sequence[float], **kwargs: Any) -> int:
    """How many loss spikes `spikes` finds."""
    return len(spikes(losses, **kwargs))


def diverged(
    losses: Sequence[float],
    initial_loss: float | None = None,
    *,
    tail: int = 10,
    rise: float = 1.0,
) -> bool:
    """Whether a per-step loss curve diverged: its final loss (the mean of the last `tail`
    steps) is non-finite, not below `initial_loss` (default: the first step's), or more than
    `rise` nats above the lowest such mean it reached before."""
    x = np.asarray(losses, np.float64)
    if not x.size:
        return True
    initial = x[0] if initial_loss is None else initial_loss
    tail = max(1, min(tail, x.size))
    means = np.convolve(x, np.ones(tail) / tail, mode="valid")  # non-finite stays non-finite
    final = means[-1]
    if not np.isfinite(final) or not final < initial:
        return True
    finite = means[np.isfinite(means)]
    return bool(final > finite.min() + rise)


def lr_sensitivity(final_losses: Sequence[float], initial_loss: float | Sequence[float]) -> float:
    """Wortsman et al.'s learning-rate sensitivity of one setting over an lr grid: the mean
    over the grid of min(final loss, initial loss) minus the smallest of them (nats). A
    non-finite final loss (a diverged run) counts as the initial loss; `initial_loss` is one
    value, or one per grid point."""
    final = np.asarray(final_losses, np.float64)
    if not final.size:
        raise ValueError("lr_sensitivity needs the final loss of at least one learning rate")
    initial = np.broadcast_to(np.asarray(initial_loss, np.float64), final.shape)
    capped = np.where(np.isfinite(final), np.minimum(final, initial), initial)
    return float(capped.mean() - capped.min())


def _per_layer(intermediates: dict[str, Any], name: str) -> jax.Array:
    """A value every attention layer sowed, as [L]: scanned ("blocks", stacked) or not."""
    if "blocks" in intermediates:
        return jnp.asarray(intermediates["blocks"]["attention"][name][0]).reshape(-1)
    n = len([k for k in intermediates if k.startswith("blocks_")])
    return jnp.stack([intermediates[f"blocks_{i}"]["attention"][name][0] for i in range(n)])


def logit_stats(
    model: Any, variables: dict[str, Any], tokens_BxT: Int[Array, "B T"]
) -> dict[str, jax.Array]:
    """What grows when a transformer goes unstable, on one batch (float32):

    max_attention_logit [L]: each layer's largest pre-softmax q.k / sqrt(H) over every
        visible pair and head (before a soft cap; sowed by the attention layer when the
        "intermediates" collection is mutable);
    log_z_mean: the mean over tokens of log Z = logsumexp of the output logits (0 when the
        logits are log probabilities; z-loss pulls it there);
    logit_mean, logit_max_abs: the mean and the largest magnitude of the output logits over
        the real (unpadded) vocabulary."""
    out, state = model.apply(variables, tokens_BxT, mutable=["intermediates"])
    logits_BxTxV = out.logits[..., : model.cfg.vocab_size].astype(jnp.float32)
    return {
        "max_attention_logit": _per_layer(state["intermediates"], "max_attention_logit"),
        "log_z_mean": jax.nn.logsumexp(logits_BxTxV, axis=-1).mean(),
        "logit_mean": logits_BxTxV.mean(),
        "logit_max_abs": jnp.abs(logits_BxTxV).max(),
    }


@functools.lru_cache(maxsize=32)
def logit_stats_fn(model_cfg: Any):
    """`logit_stats` of a model config, jitted once: (variables, tokens) -> host numbers, shared
    by every run of the same model shape (learning rates and seeds do not recompile it)."""
    from llmjax.models import build_model

    fn = jax.jit(functools.partial(logit_stats, build_model(model_cfg)))

    def stats(variables: dict[str, Any], tokens_BxT: Any) -> dict[str, Any]:
        host = jax.device_get(fn(variables, tokens_BxT))
        return {k: np.asarray(v, np.float64).tolist() for k, v in host.items()}

    return stats


class InstabilityMonitor(Hook):
    """Keeps every step's training loss and gradient norm, and after step 1, every `every`
    steps and the last one, `logit_stats` of the current params on `tokens_BxT` (a fixed
    batch): per-layer max attention logit and output-logit statistics over training.

    `losses[i]` is the loss of step i + 1 (that of step 1 is at the initial params); a step the
    optimizer skipped as non-finite keeps its non-finite loss. `probes` is a list of
    {"step", **logit_stats}."""

    def __init__(self, tokens_BxT: Any, *, every: int):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.tokens, self.every = np.asarray(tokens_BxT), every
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.nonfinite_steps = 0
        self.probes: list[dict[str, Any]] = []
        self.trainer: Trainer | None = None

    def on_start(self, trainer: Trainer, step: int) -> None:
        self.trainer = trainer
        self.stats = logit_stats_fn(trainer.cfg.model)

    def on_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        self.losses.append(float(metrics["loss"]))
        self.grad_norms.append(float(metrics["grad_norm"]))
        self.nonfinite_steps = int(metrics["nonfinite_total"])

    def due(self, step: int, end: int) -> bool:
        return step == 1 or step % self.every == 0 or step == end

    def on_state(self, step: int, state: Any) -> None:
        host = self.trainer.parallel.host_state(state)
        variables = {"params": host.params, **host.model_state}
        self.probes.append({"step": step, **self.stats(variables, self.tokens)})

    def summary(self) -> dict[str, Any]:
        """Spike count, divergence, the largest attention logit of any layer over training and
        at the end, and the last output-logit statistics (nan where nothing was probed)."""
        attention = [max(p["max_attention_logit"]) for p in self.probes]
        last = self.probes[-1] if self.probes else {}
        return {
            "initial_loss": self.losses[0] if self.losses else float("nan"),
            "spikes": count_spikes(self.losses),
            "diverged": diverged(self.losses),
            "nonfinite_steps": self.nonfinite_steps,
            "max_attention_logit": max(attention, default=float("nan")),
            "final_attention_logit": attention[-1] if attention else float("nan"),
            "final_log_z": last.get("log_z_mean", float("nan")),
            "final_logit_max_abs": last.get("logit_max_abs", float("nan")),
        }
