"""Q15: what causes training instability? Learning rate x width with and without warmup,
clipping, QK-norm and z-loss; init scale, float16 and long sequences (Wortsman et al. 2023).

Byte-level models of the built-in corpus, trained over one grid of peak learning rates at
two widths (head dim fixed, heads grow with width, as Wortsman et al. scale), for a baseline
(AdamW, linear warmup, cosine decay, global-norm clipping at 1) and the same grid with each
change: no warmup, no clipping, QK-norm, z-loss (1e-4 log^2 Z). At the small width and the
upper three lrs: a 10x larger init std, float16 compute without and with dynamic loss
scaling, and a 4x longer context at the same tokens per step. For every run
(llmjax.analysis.instability): whether it diverged, its loss spikes, its largest pre-softmax
attention logit per layer over training, and its output logits' log Z; for every setting and
width, Wortsman et al.'s learning-rate sensitivity (mean over the grid of min(final loss,
initial loss) minus the best). The key comparison, baseline vs QK-norm vs z-loss at the two
highest lrs of the wider model, runs 3 seeds.

    python -m experiments.instability            # 2L d=32/128, ctx 64, batch 8, 80 steps
    python -m experiments.instability --quick
"""

from __future__ import annotations

import math

import numpy as np

from llmjax.analysis.instability import (
    SPIKE_MIN_HISTORY,
    SPIKE_THRESHOLD,
    SPIKE_WINDOW,
    InstabilityMonitor,
    lr_sensitivity,
)
from llmjax.config import PRESETS, apply_overrides
from llmjax.data import prepare_data, val_batches
from llmjax.results import experiment_parser, seed_band, write_results
from llmjax.runtime import enable_compilation_cache
from llmjax.train.fit import with_vocab
from llmjax.train.sweep import run_trial, summarize

# Each over the whole lr x width grid.
GRID = {
    "baseline": [],
    "no warmup": ["optim.warmup_steps=0"],
    "no clipping": ["optim.clip_norm=none"],
    "qk-norm": ["model.qk_norm=true"],
    "z-loss": ["train.z_loss=1e-4"],
}
# XLA:CPU cannot compile jax.nn.dot_product_attention in float16, so the float16 runs use the
# reference kernel (logits and softmax in float32, the same numbers as the baseline's kernel).
FP16 = ["model.dtype=float16", "model.attention=reference", "train.loss_scale_growth_interval=50"]
FULL = {
    "overrides": [
        "model.n_layers=2",
        "model.max_seq_len=64",
        "data.batch_size=8",
        "train.steps=80",
        "optim.warmup_steps=8",
        "train.eval_every=80",
        "train.eval_batches=4",
        "train.log_every=10",
    ],  # fmt: skip
    "grid": tuple(GRID),
    "head_dim": 16,
    "widths": (32, 128),
    "lrs": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
    # the other causes, at one width and the upper lrs, against the baseline there
    "factors": ("init std 0.2", "fp16", "fp16 + loss scaling", "4x context"),
    "factor_width": 32,
    "factor_lrs": (1e-2, 3e-2, 1e-1),
    # the key comparison, at the largest width
    "seeds": (0, 1, 2),
    "seed_lrs": (3e-2, 1e-1),
    "seed_settings": ("baseline", "qk-norm", "z-loss"),
    "probe_every": 10,
}
QUICK = {
    "overrides": [
        "model.n_layers=2",
        "model.max_seq_len=16",
        "data.batch_size=4",
        "train.steps=6",
        "optim.warmup_steps=2",
        "train.eval_every=6",
        "train.eval_batches=1",
        "train.log_every=2",
    ],  # fmt: skip
    "grid": ("baseline", "qk-norm"),
    "head_dim": 8,
    "widths": (16,),
    "lrs": (3e-2,),
    "factors": ("fp16", "4x context"),
    "factor_width": 16,
    "factor_lrs": (3e-2,),
    "seeds": (0,),
    "seed_lrs": (3e-2,),
    "seed_settings": ("baseline", "qk-norm"),
    "probe_every": 3,
}
COMMON = ["train.mfu=false", "model.dropout=0.0", "model.scan_unroll=2"]


