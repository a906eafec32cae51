"""Scaling laws fitted to runs: Chinchilla's L(N, D) and the loss of the compute frontier L(C).

    law = fit_law(N, D, L)                  # E + A / N**alpha + B / D**beta, Hoffmann et al.
    law.predict(1e9, 2e10)                  # loss of a 1B model trained on 20B tokens
    n_opt, d_opt = law.optimal(1e21)        # compute-optimal split of C = 6 N D FLOPs
    boot = bootstrap(N, D, L, samples=200)  # refits on resampled runs (llmjax.scaling.bootstrap)
    boot.interval("alpha", 0.9)             # (lo, hi)
    frontier = fit_frontier(N, D, L)        # L(C) = E + K * C**-gamma on the best run per C

The fit follows Hoffmann et al. (2022, appendix D.2): the Huber loss of the log-loss residuals,
with the law written as a log-sum-exp, log L = LSE(e, a - alpha log N, b - beta log D) with
E = exp(e), A = exp(a), B = exp(b), minimised by L-BFGS-B from the starts of their grid with the
lowest objective (llmjax.scaling.huber); the lowest end wins (the first on ties: deterministic).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from llmjax.errors import ConfigError
from llmjax.scaling.huber import REFINE, minimise, start_grid

# Hoffmann et al.'s grid of starts (4,500). What fails from a start is a term negligible at
# every run (a = 0 with alpha = 2, say): its gradient vanishes and L-BFGS-B never revives it.
LAW_START_AXES: dict[str, tuple[float, ...]] = {
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
}
# The same for L(C) (log C is 30 to 60 for 1e13 to 1e26 FLOPs, gamma ~0.05 to 0.3).
COMPUTE_START_AXES: dict[str, tuple[float, ...]] = {
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "k": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0),
    "gamma": (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0),
}
LAW_PARAMETERS = ("E", "A", "B", "alpha", "beta")
MIN_RUNS = len(LAW_PARAMETERS) + 1
MIN_FRONTIER = 4  # three parameters, plus one point to check them against


# ----------------------------------------------------------------------------- laws


def _check_positive(owner: str, values: dict[str, float], *, zero_ok: Sequence[str] = ()) -> None:
    for name, v in values.items():
        low_ok = v >= 0 if name in zero_ok else v > 0
        if not (math.isfinite(v) and low_ok):
            bound = ">= 0" if name in zero_ok else "> 0"
            raise ConfigError(f"{owner}.{name} must be a finite number {bound}, got {v!r}")


def _scalar_or_array(x: np.ndarray) -> float | np.ndarray:
    return float(x) if x.ndim == 0 else x


@dataclass(frozen=True)
class ComputeLaw:
    """L(C) = E + K * C**-gamma: the lowest loss reachable with C training FLOPs."""

    E: float
    K: float
    gamma: float

    def __post_init__(self):
        _check_positive("ComputeLaw", asdict(self), zero_ok=("gamma",))

    def predict(self, C: ArrayLike) -> float | np.ndarray:
        c = np.asarray(C, dtype=np.float64)
        return _scalar_or_array(self.E + self.K * c ** (-self.gamma))

    def compute_at_loss(self, loss: ArrayLike) -> float | np.ndarray:
        """The FLOPs at which the frontier reaches `loss` (inf at or below E)."""
        gap = np.asarray(loss, dtype=np.float64) - self.E
        with np.errstate(divide="ignore", invalid="ignore"):
            c = np.where(
                gap > 0, (self.K / np.where(gap > 0, gap, 1.0)) ** (1 / self.gamma), np.inf
            )
        return _scalar_or_array(c)

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ComputeLaw:
        return cls(**{k: float(d[k]) for k in ("E", "K", "gamma")})


@dataclass(frozen=True)
class ScalingLaw:
    """L(N, D) = E + A / N**alpha + B / D**beta: the loss of N parameters trained on D tokens."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def __post_init__(self):
        _check_positive("ScalingLaw", asdict(self), zero_ok=("alpha", "beta"))

    def predict(self, N: ArrayLike, D: ArrayLike) -> float | np.ndarray:
        n, d = np.asarray(N, dtype=np.float64), np.asarray(D, dtype=np.float64)
        return _scalar_or_array(self.E + self.A * n ** (-self.alpha) + self.B * d ** (-self.beta))

    def _exponents(self) -> tuple[float, float]:
        if self.alpha <= 0 or self.beta <= 0:
            raise ConfigError(
                f"the compute-optimal allocation needs alpha > 0 and beta > 0 (got alpha = "
                f"{self.alpha}, beta = {self.beta}): with an exponent of 0 the loss does not fall "
                "with that axis over these runs, so there is nothing to trade; widen the grid"
            )
        return self.alpha, self.beta

    def optimal(self, C: ArrayLike) -> tuple[float | np.ndarray, float | np.ndarray]:
        """(N_opt, D_opt) minimising L at C = 6 N D FLOPs: N_opt = G (C/6)**(beta/(alpha+beta))
        with G = (alpha A / (beta B))**(1/(alpha+beta)), and D_opt = C / (6 N_opt)."""
        alpha, beta = self._exponents()
        c = np.asarray(C, dtype=np.float64)
        g = (alpha * self.A / (beta * self.B)) ** (1 / (alpha + beta))
        n = g * (c / 6) ** (beta / (alpha + beta))
        return _scalar_or_array(n), _scalar_or_array(c / (6 * n))

    def tokens_per_param(self, C: ArrayLike) -> float | np.ndarray:
        """D_opt / N_opt at C FLOPs: (C/6)**((alpha-beta)/(alpha+beta)) / G**2."""
        n, d = self.optimal(C)
        return d / n

    def loss_at_compute(self, C: ArrayLike) -> float | np.ndarray:
        """L on the compute-optimal frontier: L(N_opt(C), D_opt(C))."""
        return self.predict(*self.optimal(C))

    def compute_law(self) -> ComputeLaw:
        """`loss_at_compute` in closed form: on the frontier both terms fall as C**-gamma,
        gamma = alpha beta / (alpha + beta), so L(C) = E + (A G**-alpha + B G**beta) 6**gamma
        C**-gamma."""
        alpha, beta = self._exponents()
        g = (alpha * self.A / (beta * self.B)) ** (1 / (alpha + beta))
        gamma = alpha * beta / (alpha + beta)
        k = (self.A * g ** (-alpha) + self.B * g**beta) * 6**gamma
        return ComputeLaw(E=self.E, K=float(k), gamma=float(gamma))

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScalingLaw:
        return cls(**{k: float(d[k]) for k in LAW_PARAMETERS})

    def theta(self) -> np.ndarray:
        """The fit's coordinates (log E, log A, log B, alpha, beta): a start for `fit_law`."""
        return np.array(
            [math.log(self.E), math.log(self.A), math.log(self.B), self.alpha, self.beta]
        )


