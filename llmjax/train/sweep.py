"""A grid of training settings x seeds through the one loop, for ablation studies: each trial's
loss curves, final losses, wall time and whether it diverged, and each setting's spread.

    trials = run_trials(base, {"adamw": ["optim.name=adamw"], "sgd": [...]}, seeds=(0, 1, 2),
                        data=data)
    rows = summarize(trials)                           # per setting: mean / min / max over seeds
    tuned = tune(base, settings, "optim.lr", (1e-3, 3e-3, 1e-2), data=data)  # each its own lr

A setting is a list of config overrides (`llmjax.config.apply_overrides`) on top of `base`; the
seed goes to train.seed (params init, data order, dropout). A trial that stops on non-finite
losses, or ends with a non-finite or exploded loss, is kept and marked `diverged` rather than
raised: divergence is a result here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmjax.config import Config, apply_overrides
from llmjax.data import TokenData
from llmjax.results import spread
from llmjax.train.hooks import TrainingDiverged


@dataclass
class Trial:
    """One training run of a setting and seed."""

    setting: str
    seed: int
    overrides: tuple[str, ...]
    train: list[tuple[int, float]]  # (step, training loss) of each logged step
    val: list[tuple[int, float]]  # (step, validation loss) of each evaluation
    grad_norm: list[tuple[int, float]]
    wall_s: float
    diverged: bool
    params: Any = None  # the final params, when asked for
    extra: dict[str, Any] = field(default_factory=dict)  # what a caller's `measure` returned

    @property
    def final_val(self) -> float:
        """The last validation loss (inf when the run diverged)."""
        return math.inf if self.diverged or not self.val else self.val[-1][1]

    @property
    def final_train(self) -> float:
        """Mean training loss over the last 5 logged steps (inf when the run diverged)."""
        if self.diverged or not self.train:
            return math.inf
        return float(np.mean([loss for _, loss in self.train[-5:]]))


def _exploded(losses: Sequence[float], vocab_size: int) -> bool:
    """Non-finite, or ending far above a uniform guess over the vocabulary."""
    return not losses or not np.isfinite(losses[-1]) or losses[-1] > 1.5 * math.log(vocab_size)


def run_trial(
    base: Config,
    setting: str,
    overrides: Sequence[str],
    seed: int,
    *,
    data: TokenData | None = None,
    keep_params: bool = False,
    measure: Callable[[Any, Config], dict[str, Any]] | None = None,
    **fit_kwargs: Any,
) -> Trial:
    """Trains `base` + `overrides` with train.seed = `seed`; `measure(result, cfg)` adds
    numbers of the finished run (e.g. weight norms) to the trial's `extra`. `data` (or
    `fit`'s source, val and tokenizer among `fit_kwargs`) is what it trains on."""
    from llmjax.train.fit import fit

    cfg = apply_overrides(base, [*overrides, f"train.seed={seed}"])
    try:
        result = fit(cfg, data=data, progress=False, **fit_kwargs)
    except TrainingDiverged:
        return Trial(setting, seed, tuple(overrides), [], [], [], math.nan, True)
    history = result.history
    train = [(r["step"], float(r["loss"])) for r in history if r.get("split") == "train"]
    val = [(r["step"], float(r["loss"])) for r in history if r.get("split") == "val"]
    grads = [(r["step"], float(r["grad_norm"])) for r in history if "grad_norm" in r]
    losses = [loss for _, loss in (val or train)]
    diverged = _exploded(losses, cfg.model.vocab_size)
    extra = {} if measure is None or diverged else measure(result, result.config)
    params = result.state.params if keep_params else None
    return Trial(setting, seed, tuple(overrides), train, val, grads, result.wall_s, diverged,
                 params, extra)  # fmt: skip


def run_trials(
    base: Config,
    settings: Mapping[str, Sequence[str]],
    seeds: Sequence[int] = (0,),
    **kwargs: Any,
) -> list[Trial]:
    """Every setting for every seed, seed-major (all settings of seed 0 first), so that a slow
    spell of a shared machine falls on every setting alike. `kwargs` go to `run_trial`."""
    return [run_trial(base, name, o, seed, **kwargs) for seed in seeds
            for name, o in settings.items()]  # fmt: skip


@dataclass
class Tuned:
    """What `tune` found: each setting's best value, the seed's trial at it (labelled with the
    setting's own name) and every trial of the search (labelled "setting key=value")."""

    best: dict[str, Any]
    best_trials: dict[str, Trial]
    trials: list[Trial]


def tune(
    base: Config,
    settings: Mapping[str, Sequence[str]],
    key: str,
    values: Sequence[Any] | Mapping[str, Sequence[Any]],
    *,
    seed: int = 0,
    **kwargs: Any,
) -> Tuned:
    """Each setting's best value of `key` (lowest final validation loss) over `values`: one
    grid for all, or one per setting (give each the same number of points, for a fair tuning
    budget). `kwargs` go to `run_trial`."""
    best, best_trials, trials = {}, {}, []
    for name, overrides in settings.items():
        grid = list(values[name] if isinstance(values, Mapping) else values)
        mine = [run_trial(base, f"{name} {key}={v}", [*overrides, f"{key}={v}"], seed, **kwargs)
                for v in grid]  # fmt: skip
        trials += mine
        i = int(np.argmin([t.final_val for t in mine]))  # all diverged: the first
        best[name] = grid[i]
        best_trials[name] = dataclasses.replace(mine[i], setting=name)
    return Tuned(best, best_trials, trials)


def summarize(
    trials: Sequence[Trial], metrics: Mapping[str, Callable[[Trial], float]] | None = None
) -> list[dict[str, Any]]:
    """One row per setting: trials, diverged count, and mean/min/max over its non-diverged
    seeds of each metric (default: final validation and training loss, wall time)."""
    metrics = metrics or {
        "val_loss": lambda t: t.final_val,
        "train_loss": lambda t: t.final_train,
        "wall_s": lambda t: t.wall_s,
    }
    rows = []
    for name in dict.fromkeys(t.setting for t in trials):
        mine = [t for t in trials if t.setting == name]
        ok = [t for t in mine if not t.diverged]
        row: dict[str, Any] = {"setting": name, "seeds": len(mine), "diverged": len(mine) - len(ok)}
        for metric, fn in metrics.items():
            if ok:
                s = spread([fn(t) for t in ok])
                row |= {metric: s["mean"], f"{metric}_min": s["min"], f"{metric}_max": s["max"]}
        rows.append(row)
    return rows


def mean_columns(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`summarize`'s rows without their min/max columns (a printable table)."""
    return [{k: v for k, v in r.items() if not k.endswith(("_min", "_max"))} for r in rows]


def curves(trials: Sequence[Trial], split: str = "val") -> dict[str, list[list[tuple[int, float]]]]:
    """Per setting, each seed's (step, loss) curve of `split` ("train" or "val")."""
    out: dict[str, list] = {}
    for t in trials:
        out.setdefault(t.setting, []).append(t.val if split == "val" else t.train)
    return out