def _factors(base) -> dict[str, list[str]]:
    """The other causes the study sheet names, each a change to the baseline; the longer
    context keeps the tokens per step."""
    ctx, batch = base.seq_len, base.data.batch_size
    return {
        "init std 0.2": ["model.init_std=0.2"],  # 10x GPT-2's
        "fp16": [*FP16, "train.loss_scale=none"],
        "fp16 + loss scaling": [*FP16, "train.loss_scale=dynamic"],
        "4x context": [f"model.max_seq_len={4 * ctx}", f"data.batch_size={max(1, batch // 4)}"],
    }


def _width(d: int, head_dim: int) -> list[str]:
    return [f"model.d_model={d}", f"model.n_heads={max(1, d // head_dim)}"]


def main(argv: list[str] | None = None):
    args = experiment_parser(__doc__.splitlines()[0]).parse_args(argv)
    s = QUICK if args.quick else FULL
    # Runs of one model shape then share their initializer and evaluation programs, and the
    # seeds of one setting and lr the whole train step: only the step is compiled per lr.
    enable_compilation_cache()
    data = prepare_data(None, "byte")
    base = apply_overrides(PRESETS["nano"], [*s["overrides"], *COMMON])
    base = with_vocab(base, data.tokenizer)
    factors = {name: o for name, o in _factors(base).items() if name in s["factors"]}
    widest = max(s["widths"])

    cells, trials = [], []

    def run(setting: str, overrides: list[str], width: int, lr: float, seed: int) -> None:
        o = [*_width(width, s["head_dim"]), *overrides, f"optim.lr={lr}"]
        cfg = apply_overrides(base, o)
        probe = next(val_batches(data.val, batch_size=cfg.data.batch_size, seq_len=cfg.seq_len))
        monitor = InstabilityMonitor(probe["inputs"], every=s["probe_every"])
        trial = run_trial(base, f"{setting} lr={lr:g}", o, seed, data=data, hooks=[monitor])
        summary = monitor.summary()
        val = trial.val[-1][1] if trial.val else math.nan  # none when it stopped non-finite
        cell = {"setting": setting, "width": width, "lr": lr, "seed": seed, "val_loss": val,
                **summary, "diverged": summary["diverged"] or trial.diverged,
                "attention_logit_by_layer": monitor.probes[-1]["max_attention_logit"]
                if monitor.probes else [],
                "probes": [{k: p[k] for k in ("step", "max_attention_logit", "log_z_mean")}
                           for p in monitor.probes]}  # fmt: skip
        if width == widest and lr in s["seed_lrs"] and setting in s["seed_settings"]:
            cell["losses"] = monitor.losses
            trial.extra = cell
            trials.append(trial)
        cells.append(cell)

    for setting in s["grid"]:
        for width in s["widths"]:
            for lr in s["lrs"]:
                run(setting, GRID[setting], width, lr, s["seeds"][0])
    for setting, overrides in factors.items():
        for lr in s["factor_lrs"]:
            run(setting, overrides, s["factor_width"], lr, s["seeds"][0])
    for seed in s["seeds"][1:]:  # seed-major: a slow spell of the machine hits all alike
        for setting in s["seed_settings"]:
            for lr in s["seed_lrs"]:
                run(setting, GRID[setting], widest, lr, seed)

    rows = _grid_rows(cells, s)
    seed_rows = summarize(trials, {
        "val_loss": lambda t: t.extra["val_loss"],
        "max_attention_logit": lambda t: t.extra["max_attention_logit"],
        "final_log_z": lambda t: t.extra["final_log_z"],
        "spikes": lambda t: t.extra["spikes"],
    })  # fmt: skip
    m = base.model
    metrics = {
        "shape": f"{m.n_layers}L d={'/'.join(map(str, s['widths']))} head dim {s['head_dim']}, "
        f"ctx {base.seq_len}, batch {base.data.batch_size}, {base.train.steps} steps "
        f"(warmup {base.optim.warmup_steps}, cosine)",
        "grid": list(s["grid"]),
        "lr_grid": list(s["lrs"]),
        "widths": list(s["widths"]),
        "factor_width": s["factor_width"],
        "seed_lrs": list(s["seed_lrs"]),
        "seeds": list(s["seeds"]),
        "factors": list(factors),
        "factor_lrs": list(s["factor_lrs"]),
        "factor_context": f"ctx {4 * base.seq_len}, batch {max(1, base.data.batch_size // 4)}",
        "spike_definition": f"a run of steps whose loss is non-finite or > {1 + SPIKE_THRESHOLD:g}"
        f" x the median of the (up to) {SPIKE_WINDOW} steps before, from step "
        f"{SPIKE_MIN_HISTORY + 1} (llmjax.analysis.instability.spikes)",
        "seed_comparison": seed_rows,
        "cells": cells,
    }
    return write_results("instability", metrics | {"rows": rows}, rows=rows,
                         plots={"instability": _plot(metrics, rows)}, out_dir=args.out_dir,
                         quick=args.quick)  # fmt: skip


