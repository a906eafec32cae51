"""Q13: LayerNorm against BatchNorm (and RMSNorm), before or after each sublayer, in a causal LM.

Each of the 6 norm x placement settings gets its own peak lr from the same 3-point grid (seed
0, lowest validation loss) and is trained with 3 seeds. Then, at the tuned lr of the pre-norm
placement, batch sizes down to 1 (3 seeds each). For every trained model:

- validation loss as evaluated (BatchNorm: running averages) and in training mode (batch
  statistics of the validation batch itself);
- future leakage, through gradients as the causality test does: the share of d loss[t] /
  d embeddings that falls on positions after t, and on other rows of the batch;
- padding: how much the loss of a row's real tokens moves when the rest of the batch's rows
  are right-padded (half the tokens).

    python -m experiments.normalization          # nano shape, 250 steps
    python -m experiments.normalization --quick
"""

from __future__ import annotations

import jax
import numpy as np

from llmjax.analysis.leakage import apply_in_mode, gradient_leakage, padding_shift
from llmjax.config import PRESETS, apply_overrides
from llmjax.data import prepare_data, val_batches
from llmjax.models import build_model
from llmjax.objectives.losses import token_log_probs
from llmjax.results import experiment_parser, seed_band, spread_bars, write_results
from llmjax.train.fit import with_vocab
from llmjax.train.sweep import curves, mean_columns, run_trials, summarize, tune

NORMS = ("layernorm", "rmsnorm", "batchnorm")
PLACEMENTS = ("pre", "post")
FULL = {
    "overrides": [
        "train.steps=250",
        "optim.warmup_steps=25",
        "train.eval_every=50",
        "train.eval_batches=8",
        "train.log_every=10",
    ],  # fmt: skip
    "lrs": (1e-3, 3e-3, 1e-2),
    "seeds": (0, 1, 2),
    "batch_sizes": (1, 4),
    "probe_batches": 8,
}
QUICK = {
    "preset": "test-tiny",
    "overrides": [
        "train.steps=6",
        "optim.warmup_steps=2",
        "train.eval_every=3",
        "train.eval_batches=1",
        "train.log_every=2",
    ],  # fmt: skip
    "lrs": (3e-3,),
    "seeds": (0,),
    "batch_sizes": (1,),
    "probe_batches": 1,
}
COMMON = ["train.mfu=false", "model.dropout=0.0"]


def _probe(data, n_batches: int):
    """measure(result, cfg): the train-vs-eval, leakage and padding numbers of a trained run."""

    def measure(result, cfg) -> dict[str, float]:
        model = build_model(cfg.model)
        variables = {"params": result.state.params, **result.state.model_state}
        batches = list(val_batches(data.val, batch_size=max(cfg.data.batch_size, 2),
                                   seq_len=cfg.seq_len, max_batches=n_batches))  # fmt: skip
        out = {"val_loss_train_mode": _loss(model, variables, batches, train_mode=True)}
        probe = batches[0]
        for mode, train_mode in (("train_mode", True), ("eval_mode", False)):
            leak = gradient_leakage(model, variables, probe["inputs"], probe["targets"],
                                    train_mode=train_mode)  # fmt: skip
            out[f"future_share_{mode}"] = leak["future"]
            out[f"other_rows_share_{mode}"] = leak["other_rows"]
            out[f"padding_shift_{mode}"] = padding_shift(
                model, variables, probe["inputs"], probe["targets"], pad_fraction=0.5,
                train_mode=train_mode,
            )  # fmt: skip
        return out

    return measure


def _loss(model, variables, batches, *, train_mode: bool) -> float:
    """Mean per-token loss over the batches, applied in training mode or as evaluated."""

    @jax.jit
    def losses(inputs, targets):
        logits = apply_in_mode(model, variables, inputs, train_mode).logits
        return -token_log_probs(logits, targets)

    total = count = 0.0
    for b in batches:
        total += float((np.asarray(losses(b["inputs"], b["targets"])) * b["mask"]).sum())
        count += float(b["mask"].sum())
    return total / count


