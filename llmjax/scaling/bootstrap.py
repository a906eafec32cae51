"""Bootstrap of a scaling-law fit: refits on resampled runs, for parameter and prediction intervals.

boot = bootstrap(N, D, L, samples=200, seed=0)
boot.interval("alpha", 0.9)                          # (lo, hi) of the refits' alpha
boot.interval(lambda law: law.optimal(1e21)[0])      # of any function of the law
boot.prediction_interval(1e9, 2e10, 0.9)             # where a new run's loss should fall
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from llmjax.errors import ConfigError
from llmjax.scaling.law import LAW_PARAMETERS, ScalingLaw, check_runs, fit_law

MAX_REDRAWS_PER_SAMPLE = 100


def _level(level: float) -> tuple[float, float]:
    if not 0 < level < 1:
        raise ConfigError(f"level must be in (0, 1), e.g. 0.9 for a 90% interval; got {level!r}")
    return (1 - level) / 2, (1 + level) / 2


@dataclass(frozen=True, eq=False)
class Bootstrap:
    """The fit on all runs, its refits on `samples` resamples of them, and one log-residual of
    the full fit drawn per resample (the run-to-run noise a new run adds)."""

    law: ScalingLaw
    laws: tuple[ScalingLaw, ...]
    noise: tuple[float, ...]
    seed: int
    redrawn: int = 0  # resamples drawn again for lacking 2 distinct N or D

    @property
    def samples(self) -> int:
        return len(self.laws)

    def values(self, what: str | Callable[[ScalingLaw], ArrayLike]) -> np.ndarray:
        """A parameter (or any function of a law) across the refits, one row per resample."""
        if isinstance(what, str):
            if what not in LAW_PARAMETERS:
                raise ConfigError(f"unknown parameter {what!r}; choose one of {LAW_PARAMETERS}")
            name = what
            what = lambda law: getattr(law, name)
        return np.array([np.asarray(what(law), dtype=np.float64) for law in self.laws])

    def interval(
        self, what: str | Callable[[ScalingLaw], ArrayLike], level: float = 0.9
    ) -> tuple[float | np.ndarray, float | np.ndarray]:
        """The central `level` percentile interval of `values(what)`."""
        lo, hi = np.quantile(self.values(what), _level(level), axis=0)
        return _scalar(lo), _scalar(hi)

    def prediction_interval(
        self, N: ArrayLike, D: ArrayLike, level: float = 0.9, *, noise: bool = True
    ) -> tuple[float | np.ndarray, float | np.ndarray]:
        """Where the loss of a new run of N parameters on D tokens should fall: each refit's
        prediction times exp(its noise draw). With noise=False, the interval of the law's
        prediction alone (the fit's uncertainty, narrower)."""
        preds = self.values(lambda law: law.predict(N, D))
        if noise:
            draws = np.asarray(self.noise).reshape((-1,) + (1,) * (preds.ndim - 1))
            preds = preds * np.exp(draws)
        lo, hi = np.quantile(preds, _level(level), axis=0)
        return _scalar(lo), _scalar(hi)

    def to_dict(self, level: float = 0.9) -> dict:
        """The full fit, and each parameter's interval at `level`, as plain values."""
        intervals = {
            name: [float(v) for v in self.interval(name, level)] for name in LAW_PARAMETERS
        }
        return {
            "law": self.law.to_dict(),
            "samples": self.samples,
            "seed": self.seed,
            "redrawn": self.redrawn,
            "level": level,
            "intervals": intervals,
        }


def _scalar(x: np.ndarray) -> float | np.ndarray:
    return float(x) if np.ndim(x) == 0 else x


def bootstrap(
    N: ArrayLike,
    D: ArrayLike,
    L: ArrayLike,
    *,
    samples: int = 200,
    seed: int = 0,
    huber_delta: float = 1e-3,
    starts: ArrayLike | None = None,
    law: ScalingLaw | None = None,
) -> Bootstrap:
    """Refits `fit_law` on `samples` resamples of the runs (drawn with replacement from a
    numpy Generator seeded with `seed`, so the result is reproducible).

    `law`: the fit on all runs, if already made (else it is made with fit_law's default grid).
    Each refit starts from it, a local search that lands where a grid search would for a
    resample close to the full set of runs; pass `starts` to search a grid for every refit
    (`samples` times the cost). A resample without 2 distinct N and 2 distinct D cannot
    identify the law and is drawn again (counted in `redrawn`).

    The noise draws come from the full fit's log residuals, scaled by sqrt(n / (n - 5)): a fit
    of 5 parameters to n runs leaves residuals smaller than the noise that made them.
    """
    n, d, loss = check_runs(N, D, L)
    if not (isinstance(samples, int) and samples >= 2):
        raise ConfigError(f"samples must be an integer >= 2, got {samples!r}")
    full = fit_law(n, d, loss, huber_delta=huber_delta) if law is None else law
    refit_starts = full.theta()[None] if starts is None else starts
    residuals = np.log(loss) - np.log(full.predict(n, d))
    residuals = residuals * math.sqrt(n.size / max(n.size - len(LAW_PARAMETERS), 1))

    rng = np.random.default_rng(seed)
    laws, noise, redrawn = [], [], 0
    for _ in range(samples):
        for _attempt in range(MAX_REDRAWS_PER_SAMPLE):
            idx = rng.integers(0, n.size, size=n.size)
            if np.unique(n[idx]).size >= 2 and np.unique(d[idx]).size >= 2:
                break
            redrawn += 1
        else:
            raise ConfigError(
                f"{MAX_REDRAWS_PER_SAMPLE} resamples in a row lacked 2 distinct N and 2 distinct "
                "D: the runs are too concentrated on one size or token count to bootstrap"
            )
        laws.append(
            fit_law(n[idx], d[idx], loss[idx], huber_delta=huber_delta, starts=refit_starts)
        )
        noise.append(float(rng.choice(residuals)))
    return Bootstrap(law=full, laws=tuple(laws), noise=tuple(noise), seed=seed, redrawn=redrawn)


__all__ = ["Bootstrap", "bootstrap"]