def _sensitivity(cells: list[dict]) -> tuple[float, float, float]:
    """(lr sensitivity, best capped loss, its lr) of one setting's runs over an lr grid."""
    finals = [c["val_loss"] for c in cells]
    initial = [c["initial_loss"] for c in cells]
    capped = np.where(np.isfinite(finals), np.minimum(finals, initial), initial)
    best = int(np.argmin(capped))
    return lr_sensitivity(finals, initial), float(capped[best]), cells[best]["lr"]


def _grid_rows(cells: list[dict], s) -> list[dict]:
    """One row per setting and width (seed 0): lr sensitivity (and the baseline's over the
    same lrs), best loss and lr, divergences, spikes, and the logits at the highest lr."""
    rows = []
    seed0 = [c for c in cells if c["seed"] == s["seeds"][0]]

    def runs(setting, width, lrs=None):
        return sorted((c for c in seed0 if c["setting"] == setting and c["width"] == width
                       and (lrs is None or c["lr"] in lrs)), key=lambda c: c["lr"])  # fmt: skip

    for setting, width in dict.fromkeys((c["setting"], c["width"]) for c in seed0):
        mine = runs(setting, width)
        sensitivity, best, best_lr = _sensitivity(mine)
        lrs = [c["lr"] for c in mine]
        top = mine[-1]
        rows.append({
            "setting": setting,
            "width": width,
            "lrs": f"{lrs[0]:g}..{lrs[-1]:g} ({len(lrs)})",
            "lr_sensitivity": sensitivity,
            "baseline_same_lrs": _sensitivity(runs("baseline", width, lrs))[0],
            "best_loss": best,
            "best_lr": best_lr,
            "diverged": sum(bool(c["diverged"]) for c in mine),
            "spikes": sum(c["spikes"] for c in mine),
            "nonfinite_steps": sum(c["nonfinite_steps"] for c in mine),
            "max_attn_logit_top_lr": top["max_attention_logit"],
            "log_z_top_lr": top["final_log_z"],
        })  # fmt: skip
    return rows


