"""Scaling-law fits: known laws recovered from synthetic runs, closed forms against brute force,
bootstrap intervals that hold the truth, and errors that say what a grid lacks."""

import dataclasses
import json
import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from llmjax.errors import ConfigError
from llmjax.scaling import (
    HOFFMANN_2022,
    ComputeLaw,
    ScalingLaw,
    bootstrap,
    compute_frontier,
    fit_compute_law,
    fit_frontier,
    fit_law,
)

TRUE = ScalingLaw(E=1.7, A=400.0, B=410.0, alpha=0.34, beta=0.28)
NAMES = ("E", "A", "B", "alpha", "beta")
HELD_OUT = (3e7, 3e8)  # 3x past the grid's largest N and D
NOISE = 0.01  # multiplicative, log-normal


def grid():
    """5 x 4 runs: N in 1e5..1e7 parameters, D in 1e6..1e8 tokens."""
    n, d = np.meshgrid(np.logspace(5, 7, 5), np.logspace(6, 8, 4), indexing="ij")
    return n.ravel(), d.ravel()


@pytest.fixture(scope="module")
def noisy():
    """The grid's losses and the held-out run's, each with 1% noise, and their bootstrap."""
    n, d = grid()
    rng = np.random.default_rng(0)
    loss = TRUE.predict(n, d) * np.exp(NOISE * rng.standard_normal(n.size))
    held_out = TRUE.predict(*HELD_OUT) * math.exp(NOISE * rng.standard_normal())
    return n, d, loss, held_out, bootstrap(n, d, loss, samples=50, seed=0)


def test_noiseless_runs_give_back_all_five_parameters():
    n, d = grid()
    law = fit_law(n, d, TRUE.predict(n, d))
    for name in NAMES:
        assert getattr(law, name) == pytest.approx(getattr(TRUE, name), rel=1e-3), name


def test_noisy_runs_give_the_exponents_within_0_05(noisy):
    # 20 runs with 1% noise pin the exponents to a few hundredths (0.05 is ~15% of each);
    # E, A and B trade off against each other and are only checked through the bootstrap.
    law = noisy[4].law
    assert abs(law.alpha - TRUE.alpha) < 0.05 and abs(law.beta - TRUE.beta) < 0.05


def test_true_parameters_lie_in_the_90_percent_bootstrap_intervals(noisy):
    boot = noisy[4]
    assert boot.samples == 50 and boot.redrawn == 0
    for name in NAMES:
        lo, hi = boot.interval(name, 0.9)
        assert lo < getattr(TRUE, name) < hi, (name, lo, hi)
        assert lo < getattr(boot.law, name) < hi  # the full fit sits among its refits
    narrow, wide = boot.interval("alpha", 0.5), boot.interval("alpha", 0.9)
    assert wide[0] <= narrow[0] < narrow[1] <= wide[1]
    n_lo, n_hi = boot.interval(lambda law: law.optimal(1e18)[0])
    assert n_lo < TRUE.optimal(1e18)[0] < n_hi


def test_held_out_larger_run_lies_in_the_prediction_interval(noisy):
    *_, held_out, boot = noisy
    lo, hi = boot.prediction_interval(*HELD_OUT, 0.9)
    assert lo < held_out < hi
    fit_lo, fit_hi = boot.prediction_interval(*HELD_OUT, 0.9, noise=False)
    assert fit_lo < TRUE.predict(*HELD_OUT) < fit_hi
    assert hi - lo > fit_hi - fit_lo  # a new run adds its own noise to the fit's uncertainty
    # Several points at once: one interval per point.
    los, his = boot.prediction_interval([1e7, *HELD_OUT[:1]], [1e8, HELD_OUT[1]])
    assert los.shape == his.shape == (2,) and his[1] == pytest.approx(hi)