# Hoffmann et al.'s parametric fit to their own runs (Approach 3, as the paper rounds it).
HOFFMANN_2022 = ScalingLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


# ----------------------------------------------------------------------------- runs


def _values(name: str, x: ArrayLike) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ConfigError(
            f"{name} must be a 1-D sequence with one value per run, got shape {a.shape}"
        )
    bad = np.flatnonzero(~(np.isfinite(a) & (a > 0)))
    if bad.size:
        i = int(bad[0])
        raise ConfigError(
            f"{name} must hold positive finite values, one per run: {name}[{i}] = {float(a[i])!r}"
            + (f" ({bad.size} such values)" if bad.size > 1 else "")
        )
    return a


def _same_length(arrays: dict[str, np.ndarray]) -> None:
    (first, ref), *rest = arrays.items()
    for name, a in rest:
        if a.size != ref.size:
            raise ConfigError(
                f"{name} has {a.size} values but {first} has {ref.size}: give one of each per run"
            )


def check_runs(N: ArrayLike, D: ArrayLike, L: ArrayLike) -> tuple[np.ndarray, ...]:
    """N, D and L as float64 arrays, or a ConfigError saying what a fit of L(N, D) lacks."""
    arrays = {"N": _values("N", N), "D": _values("D", D), "L": _values("L", L)}
    _same_length(arrays)
    n, d, loss = arrays.values()
    distinct_n, distinct_d = np.unique(n).size, np.unique(d).size
    if n.size < MIN_RUNS or distinct_n < 2 or distinct_d < 2:
        raise ConfigError(
            f"fitting L(N, D) = E + A / N**alpha + B / D**beta ({len(LAW_PARAMETERS)} "
            f"parameters) needs at least {MIN_RUNS} runs with at least 2 distinct N and 2 distinct "
            f"D; given {n.size} runs with {distinct_n} distinct N and {distinct_d} distinct D: "
            "add runs at other model sizes or token counts"
        )
    return n, d, loss


# ----------------------------------------------------------------------------- fitting