def main(argv: list[str] | None = None):
    args = experiment_parser(__doc__.splitlines()[0]).parse_args(argv)
    s = QUICK if args.quick else FULL
    data = prepare_data(None, "byte")
    base = apply_overrides(PRESETS[s.get("preset", "nano")], [*s["overrides"], *COMMON])
    base = with_vocab(base, data.tokenizer)
    run = dict(data=data, measure=_probe(data, s["probe_batches"]))

    settings = {f"{norm} {place}": [f"model.norm={norm}", f"model.norm_position={place}"]
                for norm in NORMS for place in PLACEMENTS}  # fmt: skip
    search = tune(base, settings, "optim.lr", s["lrs"], **run)
    tuned = {name: [*o, f"optim.lr={search.best[name]}"] for name, o in settings.items()}
    trials = [*search.best_trials.values(), *run_trials(base, tuned, seeds=s["seeds"][1:], **run)]
    batch_settings = {f"{norm} pre batch={b}": [*tuned[f"{norm} pre"], f"data.batch_size={b}"]
                      for b in s["batch_sizes"] for norm in NORMS}  # fmt: skip
    batch_trials = run_trials(base, batch_settings, seeds=s["seeds"], **run)

    measured = ["val_loss_train_mode", "future_share_train_mode", "future_share_eval_mode",
                "other_rows_share_train_mode", "padding_shift_train_mode",
                "padding_shift_eval_mode"]  # fmt: skip
    metrics_of = {"val_loss": lambda t: t.final_val, "train_loss": lambda t: t.final_train}
    metrics_of |= {k: (lambda t, k=k: t.extra[k]) for k in measured}
    rows = summarize(trials, metrics_of)
    for row in rows:
        row["lr"] = search.best[row["setting"]]
    batch_rows = summarize(
        [t for t in trials if t.setting.endswith(" pre")] + batch_trials,
        {
            "val_loss": lambda t: t.final_val,
            "val_loss_train_mode": metrics_of["val_loss_train_mode"],
        },
    )
    for row in batch_rows:
        name = row["setting"]
        row["batch_size"] = (
            int(name.split("batch=")[1]) if "batch=" in name else base.data.batch_size
        )
        row["norm"] = name.split(" ")[0]
    metrics = {
        "shape": f"{base.model.n_layers}L d={base.model.d_model} ctx={base.seq_len}, "
        f"{base.train.steps} steps",
        "batch_size": base.data.batch_size,
        "lr_grid": list(s["lrs"]),
        "tuned_lr": search.best,
        "tuning": [{"setting": t.setting, "val_loss": t.final_val} for t in search.trials],
        "val_curves": curves(trials, "val"),
        "batch_rows": batch_rows,
    }
    return write_results("normalization", metrics | {"rows": rows}, rows=mean_columns(rows),
                         plots={"normalization": _plot(metrics, rows)}, out_dir=args.out_dir,
                         quick=args.quick)  # fmt: skip


def _plot(metrics, rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(14, 9), dpi=80)
    (curve_ax, loss_ax), (leak_ax, batch_ax) = axes
    for name, runs in metrics["val_curves"].items():
        seed_band(curve_ax, runs, name, alpha=0.15, linestyle="-" if name.endswith("pre") else "--")
    curve_ax.set_xlabel("step")
    curve_ax.set_ylabel("validation loss (nats/byte)")
    curve_ax.set_title(f"batch {metrics['batch_size']}, each at its tuned lr; min-max over seeds")
    curve_ax.legend(fontsize=8)
    curve_ax.grid(alpha=0.3)

    names = [r["setting"] for r in rows]
    spread_bars(loss_ax, rows, "val_loss", "evaluated (BatchNorm: running averages)", -0.2, 0.4)
    spread_bars(loss_ax, rows, "val_loss_train_mode", "training mode (batch statistics)", 0.2, 0.4)
    loss_ax.set_xticks(range(len(names)), names, fontsize=8, rotation=15)
    loss_ax.set_ylabel("final validation loss (nats/byte)")
    loss_ax.set_title("train vs eval behaviour")
    loss_ax.legend(fontsize=8)
    loss_ax.grid(axis="y", alpha=0.3)

    spread_bars(
        leak_ax, rows, "future_share_train_mode", "future positions, training mode", -0.27, 0.27
    )
    spread_bars(
        leak_ax, rows, "other_rows_share_train_mode", "other rows, training mode", 0.0, 0.27
    )
    spread_bars(leak_ax, rows, "future_share_eval_mode", "future positions, evaluated", 0.27, 0.27)
    leak_ax.set_xticks(range(len(names)), names, fontsize=8, rotation=15)
    leak_ax.set_ylabel("share of |d loss[t] / d embeddings|")
    leak_ax.set_title("what the loss at position t depends on (0 = causal)")
    leak_ax.legend(fontsize=8)
    leak_ax.grid(axis="y", alpha=0.3)

    for norm in NORMS:
        mine = sorted((r for r in metrics["batch_rows"] if r["norm"] == norm),
                      key=lambda r: r["batch_size"])  # fmt: skip
        x = [r["batch_size"] for r in mine]
        batch_ax.errorbar(x, [r.get("val_loss", np.nan) for r in mine],
                          yerr=[[r.get("val_loss", 0) - r.get("val_loss_min", 0) for r in mine],
                                [r.get("val_loss_max", 0) - r.get("val_loss", 0) for r in mine]],
                          marker="o", capsize=3, label=f"{norm} pre")  # fmt: skip
    batch_ax.set_xscale("log", base=2)
    batch_ax.set_xlabel("batch size (sequences of the same steps)")
    batch_ax.set_ylabel("final validation loss (nats/byte)")
    batch_ax.set_title("batch size; min-max over seeds")
    batch_ax.legend(fontsize=8)
    batch_ax.grid(alpha=0.3)
    fig.suptitle(f"normalization, {metrics['shape']}")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