@pytest.mark.parametrize("compute", [1e12, 1e15, 1e18, 1e21])
def test_optimal_allocation_matches_brute_force(compute):
    def loss_at(log_n):
        n = math.exp(log_n)
        return TRUE.predict(n, compute / (6 * n))

    best = minimize_scalar(
        loss_at, bounds=(0.0, math.log(compute / 6)), method="bounded", options={"xatol": 1e-9}
    )
    n_opt, d_opt = TRUE.optimal(compute)
    assert n_opt == pytest.approx(math.exp(best.x), rel=1e-6)
    assert 6 * n_opt * d_opt == pytest.approx(compute, rel=1e-12)
    assert TRUE.tokens_per_param(compute) == pytest.approx(d_opt / n_opt, rel=1e-12)
    assert TRUE.loss_at_compute(compute) == pytest.approx(best.fun, rel=1e-12)
    assert TRUE.loss_at_compute(compute) <= TRUE.predict(2 * n_opt, d_opt / 2)


def test_optimal_takes_arrays():
    compute = np.array([1e18, 1e20, 1e22])
    n_opt, d_opt = HOFFMANN_2022.optimal(compute)
    assert n_opt.shape == d_opt.shape == (3,)
    assert n_opt[0] == pytest.approx(HOFFMANN_2022.optimal(1e18)[0], rel=1e-12)
    # alpha > beta: tokens per parameter grow with compute, as (C/6)**((a-b)/(a+b)) / G**2.
    ratio = HOFFMANN_2022.tokens_per_param(compute)
    assert np.all(np.diff(ratio) > 0)
    assert ratio[1] / ratio[0] == pytest.approx(100 ** ((0.34 - 0.28) / 0.62), rel=1e-9)


def test_loss_at_compute_is_the_closed_form_compute_law_and_its_fit_gives_it_back():
    law = TRUE.compute_law()
    assert law.E == TRUE.E
    assert law.gamma == pytest.approx(TRUE.alpha * TRUE.beta / (TRUE.alpha + TRUE.beta))
    compute = np.logspace(12, 22, 6)
    np.testing.assert_allclose(law.predict(compute), TRUE.loss_at_compute(compute), rtol=1e-12)
    fitted = fit_compute_law(compute, TRUE.loss_at_compute(compute))
    for name in ("E", "K", "gamma"):
        assert getattr(fitted, name) == pytest.approx(getattr(law, name), rel=1e-4), name
    assert law.compute_at_loss(law.predict(1e17)) == pytest.approx(1e17, rel=1e-9)
    assert law.compute_at_loss(law.E) == math.inf


def test_isoflop_frontier_keeps_each_budgets_best_run_and_fits_the_compute_law():
    budgets = np.logspace(12, 16, 5)
    n = np.concatenate([TRUE.optimal(c)[0] * np.logspace(-1, 1, 9) for c in budgets])
    d = np.repeat(budgets, 9) / (6 * n)
    loss = TRUE.predict(n, d)
    idx = compute_frontier(n, d, loss)
    assert idx.tolist() == [4 + 9 * i for i in range(5)]  # the middle run: N = N_opt
    fitted = fit_frontier(n, d, loss)
    for name in ("E", "K", "gamma"):
        assert getattr(fitted, name) == pytest.approx(getattr(TRUE.compute_law(), name), rel=1e-4)


def test_frontier_of_a_plain_grid_is_its_lower_envelope():
    n, d = grid()
    loss = TRUE.predict(n, d)
    idx = compute_frontier(n, d, loss)
    compute = 6 * n * d
    assert np.all(np.diff(compute[idx]) > 0) and np.all(np.diff(loss[idx]) < 0)
    for i in set(range(n.size)) - set(idx.tolist()):  # each run off it is beaten for less
        assert np.any((compute[idx] <= compute[i]) & (loss[idx] < loss[i]))
    assert 0 < idx.size < n.size


def test_fits_and_bootstrap_are_deterministic(noisy):
    n, d, loss, _, boot = noisy
    assert fit_law(n, d, loss) == boot.law
    again = bootstrap(n, d, loss, samples=4, seed=0, law=boot.law)
    assert again.laws == boot.laws[:4] and again.noise == boot.noise[:4]
    other = bootstrap(n, d, loss, samples=4, seed=1, law=boot.law)
    assert other.laws != again.laws


