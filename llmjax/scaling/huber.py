"""Huber fit of log L = LSE(e, a_p - alpha_p log x_p), a sum of power laws, from a grid of starts.

    theta = minimise(np.log(np.stack([N, D])), np.log(L), 1e-3, start_grid(axes), REFINE)

The objective is evaluated at every start; L-BFGS-B runs from the REFINE lowest.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from llmjax.errors import ConfigError

# L-BFGS-B runs from this many starts of lowest objective. Checked on Chinchilla-like laws (E 1
# to 3, A and B 50 to 5,000, exponents 0.2 to 0.6) over 5 x 4 grids 2.5 decades wide, from
# 1e5-1e8 parameters and 1e6-1e10 tokens, with 1% noise: the lowest start of Hoffmann et al.'s
# grid always ended at the best minimum (that of runs from all 4,500 starts, where those were
# run), and 30-100% of the 16 lowest did; runs from a start without screening reach it
# 40-60% of the time.
REFINE = 16


def start_grid(axes: dict[str, Sequence[float]]) -> np.ndarray:
    """Every combination of the axes' values, one start per row, columns in the axes' order."""
    return np.array(list(itertools.product(*axes.values())), dtype=np.float64)


def _residuals(theta_SxQ, logx_PxR, logl_R):
    """log L_pred - log L per start and run, with the LSE's softmax weights and their sum.

    theta = (e, a_1..a_P, alpha_1..alpha_P): log L_pred = LSE(e, a_p - alpha_p log x_p)."""
    p = logx_PxR.shape[0]
    a_SxP, alpha_SxP = theta_SxQ[:, 1 : p + 1], theta_SxQ[:, p + 1 :]
    t_SxTxR = np.empty((theta_SxQ.shape[0], p + 1, logl_R.size))
    t_SxTxR[:, 0] = theta_SxQ[:, :1]
    t_SxTxR[:, 1:] = a_SxP[..., None] - alpha_SxP[..., None] * logx_PxR
    top_SxR = t_SxTxR.max(axis=1)
    w_SxTxR = np.exp(t_SxTxR - top_SxR[:, None])
    total_SxR = w_SxTxR.sum(axis=1)
    return top_SxR + np.log(total_SxR) - logl_R, w_SxTxR, total_SxR


def _huber(r, delta):
    """Huber(r) / delta summed over runs (0.5 r^2 within delta, delta (|r| - delta/2) out), and
    Huber'(r). Dividing by delta leaves the minimum where it is but keeps the objective near 1:
    L-BFGS-B's stopping test is relative to max(|f|, 1), and the plain sum (~1e-4 for 1% noise)
    stopped most starts far from the minimum."""
    g = np.clip(r, -delta, delta)
    return np.sum(g * (r - 0.5 * g), axis=-1) / delta, g


def _objective(theta, logx_PxR, logl_R, delta):
    """`_huber` of one start's residuals, and its gradient."""
    r, w, total = _residuals(theta[None], logx_PxR, logl_R)
    f, g = _huber(r[0], delta)
    dt_TxR = w[0] * (g / (delta * total[0]))  # d f / d t, through the LSE's softmax weights
    grad = [dt_TxR[:1].sum(axis=1), dt_TxR[1:].sum(axis=1), -(dt_TxR[1:] * logx_PxR).sum(axis=1)]
    return float(f), np.concatenate(grad)


def minimise(logx_PxR, logl_R, delta, starts, refine) -> np.ndarray:
    """The best (e, a_1..a_P, alpha_1..alpha_P) for log L = LSE(e, a_p - alpha_p log x_p): the
    best end of L-BFGS-B runs (exponents kept >= 0) from the `refine` starts of lowest
    objective (from all of them with refine=None)."""
    # Imported here: scipy costs ~1 s to import, and llmjax.scaling is imported by training.
    from scipy.optimize import minimize
    from threadpoolctl import threadpool_limits

    if not (isinstance(delta, int | float) and math.isfinite(delta) and delta > 0):
        raise ConfigError(f"huber_delta must be a finite number > 0, got {delta!r}")
    p = logx_PxR.shape[0]
    starts = np.atleast_2d(np.asarray(starts, dtype=np.float64))
    if starts.ndim != 2 or starts.shape[1] != 2 * p + 1 or not np.isfinite(starts).all():
        raise ConfigError(
            f"starts must be rows of {2 * p + 1} finite values, got an array of shape "
            f"{starts.shape}"
        )
    if refine is not None:
        if not (isinstance(refine, int) and refine >= 1):
            raise ConfigError(f"refine must be an integer >= 1 or None, got {refine!r}")
        screened = _huber(_residuals(starts, logx_PxR, logl_R)[0], delta)[0]
        starts = starts[np.argsort(screened, kind="stable")[:refine]]
    bounds = [(None, None)] * (p + 1) + [(0.0, None)] * p
    best, best_f = None, math.inf
    # The optimiser's steps call BLAS on 5-vectors: threads only add wake-up latency (~25x
    # slower on a busy machine), so BLAS runs on one thread for the fit.
    with threadpool_limits(limits=1, user_api="blas"):
        for start in starts:
            res = minimize(
                _objective,
                start,
                args=(logx_PxR, logl_R, delta),
                jac=True,
                method="L-BFGS-B",
                bounds=bounds,
                options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 5000},
            )
            if math.isfinite(res.fun) and res.fun < best_f:  # ties: the first start wins
                best, best_f = res.x, res.fun
    if best is None:
        raise ConfigError("no start gave a finite objective: check the runs' values")
    return best
