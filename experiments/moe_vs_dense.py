"""Mixture of experts against dense MLPs at equal active and at equal total parameters.

Four settings on the same data and shape: a dense MLP of width F; a dense MLP of width E * F / 2
(the MoE's total parameters); E experts of width F / 2, top-2 (the first dense model's active
parameters, plus the router), with the load-balancing loss; the same MoE without it (router
z-loss kept). Each at its own peak lr from the same grid (tuned on seed 0), then 3 seeds:
validation loss against steps and against training wall time, the final losses, and the
experts' load balance over training (the coefficient of variation of each expert's share of
the assignments, averaged over layers: 0 is perfectly balanced).

    python -m experiments.moe_vs_dense            # d=64, 4 layers, ctx 64, batch 8, 250 steps
    python -m experiments.moe_vs_dense --quick

The full run is 16 trainings (4 settings x (2 lrs + 2 more seeds)): about 3.5 minutes on 2
quiet cores with the CPU grouped-matmul kernel (training 4.3 s dense-active, 15.5 s dense-total,
5.6 s MoE per 250 steps; the rest is compilation and evaluation).
"""

from __future__ import annotations

import numpy as np

from llmjax import scaling
from llmjax.config import PRESETS, apply_overrides
from llmjax.data import prepare_data
from llmjax.results import experiment_parser, seed_band, spread_bars, write_results
from llmjax.train.fit import with_vocab
from llmjax.train.sweep import curves, mean_columns, run_trials, summarize, tune

FULL = {
    "overrides": [
        "model.d_model=64",
        "model.n_heads=4",
        "model.n_layers=4",
        "model.max_seq_len=64",
        "data.batch_size=8",
        "train.steps=250",
        "optim.warmup_steps=25",
        "train.eval_every=50",
        "train.eval_batches=8",
        "train.log_every=10",
    ],  # fmt: skip
    "d_ff": 256,
    "experts": 8,
    "lrs": (1e-3, 3e-3),
    "seeds": (0, 1, 2),
}
QUICK = {
    "overrides": [
        "model.d_model=32",
        "model.n_heads=2",
        "model.n_layers=2",
        "model.max_seq_len=32",
        "data.batch_size=4",
        "train.steps=4",
        "optim.warmup_steps=1",
        "train.eval_every=2",
        "train.eval_batches=1",
        "train.log_every=2",
    ],  # fmt: skip
    "d_ff": 64,
    "experts": 4,
    "lrs": (3e-3,),
    "seeds": (0,),
}
COMMON = ["train.mfu=false", "model.dropout=0.0", "model.scan_unroll=1"]


def settings(d_ff: int, experts: int) -> dict[str, list[str]]:
    moe = [f"model.moe.n_experts={experts}", "model.moe.top_k=2", f"model.moe.d_expert={d_ff // 2}"]
    return {
        "dense, equal active": [f"model.d_ff={d_ff}"],
        "dense, equal total": [f"model.d_ff={experts * d_ff // 2}"],
        "MoE top-2, aux loss": moe,
        "MoE top-2, no aux loss": [*moe, "model.moe.aux_loss_coef=0.0"],
    }


def _measure(result, cfg) -> dict[str, list]:
    """The routing metrics of every train record, and the training wall time at each step: the
    logging intervals' tokens over their tokens/s, evaluation left out (the records' rates
    leave out the first step's compilation; an interval without a rate is counted at the
    next one's)."""
    train = [r for r in result.history if r.get("split") == "train"]
    tokens = cfg.data.batch_size * cfg.seq_len
    rates = [r.get("tokens_per_s") or 0.0 for r in train]
    for i in range(len(rates) - 2, -1, -1):
        rates[i] = rates[i] or rates[i + 1]
    rates = [max(rate, 1e-9) for rate in rates]
    elapsed, last, times = 0.0, 0, []
    for r, rate in zip(train, rates, strict=True):
        elapsed += (r["step"] - last) * tokens / rate
        last = r["step"]
        times.append((r["step"], elapsed))
    out = {"train_time": times}
    for key in ("moe_load_cv", "moe_load_max", "moe_aux_loss"):
        if train and key in train[0]:
            out[key] = [(r["step"], r[key]) for r in train]
    return out