def test_results_are_plain_dicts(noisy):
    boot = noisy[4]
    assert ScalingLaw.from_dict(boot.law.to_dict()) == boot.law
    assert ComputeLaw.from_dict(TRUE.compute_law().to_dict()) == TRUE.compute_law()
    record = json.loads(json.dumps(boot.to_dict(0.9)))
    assert record["law"] == boot.law.to_dict() and record["samples"] == 50
    assert record["intervals"]["alpha"] == list(boot.interval("alpha", 0.9))
    assert set(record["intervals"]) == set(NAMES)


def test_too_few_runs_say_how_many_are_needed():
    n, d = grid()
    loss = TRUE.predict(n, d)
    with pytest.raises(ConfigError, match=r"at least 6 runs .* given 5 runs"):
        fit_law(n[:5], d[:5], loss[:5])
    one_d = d == d[0]
    with pytest.raises(ConfigError, match=r"at least 2 distinct N and 2 distinct D.* 1 distinct D"):
        fit_law(n[one_d].repeat(2), d[one_d].repeat(2), loss[one_d].repeat(2))
    with pytest.raises(ConfigError, match=r"at least 4 points .* given 3 points"):
        fit_compute_law([1e12, 1e13, 1e14], [3.0, 2.5, 2.2])
    with pytest.raises(ConfigError, match=r"frontier of these runs has 1 points"):
        fit_frontier(n[one_d][:1].repeat(6), d[one_d][:1].repeat(6), np.linspace(3, 2, 6))


@pytest.mark.parametrize(
    ("arg", "value", "match"),
    [
        ("N", -1.0, r"N must hold positive finite values.*N\[3\] = -1\.0"),
        ("D", 0.0, r"D must hold positive finite values.*D\[3\] = 0\.0"),
        ("L", math.nan, r"L must hold positive finite values.*L\[3\] = nan"),
    ],
)
def test_bad_values_name_the_argument_and_the_run(arg, value, match):
    n, d = grid()
    runs = {"N": n, "D": d, "L": TRUE.predict(n, d)}
    runs[arg] = runs[arg].copy()
    runs[arg][3] = value
    with pytest.raises(ConfigError, match=match):
        fit_law(**runs)
    with pytest.raises(ConfigError, match=match):
        bootstrap(**runs, samples=2)


def test_mismatched_lengths_and_bad_options_are_named():
    n, d = grid()
    loss = TRUE.predict(n, d)
    with pytest.raises(ConfigError, match=r"D has 19 values but N has 20"):
        fit_law(n, d[:-1], loss)
    with pytest.raises(ConfigError, match=r"L has 21 values but N has 20"):
        fit_law(n, d, np.append(loss, 2.0))
    with pytest.raises(ConfigError, match=r"N must be a 1-D sequence"):
        fit_law(n.reshape(5, 4), d, loss)
    with pytest.raises(ConfigError, match=r"huber_delta must be a finite number > 0"):
        fit_law(n, d, loss, huber_delta=0.0)
    with pytest.raises(ConfigError, match=r"starts must be rows of 5 finite values"):
        fit_law(n, d, loss, starts=[[0.0, 1.0, 2.0]])
    with pytest.raises(ConfigError, match=r"samples must be an integer >= 2"):
        bootstrap(n, d, loss, samples=1, law=TRUE)
    boot = bootstrap(n, d, loss, samples=2, law=TRUE)
    with pytest.raises(ConfigError, match=r"level must be in \(0, 1\)"):
        boot.interval("alpha", 90)
    with pytest.raises(ConfigError, match=r"unknown parameter 'gamma'; choose one of"):
        boot.interval("gamma")


def test_laws_check_their_values():
    with pytest.raises(ConfigError, match=r"ScalingLaw.A must be a finite number > 0, got -1"):
        dataclasses.replace(TRUE, A=-1.0)
    with pytest.raises(ConfigError, match=r"ComputeLaw.gamma must be a finite number >= 0"):
        ComputeLaw(E=1.7, K=1e3, gamma=math.inf)
    flat = dataclasses.replace(TRUE, beta=0.0)  # a fit may end on the bound
    assert flat.predict(1e6, 1e9) == pytest.approx(TRUE.E + TRUE.A * 1e6**-TRUE.alpha + TRUE.B)
    with pytest.raises(ConfigError, match=r"needs alpha > 0 and beta > 0"):
        flat.optimal(1e18)
