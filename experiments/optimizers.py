"""Q12: why Adam / AdamW. SGD with momentum, Adam + L2, AdamW (decoupled decay) and Muon, each
at its own tuned learning rate, on the same model, data and budget.

Each optimizer's peak lr is chosen from a grid of the same size (seed 0, lowest validation
loss), then trained with 3 seeds: validation-loss curves, final training and validation loss
(the generalization gap: the training text is small enough to be seen several times) and the
weight norm each leaves. Then a learning-rate x weight-decay grid for Adam + L2 and AdamW:
Loshchilov & Hutter (2019) found that coupling the decay to the adaptive step (L2) ties the best
weight decay to the learning rate, and that decoupling separates them.

    python -m experiments.optimizers            # nano shape, 300 steps, 60 kB of training text
    python -m experiments.optimizers --quick
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from llmjax.config import PRESETS, apply_overrides
from llmjax.data import prepare_data
from llmjax.results import experiment_parser, seed_band, spread_bars, write_results
from llmjax.train.fit import with_vocab
from llmjax.train.sweep import curves, mean_columns, run_trials, summarize, tune

OPTIMIZERS = {
    "sgd+momentum": ["optim.name=sgd", "optim.momentum=0.9", "optim.weight_decay=0.0"],
    "adam+L2": ["optim.name=adam", "optim.weight_decay=0.01"],
    "adamw": ["optim.name=adamw", "optim.weight_decay=0.1"],
    "muon": ["optim.name=muon", "optim.momentum=0.95", "optim.weight_decay=0.1"],
}
FULL = {
    "overrides": [
        "train.steps=300",
        "optim.warmup_steps=30",
        "train.eval_every=50",
        "train.eval_batches=8",
        "train.log_every=10",
    ],  # fmt: skip
    "train_bytes": 60_000,
    "lrs": {
        "sgd+momentum": (0.1, 0.3, 1.0),
        "adam+L2": (1e-3, 3e-3, 1e-2),
        "adamw": (1e-3, 3e-3, 1e-2),
        "muon": (3e-3, 1e-2, 3e-2),
    },  # fmt: skip
    "seeds": (0, 1, 2),
    "grid_lr_factors": (1 / 3, 1.0, 3.0),
    "grid_wd": {"adam+L2": (0.001, 0.01, 0.1), "adamw": (0.01, 0.1, 1.0)},
}
QUICK = {
    "preset": "test-tiny",
    "overrides": [
        "train.steps=8",
        "optim.warmup_steps=2",
        "train.eval_every=4",
        "train.eval_batches=1",
        "train.log_every=2",
    ],  # fmt: skip
    "train_bytes": 4_000,
    "lrs": {"sgd+momentum": (0.3,), "adam+L2": (3e-3,), "adamw": (3e-3,), "muon": (1e-2,)},
    "seeds": (0,),
    "grid_lr_factors": (1.0,),
    "grid_wd": {"adam+L2": (0.1,), "adamw": (1.0,)},
}
COMMON = ["train.mfu=false"]


def _weight_norm(result, cfg) -> dict[str, float]:
    """The L2 norm of all weight matrices (ndim >= 2: projections, embeddings) and of all."""
    leaves = jax.tree.leaves(jax.device_get(result.state.params))
    matrices = [x for x in leaves if x.ndim >= 2]
    norm = lambda xs: float(np.sqrt(sum(float(np.sum(np.square(x))) for x in xs)))  # noqa: E731
    return {"weight_norm": norm(matrices), "param_norm": norm(leaves)}


def main(argv: list[str] | None = None):
    args = experiment_parser(__doc__.splitlines()[0]).parse_args(argv)
    s = QUICK if args.quick else FULL
    data = prepare_data(None, "byte")
    # a small training text, seen several times: room for a generalization gap
    data = dataclasses.replace(data, train=data.train[: s["train_bytes"]])
    base = apply_overrides(PRESETS[s.get("preset", "nano")], [*s["overrides"], *COMMON])
    base = with_vocab(base, data.tokenizer)
    run = dict(data=data, measure=_weight_norm)

    search = tune(base, OPTIMIZERS, "optim.lr", s["lrs"], **run)
    best = search.best
    tuned = {name: [*o, f"optim.lr={best[name]}"] for name, o in OPTIMIZERS.items()}
    trials = [*search.best_trials.values(), *run_trials(base, tuned, seeds=s["seeds"][1:], **run)]
    metrics_of = {
        "val_loss": lambda t: t.final_val,
        "train_loss": lambda t: t.final_train,
        "gap": lambda t: t.final_val - t.final_train,
        "weight_norm": lambda t: t.extra["weight_norm"],
        "wall_s": lambda t: t.wall_s,
    }
    rows = summarize(trials, metrics_of)
    for row in rows:
        row["lr"] = best[row["setting"]]

    # lr x weight decay, seed 0: each lr a factor of the tuned one
    grid = {}
    for name, decays in s["grid_wd"].items():
        cells = []
        for factor in s["grid_lr_factors"]:
            lr = float(f"{best[name] * factor:.3g}")
            settings = {f"{name} lr={lr} wd={wd}": [*OPTIMIZERS[name], f"optim.lr={lr}",
                                                    f"optim.weight_decay={wd}"]
                        for wd in decays}  # fmt: skip
            for (label, _), t in zip(
                settings.items(), run_trials(base, settings, **run), strict=True
            ):
                cells.append({"lr": lr, "wd": float(label.split("wd=")[1]), "val_loss": t.final_val,
                              "weight_norm": t.extra.get("weight_norm", float("nan"))})  # fmt: skip
        grid[name] = cells
    metrics = {
        "shape": _shape(base),
        "train_bytes": s["train_bytes"],
        "epochs": base.train.steps * base.data.batch_size * base.seq_len / s["train_bytes"],
        "lr_grid": {k: list(v) for k, v in s["lrs"].items()},
        "tuned_lr": best,
        "tuning": [{"setting": t.setting, "val_loss": t.final_val} for t in search.trials],
        "val_curves": curves(trials, "val"),
        "train_curves": curves(trials, "train"),
        "wd_grid": grid,
        "best_wd_by_lr": {name: _best_wd_by_lr(cells) for name, cells in grid.items()},
    }
    return write_results("optimizers", metrics | {"rows": rows}, rows=mean_columns(rows),
                         plots={"optimizers": _plot(metrics, rows)}, out_dir=args.out_dir,
                         quick=args.quick)  # fmt: skip


def _shape(cfg) -> str:
    m = cfg.model
    steps = cfg.train.steps
    return (
        f"{m.n_layers}L d={m.d_model} ctx={cfg.seq_len} batch={cfg.data.batch_size}, {steps} steps"
    )


def _best_wd_by_lr(cells: list[dict]) -> dict[str, float]:
    """For each lr of the grid, the weight decay with the lowest validation loss."""
    out = {}
    for lr in dict.fromkeys(c["lr"] for c in cells):
        row = [c for c in cells if c["lr"] == lr]
        out[str(lr)] = min(row, key=lambda c: c["val_loss"])["wd"]
    return out


def _plot(metrics, rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5), dpi=80)
    (curve_ax, bar_ax, norm_ax), (heat_l2, heat_w, tune_ax) = axes
    for name, runs in metrics["val_curves"].items():
        seed_band(curve_ax, runs, f"{name} (lr {metrics['tuned_lr'][name]})")
    curve_ax.set_xlabel("step")
    curve_ax.set_ylabel("validation loss (nats/byte)")
    curve_ax.set_title("tuned lr; mean and min-max over seeds")
    curve_ax.legend(fontsize=8)
    curve_ax.grid(alpha=0.3)

    names = [r["setting"] for r in rows]
    x = np.arange(len(names))
    for offset, key, label in ((-0.2, "train_loss", "train"), (0.2, "val_loss", "validation")):
        spread_bars(bar_ax, rows, key, label, offset, 0.4)
    bar_ax.set_xticks(x, names, fontsize=8)
    bar_ax.set_ylabel("final loss (nats/byte)")
    bar_ax.set_title(f"final losses ({metrics['epochs']:.1f} epochs of the training text)")
    bar_ax.legend()
    bar_ax.grid(axis="y", alpha=0.3)
    norm_ax.bar(x, [r.get("weight_norm", np.nan) for r in rows], color="tab:gray")
    norm_ax.set_xticks(x, names, fontsize=8)
    norm_ax.set_ylabel("L2 norm of all weight matrices")
    norm_ax.set_title("weights each optimizer leaves")
    norm_ax.grid(axis="y", alpha=0.3)

    for ax, name in ((heat_l2, "adam+L2"), (heat_w, "adamw")):
        cells = metrics["wd_grid"][name]
        lrs = sorted(dict.fromkeys(c["lr"] for c in cells))
        wds = sorted(dict.fromkeys(c["wd"] for c in cells))
        table = np.full((len(lrs), len(wds)), np.nan)
        for c in cells:
            table[lrs.index(c["lr"]), wds.index(c["wd"])] = c["val_loss"]
        finite = np.isfinite(table)
        shown = np.where(
            finite, table, np.nanmax(np.where(finite, table, np.nan)) if finite.any() else 0
        )
        image = ax.imshow(shown, cmap="viridis_r", aspect="auto", origin="lower")
        for i in range(len(lrs)):
            for j in range(len(wds)):
                ax.text(j, i, f"{table[i, j]:.3f}" if np.isfinite(table[i, j]) else "div.",
                        ha="center", va="center", color="w", fontsize=9)  # fmt: skip
        ax.set_xticks(range(len(wds)), [f"{w:g}" for w in wds])
        ax.set_yticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
        ax.set_xlabel("weight decay")
        ax.set_ylabel("peak learning rate")
        ax.set_title(f"{name}: validation loss (seed 0)")
        fig.colorbar(image, ax=ax, label="nats/byte")

    for name in metrics["lr_grid"]:
        points = [(float(t["setting"].split("optim.lr=")[1]), t["val_loss"])
                  for t in metrics["tuning"] if t["setting"].startswith(name + " ")]  # fmt: skip
        lrs, losses = zip(*points, strict=True)
        tune_ax.plot(lrs, np.where(np.isfinite(losses), losses, np.nan), "o-", label=name)
    tune_ax.set_xscale("log")
    tune_ax.set_xlabel("peak learning rate")
    tune_ax.set_ylabel("validation loss (nats/byte)")
    tune_ax.set_title("tuning: the same 3-point grid size each (seed 0)")
    tune_ax.legend(fontsize=8)
    tune_ax.grid(alpha=0.3)
    fig.suptitle(f"optimizers, {metrics['shape']}")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
