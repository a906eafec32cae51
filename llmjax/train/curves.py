"""Learning curves: a run's evaluations on several held-out splits at chosen steps, and how
much training one curve needs to reach the loss another reached (sample efficiency).

    steps = log_steps(300, points=10)                   # 0, 1, 2, 4, ..., 300
    state, records = learning_curve(trainer, state, source, {"val": val, "src": src}, steps)
    x, loss = curve(records, "val")
    tokens_to_reach(tokens_a, loss_a, level=loss_b[-1])  # None: curve a never gets there
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from llmjax.data.sources import BatchSource, HostBatch
from llmjax.train.hooks import EvaluateAt
from llmjax.train.state import TrainState
from llmjax.train.trainer import Trainer


def log_steps(end: int, points: int) -> list[int]:
    """Step 0 (before any update) and about `points` distinct steps spaced evenly on a log
    scale from 1 to `end` (both included): learning curves change fastest early on."""
    if end < 1 or points < 1:
        raise ValueError(f"log_steps needs end >= 1 and points >= 1, got end={end}, {points=}")
    spaced = np.unique(np.round(np.geomspace(1, end, points)).astype(int))
    return [0, *(int(s) for s in spaced)]


def learning_curve(
    trainer: Trainer,
    state: TrainState,
    source: BatchSource | Iterable[HostBatch],
    splits: Mapping[str, Callable[[], Iterable[HostBatch]]],
    steps: Collection[int],
    *,
    hooks: Sequence[Any] = (),
) -> tuple[TrainState, list[dict[str, Any]]]:
    """Trains `state` from its step to max(steps) on `source`, evaluating every split (a
    function giving fresh host batches) after each of `steps`; step 0 means the state as given.

    Returns (the final state, records {"step", "split", loss, ...} in step order).
    """
    start = len(trainer.history)
    first = int(jax.device_get(trainer.parallel.host_state(state).step))
    if first in steps:  # the loop's hooks only see states after an update
        for name, batches in splits.items():
            trainer.emit({"step": first, "split": name, **trainer.evaluate(state, batches())})
    end = max(steps)
    if end > first:
        state = trainer.run(state, source, end=end, hooks=[EvaluateAt(splits, steps), *hooks])
    return state, trainer.history[start:]


def curve(
    records: Iterable[Mapping[str, Any]], split: str, metric: str = "loss"
) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one split's `metric` in a list of evaluation records."""
    points = [(r["step"], r[metric]) for r in records if r.get("split") == split]
    if not points:
        raise ValueError(f"no evaluation records of split {split!r} with {metric!r}")
    steps, values = zip(*points, strict=True)
    return np.asarray(steps), np.asarray(values, np.float64)


def tokens_to_reach(tokens: Sequence[float], losses: Sequence[float], level: float) -> float | None:
    """The training tokens at which a learning curve first gets down to `level`: interpolated
    between the two evaluations around the crossing (linearly in log tokens, where both are
    positive). None if it never does within the curve: it needs more than tokens[-1]."""
    tokens, losses = np.asarray(tokens, np.float64), np.asarray(losses, np.float64)
    if tokens.shape != losses.shape or tokens.ndim != 1 or not len(tokens):
        raise ValueError(f"tokens {tokens.shape} and losses {losses.shape} must be equal 1-D")
    below = np.flatnonzero(losses <= level)
    if not len(below):
        return None
    i = int(below[0])
    if i == 0:
        return float(tokens[0])
    (t0, t1), (l0, l1) = tokens[i - 1 : i + 1], losses[i - 1 : i + 1]
    share = (l0 - level) / (l0 - l1)  # l0 > level >= l1
    if t0 > 0:
        return float(np.exp(np.log(t0) + share * (np.log(t1) - np.log(t0))))
    return float(t0 + share * (t1 - t0))


def tokens_to_match(
    tokens: Sequence[float], curves: np.ndarray, levels: Sequence[float]
) -> dict[str, float | None]:
    """The tokens a learner's seeds (curves [S, N] of losses at `tokens`) need to reach losses
    another's seeds reached (`levels`, one per seed): "tokens" from the mean curve to the mean
    level, with a range from the envelopes ("low": the learner's best seed reaching the
    other's worst; "high": its worst reaching the other's best). None: not within the curve."""
    curves, levels = np.atleast_2d(np.asarray(curves, np.float64)), np.asarray(levels)
    return {
        "tokens": tokens_to_reach(tokens, curves.mean(0), float(levels.mean())),
        "low": tokens_to_reach(tokens, curves.min(0), float(levels.max())),
        "high": tokens_to_reach(tokens, curves.max(0), float(levels.min())),
    }