def fit_law(
    N: ArrayLike,
    D: ArrayLike,
    L: ArrayLike,
    *,
    huber_delta: float = 1e-3,
    starts: ArrayLike | None = None,
    refine: int | None = REFINE,
) -> ScalingLaw:
    """Fits L(N, D) = E + A / N**alpha + B / D**beta to runs of N parameters trained on D
    tokens reaching validation loss L.

    `starts`: rows of (log E, log A, log B, alpha, beta), default `start_grid(LAW_START_AXES)`;
    `law.theta()` turns a known law into one. The objective is evaluated at every start, and
    L-BFGS-B runs from the `refine` lowest (from every start with refine=None, ~300x slower).
    """
    n, d, loss = check_runs(N, D, L)
    starts = start_grid(LAW_START_AXES) if starts is None else starts
    theta = minimise(np.log(np.stack([n, d])), np.log(loss), huber_delta, starts, refine)
    e, a, b, alpha, beta = (float(v) for v in theta)
    return ScalingLaw(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta)


def compute_frontier(N: ArrayLike, D: ArrayLike, L: ArrayLike, *, rtol: float = 1e-6) -> np.ndarray:
    """Indices of the runs on the compute-optimal frontier, by increasing C = 6 N D.

    In order of C, a run within `rtol` of the one before shares its budget, and a budget's
    lowest loss stands for it (an IsoFLOP grid gives one point per budget); a budget whose best
    loss is no lower than a cheaper budget's is off the frontier (so a plain N x D grid gives
    its lower envelope).
    """
    arrays = {"N": _values("N", N), "D": _values("D", D), "L": _values("L", L)}
    _same_length(arrays)
    n, d, loss = arrays.values()
    c = 6.0 * n * d
    order = np.argsort(c, kind="stable")
    # 6 N D of one IsoFLOP budget differs in the last bits from run to run: hence rtol.
    new_budget = c[order][1:] > c[order][:-1] * (1 + rtol)
    group_first = np.concatenate([[0], np.flatnonzero(new_budget) + 1])
    keep, best = [], math.inf
    for lo, hi in zip(group_first, [*group_first[1:], order.size], strict=True):
        members = order[lo:hi]
        i = int(members[np.argmin(loss[members])])  # the budget's best run (first on ties)
        if loss[i] < best:
            keep.append(i)
            best = loss[i]
    return np.array(keep, dtype=np.int64)


def fit_compute_law(
    C: ArrayLike,
    L: ArrayLike,
    *,
    huber_delta: float = 1e-3,
    starts: ArrayLike | None = None,
    refine: int | None = REFINE,
) -> ComputeLaw:
    """Fits L(C) = E + K * C**-gamma to frontier points (compute C, loss L), the same way as
    `fit_law`: Huber on log L of LSE(e, k - gamma log C). `starts`: rows of (log E, log K,
    gamma), default `start_grid(COMPUTE_START_AXES)`."""
    arrays = {"C": _values("C", C), "L": _values("L", L)}
    _same_length(arrays)
    c, loss = arrays.values()
    if c.size < MIN_FRONTIER or np.unique(c).size < 3:
        raise ConfigError(
            f"fitting L(C) = E + K * C**-gamma (3 parameters) needs at least {MIN_FRONTIER} "
            f"points with at least 3 distinct C; given {c.size} points with {np.unique(c).size} "
            "distinct C: add runs at other compute budgets"
        )
    starts = start_grid(COMPUTE_START_AXES) if starts is None else starts
    theta = minimise(np.log(c)[None], np.log(loss), huber_delta, starts, refine)
    e, k, gamma = (float(v) for v in theta)
    return ComputeLaw(E=math.exp(e), K=math.exp(k), gamma=gamma)


def fit_frontier(
    N: ArrayLike, D: ArrayLike, L: ArrayLike, *, huber_delta: float = 1e-3, rtol: float = 1e-6
) -> ComputeLaw:
    """`fit_compute_law` on the runs of `compute_frontier` (C = 6 N D)."""
    idx = compute_frontier(N, D, L, rtol=rtol)
    if idx.size < MIN_FRONTIER:
        raise ConfigError(
            f"the compute-optimal frontier of these runs has {idx.size} points; fitting L(C) "
            f"needs at least {MIN_FRONTIER}: add runs at larger compute budgets"
        )
    n, d, loss = (np.asarray(x, dtype=np.float64)[idx] for x in (N, D, L))
    return fit_compute_law(6.0 * n * d, loss, huber_delta=huber_delta)


__all__ = [
    "COMPUTE_START_AXES",
    "HOFFMANN_2022",
    "LAW_START_AXES",
    "ComputeLaw",
    "ScalingLaw",
    "check_runs",
    "compute_frontier",
    "fit_compute_law",
    "fit_frontier",
    "fit_law",
    "start_grid",
]