def main(argv: list[str] | None = None):
    args = experiment_parser(__doc__.splitlines()[0]).parse_args(argv)
    s = QUICK if args.quick else FULL
    data = prepare_data(None, "byte")
    base = with_vocab(apply_overrides(PRESETS["nano"], [*s["overrides"], *COMMON]), data.tokenizer)
    named = settings(s["d_ff"], s["experts"])

    search = tune(base, named, "optim.lr", s["lrs"], data=data, measure=_measure)
    tuned = {name: [*o, f"optim.lr={search.best[name]}"] for name, o in named.items()}
    more = run_trials(base, tuned, seeds=s["seeds"][1:], data=data, measure=_measure)
    trials = [*search.best_trials.values(), *more]

    def final_cv(t):
        cv = t.extra.get("moe_load_cv")
        return cv[-1][1] if cv else float("nan")

    rows = summarize(trials, {"val_loss": lambda t: t.final_val,
                              "train_loss": lambda t: t.final_train,
                              "wall_s": lambda t: t.wall_s, "final_load_cv": final_cv})  # fmt: skip
    for row in rows:
        cfg = apply_overrides(base, named[row["setting"]]).model
        row["lr"] = search.best[row["setting"]]
        row["active_matmul_params"] = scaling.matmul_params(cfg)
        row["total_params"] = scaling.param_counts(cfg).total
    metrics = {
        "shape": f"d={base.model.d_model}, {base.model.n_layers} layers, ctx {base.seq_len}, "
        f"batch {base.data.batch_size}, {base.train.steps} steps, dense d_ff {s['d_ff']}, "
        f"{s['experts']} experts of width {s['d_ff'] // 2}, top-2",
        "lr_grid": list(s["lrs"]),
        "tuning": [{"setting": t.setting, "val_loss": t.final_val} for t in search.trials],
        "val_curves": curves(trials, "val"),
        "extra": {name: [t.extra for t in trials if t.setting == name] for name in named},
    }
    return write_results("moe_vs_dense", metrics | {"rows": rows}, rows=mean_columns(rows),
                         plots={"moe_vs_dense": _plot(metrics, rows)}, out_dir=args.out_dir,
                         quick=args.quick)  # fmt: skip


def _time_axis(val, train_time):
    """Each validation step's training wall time, interpolated between train records."""
    steps, times = zip(*([(0, 0.0), *train_time]), strict=True)
    return [(float(np.interp(step, steps, times)), loss) for step, loss in val]


def _plot(metrics, rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(14, 9), dpi=80)
    (step_ax, time_ax), (bar_ax, load_ax) = axes
    for k, (name, runs) in enumerate(metrics["val_curves"].items()):
        seed_band(step_ax, runs, name, color=f"C{k}")
        extras = metrics["extra"][name]
        for i, (run, extra) in enumerate(zip(runs, extras, strict=False)):
            if extra.get("train_time"):
                timed = _time_axis(run, extra["train_time"])
                time_ax.plot(*zip(*timed, strict=True), color=f"C{k}", alpha=0.7,
                             label=name if i == 0 else None)  # fmt: skip
        cv = [e["moe_load_cv"] for e in extras if "moe_load_cv" in e]
        if cv:
            seed_band(load_ax, cv, name, color=f"C{k}")
    step_ax.set_xlabel("step")
    step_ax.set_ylabel("validation loss (nats/byte)")
    step_ax.set_title("each at its tuned lr; mean and min-max over seeds")
    time_ax.set_xlabel("training wall time (s; compilation and evaluation excluded)")
    time_ax.set_ylabel("validation loss (nats/byte)")
    time_ax.set_title("against time on this CPU (one line per seed)")
    spread_bars(bar_ax, rows, "val_loss", "final validation loss")
    bar_ax.set_xticks(range(len(rows)))
    bar_ax.set_xticklabels([r["setting"] for r in rows], rotation=12, fontsize=8)
    # Zoomed to the bars' range, error bars included (bars from 0 would hide the differences).
    low = [r.get("val_loss_min", r.get("val_loss", np.nan)) for r in rows]
    high = [r.get("val_loss_max", r.get("val_loss", np.nan)) for r in rows]
    if np.isfinite(low).any():
        pad = 0.1 * max(np.nanmax(high) - np.nanmin(low), 0.01)
        bar_ax.set_ylim(np.nanmin(low) - pad, np.nanmax(high) + pad)
    bar_ax.set_ylabel("validation loss (nats/byte)")
    bar_ax.set_title("final validation loss (mean, min-max over seeds; y axis zoomed)")
    load_ax.set_xlabel("step")
    load_ax.set_ylabel("expert load CV (std / mean of each expert's share)")
    load_ax.set_title("load balance over training, with and without the balance loss")
    for ax in (step_ax, time_ax, load_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"MoE vs dense: {metrics['shape']}")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