def _plot(metrics, rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(18, 8), dpi=80)
    (loss_ax, sens_ax, attn_ax, z_ax), (curve_ax, growth_ax, factor_ax, spike_ax) = axes
    cells, widest = metrics["cells"], max(metrics["widths"])
    seed0 = [c for c in cells if c["seed"] == metrics["seeds"][0]]
    colors = dict(zip(GRID, ("k", "tab:orange", "tab:purple", "tab:blue", "tab:green"),
                      strict=True))  # fmt: skip

    def by_lr(setting, width, key, pool=seed0):
        mine = sorted((c for c in pool if c["setting"] == setting and c["width"] == width),
                      key=lambda c: c["lr"])  # fmt: skip
        return [c["lr"] for c in mine], np.asarray([c[key] for c in mine], float)

    for setting in metrics["grid"]:
        lrs, loss = by_lr(setting, widest, "val_loss")
        loss_ax.plot(lrs, loss, "o-", color=colors[setting], label=setting)
        lrs, attn = by_lr(setting, widest, "max_attention_logit")
        attn_ax.plot(lrs, attn, "o-", color=colors[setting], label=setting)
        lrs, log_z = by_lr(setting, widest, "final_log_z")
        z_ax.plot(lrs, log_z, "o-", color=colors[setting], label=setting)
        mine = [r for r in rows if r["setting"] == setting]
        sens_ax.plot([r["width"] for r in mine], [r["lr_sensitivity"] for r in mine], "o-",
                     color=colors[setting], label=setting)  # fmt: skip
    # min-max over seeds of the key comparison, on top of seed 0's line
    for row in metrics["seed_comparison"]:
        setting, lr = row["setting"].rsplit(" lr=", 1)
        if "val_loss" in row:
            loss_ax.errorbar([float(lr)], [row["val_loss"]], color=colors[setting], capsize=4,
                             yerr=[[row["val_loss"] - row["val_loss_min"]],
                                   [row["val_loss_max"] - row["val_loss"]]])  # fmt: skip
    for ax in (loss_ax, attn_ax, z_ax):
        ax.set_xscale("log")
        ax.set_xlabel("peak learning rate")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    loss_ax.set_ylabel("final validation loss (nats/byte)")
    loss_ax.set_title(f"d={widest}: final loss (bars: min-max, {len(metrics['seeds'])} seeds)")
    attn_ax.set_yscale("log")
    attn_ax.set_ylabel("max pre-softmax attention logit (layers, steps)")
    attn_ax.set_title(f"d={widest}: attention-logit growth")
    z_ax.set_ylabel("mean log Z of the output logits at the end")
    z_ax.set_title(f"d={widest}: output logits (log Z = 0: normalized)")
    sens_ax.set_xscale("log", base=2)
    sens_ax.set_xlabel("d_model")
    sens_ax.set_ylabel("lr sensitivity (nats)")
    sens_ax.set_title("lr sensitivity: mean of min(loss, initial) - best")
    sens_ax.grid(alpha=0.3)
    sens_ax.legend(fontsize=8)

    top = max(metrics["seed_lrs"])
    key = [c for c in cells if c["width"] == widest and c["lr"] == top and "losses" in c]
    for setting in dict.fromkeys(c["setting"] for c in key):
        mine = [c for c in key if c["setting"] == setting]
        seed_band(curve_ax, [list(enumerate(c["losses"], 1)) for c in mine], setting,
                  color=colors[setting])  # fmt: skip
        seed_band(growth_ax, [[(p["step"], max(p["max_attention_logit"])) for p in c["probes"]]
                              for c in mine], setting, color=colors[setting])  # fmt: skip
    curve_ax.set_xlabel("step")
    curve_ax.set_ylabel("training loss (nats/byte)")
    curve_ax.set_title(f"d={widest}, lr {top:g}: loss per step (seed min-max)")
    growth_ax.set_xlabel("step")
    growth_ax.set_ylabel("largest attention logit (any layer)")
    growth_ax.set_yscale("log")
    growth_ax.set_title(f"d={widest}, lr {top:g}: attention logit over training")
    for ax in (curve_ax, growth_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)

    width = metrics["factor_width"]
    for setting in ["baseline", *metrics["factors"]]:
        lrs, loss = by_lr(setting, width, "val_loss")
        label = f"{setting} ({metrics['factor_context']})" if setting == "4x context" else setting
        style = {"color": "k"} if setting == "baseline" else {}
        factor_ax.plot(lrs, loss, "o-", label=label, **style)
    factor_ax.set_xscale("log")
    factor_ax.set_xlabel("peak learning rate")
    factor_ax.set_ylabel("final validation loss (nats/byte)")
    factor_ax.set_title(f"d={width}: the other causes against the baseline")
    factor_ax.grid(alpha=0.3)
    factor_ax.legend(fontsize=8)

    names = [f"{r['setting']} d={r['width']}" for r in rows]
    x = np.arange(len(rows))
    for offset, key, label in (
        (-0.27, "spikes", "loss spikes"),
        (0.0, "diverged", "diverged runs"),
        (0.27, "nonfinite_steps", "non-finite (skipped) steps"),
    ):
        spike_ax.bar(x + offset, [r[key] for r in rows], 0.27, label=label)
    spike_ax.set_xticks(x, names, rotation=90, fontsize=7)
    spike_ax.set_ylabel("count over the setting's lrs (seed 0)")
    spike_ax.set_yscale("symlog", linthresh=2)  # a few spikes beside many skipped steps
    ticks = [
        t
        for t in (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
        if t <= max([1, *(r["nonfinite_steps"] for r in rows), *(r["spikes"] for r in rows)])
    ]
    spike_ax.set_yticks(ticks, [str(t) for t in ticks])
    spike_ax.set_title("loss spikes, divergences, skipped steps")
    spike_ax.grid(axis="y", alpha=0.3)
    spike_ax.legend(fontsize=8)
    fig.suptitle(f"training instability, {metrics['shape']}")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
