"""Q5/Q6: self-attention and multi-head attention: what heads do, how far they look, their worth.

Two 2-layer byte models with RoPE: one on text (the built-in corpus), one on a copying task
(`llmjax.data.repeat_task`: a random block of 4-16 distinct symbols repeated to fill the row,
its length changing from row to row; only the repeats are scored). For each (heatmaps: seed 0):
- every head's previous-token, positional and first-token scores on its own data, its
  induction score on the probe, and its kind (thresholds: `llmjax.analysis.heads.THRESHOLDS`).
  The probe rows are filler then a block of 4-24 symbols twice: a head looking a fixed d back
  predicts only blocks of d + 1 there, so only an induction head scores high on them all (on
  filled rows a fixed-distance head also serves every block length dividing d + 1). For the
  text model the probe's symbols are the text's 32 most frequent bytes;
- how far heads look: attention by relative distance, and the copy loss by block length
  (the copy distance) on the probe and on the copy model's own rows;
- over training, the top induction score against the loss on the probe's repeated part and the
  validation loss (Olsson et al. 2022 saw induction heads form as in-context loss fell), 3 seeds;
- the loss increase of zeroing each head alone, then greedy pruning (each time the head whose
  removal costs least, chosen on one batch and scored on another): loss against heads kept and
  how many heads go within +0.05 nats (Voita et al. 2019 pruned most heads at little cost).
Then text validation loss against the number of heads at fixed width (d=128: 1/2/4/8/16 heads,
head size 128/N), each at its own lr from the same 2-point grid, 3 seeds. The copy model has one
lr (no setting of it is compared with another).

    python -m experiments.attention_heads            # about 11 minutes on 2 cores
    python -m experiments.attention_heads --quick
"""

from __future__ import annotations

import numpy as np

from llmjax.analysis import (
    head_entropy,
    induction_score,
    positional_profile,
    previous_token_score,
)
from llmjax.analysis.heads import (
    THRESHOLDS,
    classify_heads,
    count_kinds,
    first_token_score,
    mean_distance,
    positional_peak,
    prune_heads,
)
from llmjax.config import PRESETS, apply_overrides
from llmjax.data import ByteTokenizer, prepare_data, val_batches
from llmjax.data.repeat_task import RepeatTask
from llmjax.data.sources import FromFunction
from llmjax.models import build_model
from llmjax.objectives.losses import cross_entropy, token_log_probs
from llmjax.results import experiment_parser, seed_band, spread_bars, write_results
from llmjax.runtime import jit_once
from llmjax.train.fit import with_vocab
from llmjax.train.hooks import every
from llmjax.train.sweep import mean_columns, run_trials, summarize, tune
from llmjax.train.trainer import Hook

FULL = {
    "text": [
        "model.n_layers=2",
        "model.d_model=128",
        "model.d_ff=512",
        "model.max_seq_len=64",
        "data.batch_size=8",
        "train.steps=200",
        "optim.warmup_steps=20",
        "train.eval_every=50",
        "train.eval_batches=8",
        "train.log_every=10",
    ],  # fmt: skip
    "copy": [
        "model.n_layers=2",
        "model.d_model=64",
        "model.n_heads=4",
        "model.d_ff=128",
        "model.max_seq_len=64",
        "data.batch_size=32",
        "train.steps=500",
        "optim.warmup_steps=20",
        "optim.min_lr_ratio=1.0",
        "train.eval_every=50",
        "train.log_every=10",
        "optim.lr=6e-3",
    ],  # fmt: skip
    "task": {"seq_len": 64, "n_symbols": 32, "min_block": 4, "max_block": 16},
    "probe": {"seq_len": 64, "n_symbols": 32, "min_block": 4, "max_block": 24, "fill": False},
    "heads": (1, 2, 4, 8, 16),
    "analysed_heads": 8,  # the text model whose heads are analysed
    "lrs": (1e-3, 3e-3),
    "seeds": (0, 1, 2),
    "probe_every": 25,
    "batch": 16,  # rows of each analysis batch
}
QUICK = {
    "text": [
        "model.n_layers=2",
        "model.d_model=32",
        "model.d_ff=64",
        "model.max_seq_len=16",
        "data.batch_size=4",
        "train.steps=4",
        "optim.warmup_steps=1",
        "train.eval_every=2",
        "train.eval_batches=1",
        "train.log_every=2",
    ],  # fmt: skip
    "copy": [
        "model.n_layers=2",
        "model.d_model=32",
        "model.n_heads=4",
        "model.d_ff=64",
        "model.max_seq_len=16",
        "data.batch_size=4",
        "train.steps=4",
        "optim.warmup_steps=1",
        "train.eval_every=2",
        "train.log_every=2",
        "optim.min_lr_ratio=1.0",
        "optim.lr=3e-3",
    ],  # fmt: skip
    "task": {"seq_len": 16, "n_symbols": 32, "min_block": 3, "max_block": 6},
    "probe": {"seq_len": 16, "n_symbols": 32, "min_block": 2, "max_block": 7, "fill": False},
    "heads": (1, 4),
    "analysed_heads": 4,
    "lrs": (3e-3,),
    "seeds": (0,),
    "probe_every": 2,
    "batch": 4,
}
COMMON = ["train.mfu=false", "model.dropout=0.0", "model.position=rope"]
TOLERANCE = 0.05  # nats: the loss increase pruning may cost
HELD_OUT = 2 * 10**6  # task steps of the analysis batches: beyond any run's training steps


def _heads(n: int) -> str:
    return f"{n} head" if n == 1 else f"{n} heads"


class _InductionProbe(Hook):
    """Every `every` steps (and at the end): each head's induction score on the probe rows and
    the loss on their repeated part, emitted as a "probe" record."""

    def __init__(self, probe: dict[str, np.ndarray], every_steps: int):
        self.probe, self.every = probe, every_steps

    def on_start(self, trainer, step: int) -> None:
        self.trainer = trainer
        model = build_model(trainer.cfg.model)
        p = self.probe

        def measure(variables):
            out = model.apply(variables, p["inputs"], return_attention=True)
            return (induction_score(out.attention, p["inputs"]),
                    cross_entropy(out.logits, p["targets"], p["mask"])[0])  # fmt: skip

        self.measure = jit_once(measure)  # small: compile time outweighs run time

    def due(self, step: int, end: int) -> bool:
        return every(self.every, step, end)

    def on_state(self, step: int, state) -> None:
        host = self.trainer.parallel.host_state(state)
        induction, loss = self.measure({"params": host.params, **host.model_state})
        self.trainer.emit({"step": step, "split": "probe", "induction": np.asarray(induction),
                           "repeated_loss": float(loss)})  # fmt: skip


def _probes(result, cfg) -> dict:
    """A finished run's probe records (kept in the trial's `extra`)."""
    return {"probes": [{"step": r["step"], "induction": np.asarray(r["induction"]).tolist(),
                        "repeated_loss": r["repeated_loss"]}
                       for r in result.history if r.get("split") == "probe"]}  # fmt: skip


def _analyse(cfg, params, natural: list[dict], probes: list[dict], tasks: dict) -> dict:
    """Head scores and kinds, distances, single-head ablations and greedy pruning of one
    trained model. `natural` holds two batches of its own data (the first chooses the pruning
    order and the ablations, the second scores the pruning curve); `probes` are batches of
    probe rows (the first gives the induction scores, all the loss by period). `tasks` names
    the RepeatTask of each row set whose loss by block length is wanted ("probe", and "train"
    for the copy model's own rows)."""
    model = build_model(cfg.model)
    variables = {"params": params}
    L, N = cfg.model.n_layers, cfg.model.n_heads
    attention = jit_once(lambda x: model.apply(variables, x, return_attention=True).attention)
    probs = attention(natural[0]["inputs"])
    profile = np.asarray(positional_profile(probs))
    previous = np.asarray(previous_token_score(probs))
    first = np.asarray(first_token_score(probs))
    induction = np.asarray(induction_score(attention(probes[0]["inputs"]), probes[0]["inputs"]))
    peak, peak_distance = positional_peak(profile)
    kinds = classify_heads(previous=previous, induction=induction, profile=profile, first=first)
    pruning = prune_heads(model, variables, natural[0], held_out=natural[1])
    removable = pruning.removable(TOLERANCE, held_out=True)
    out = {
        "previous_token": previous, "induction": induction, "first_token": first,
        "positional_peak": peak, "positional_distance": peak_distance,
        "entropy": np.asarray(head_entropy(probs)),
        "mean_distance": np.asarray(mean_distance(probs)),
        "profile": profile, "kinds": kinds, "kind_counts": count_kinds(kinds),
        "ablation": pruning.single - pruning.losses[0],
        "pruning_order": [list(h) for h in pruning.order],
        "pruning_losses_choosing_batch": pruning.losses, "pruning_losses": pruning.held_out,
        "heads": L * N, "removable": removable, "removable_fraction": removable / (L * N),
    }  # fmt: skip
    rows = {"probe": probes, "train": natural}
    for name, task in tasks.items():
        out[f"loss_by_period_{name}"] = _loss_by_period(model, variables, rows[name], task)
    return out


def _loss_by_period(model, variables, batches: list[dict], task: RepeatTask) -> dict[int, float]:
    """Mean loss on the predictable copy tokens of rows of each period k (the distance the
    copy looks back): does copying hold at every distance?"""
    nll = jit_once(lambda x, y: -token_log_probs(model.apply(variables, x).logits, y))
    sums, counts = {}, {}
    for b in batches:
        loss_BxT = np.asarray(nll(b["inputs"], b["targets"]))
        for k, loss_T, m in zip(task.periods(b["mask"]), loss_BxT, b["mask"], strict=True):
            sums[int(k)] = sums.get(int(k), 0.0) + float((loss_T * m).sum())
            counts[int(k)] = counts.get(int(k), 0) + int(m.sum())
    return {k: sums[k] / counts[k] for k in sorted(sums)}


def _probe_rows(task: RepeatTask, batch: int, table: np.ndarray | None = None) -> list[dict]:
    """Four held-out batches of probe rows; with `table`, symbol i is token table[i] (the text
    model's probe: its symbols are the text's most frequent bytes)."""
    rows = [task.batch_at(HELD_OUT + 10 + i, batch) for i in range(4)]
    if table is None:
        return rows
    return [{"inputs": table[r["inputs"]], "targets": table[r["targets"]], "mask": r["mask"]}
            for r in rows]  # fmt: skip


def main(argv: list[str] | None = None):
    args = experiment_parser(__doc__.splitlines()[0]).parse_args(argv)
    s = QUICK if args.quick else FULL
    data = prepare_data(None, "byte")
    task, probe_task = RepeatTask(**s["task"]), RepeatTask(**s["probe"])
    counts = np.bincount(np.asarray(data.train[:1_000_000]), minlength=256)
    byte_table = np.argsort(-counts)[: probe_task.n_symbols].astype(np.int32)
    B = s["batch"]

    # Text: loss against the number of heads; the analysed head count with the probe hook.
    text_base = with_vocab(apply_overrides(PRESETS["nano"], [*s["text"], *COMMON]), data.tokenizer)
    text_probe = _probe_rows(probe_task, B, byte_table)
    settings = {_heads(h): [f"model.n_heads={h}"] for h in s["heads"]}
    analysed = _heads(s["analysed_heads"])
    hooked = dict(hooks=[_InductionProbe(text_probe[1], s["probe_every"])], measure=_probes)
    best_lr, tuning, text_trials = {}, [], []
    for part in ({analysed: settings[analysed]},
                 {k: v for k, v in settings.items() if k != analysed}):  # fmt: skip
        kw = hooked if analysed in part else {}
        found = tune(text_base, part, "optim.lr", s["lrs"], data=data, keep_params=True, **kw)
        tuned = {n: [*o, f"optim.lr={found.best[n]}"] for n, o in part.items()}
        more = run_trials(text_base, tuned, seeds=s["seeds"][1:], data=data, keep_params=True,
                          **kw)  # fmt: skip
        best_lr |= found.best
        tuning += found.trials
        text_trials += [*found.best_trials.values(), *more]
    text_batches = list(val_batches(data.val, batch_size=B, seq_len=text_base.seq_len,
                                    max_batches=2))  # fmt: skip
    text_models = [t for t in text_trials if t.setting == analysed]
    text_cfg = apply_overrides(text_base, settings[analysed])
    text_analysis = [_analyse(text_cfg, t.params, text_batches, text_probe,
                              {"probe": probe_task})
                     for t in text_models]  # fmt: skip
    rows = summarize(text_trials, {"val_loss": lambda t: t.final_val})
    for row in rows:
        row["part"], row["heads"] = "text", int(row["setting"].split()[0])
        row["lr"] = best_lr[row["setting"]]

    # The copying task: one lr (constant after warmup), 3 seeds.
    copy_base = apply_overrides(PRESETS["nano"], [*s["copy"], *COMMON])
    copy_batches = [task.batch_at(HELD_OUT + i, B) for i in range(2)]
    copy_probe = _probe_rows(probe_task, B)
    run = dict(source=FromFunction(lambda step: task.batch_at(step, copy_base.data.batch_size)),
               val=lambda: [task.batch_at(10**6 + i, 4 * B) for i in range(2)],
               tokenizer=ByteTokenizer(), measure=_probes, keep_params=True,
               hooks=[_InductionProbe(copy_probe[1], s["probe_every"])])  # fmt: skip
    copy_trials = run_trials(copy_base, {"copy": []}, seeds=s["seeds"], **run)
    copy_cfg = with_vocab(copy_base, ByteTokenizer())
    copy_analysis = [_analyse(copy_cfg, t.params, copy_batches, copy_probe,
                              {"probe": probe_task, "train": task})
                     for t in copy_trials]  # fmt: skip
    copy_row = summarize(copy_trials, {"val_loss": lambda t: t.final_val})[0]
    copy_row |= {"part": "copy", "heads": copy_cfg.model.n_heads, "lr": copy_cfg.optim.lr}
    rows.append(copy_row)
    for row in rows:
        analysis = text_analysis if row["setting"] == analysed else None
        analysis = copy_analysis if row["part"] == "copy" else analysis
        if analysis:
            row["removable_within_tol"] = float(np.mean([a["removable"] for a in analysis]))
            row |= {f"n_{k}": v for k, v in analysis[0]["kind_counts"].items()}

    metrics = {
        "text_shape": f"{text_base.model.n_layers}L d={text_base.model.d_model}, ctx "
        f"{text_base.seq_len}, batch {text_base.data.batch_size}, {text_base.train.steps} steps",
        "copy_shape": f"{copy_cfg.model.n_layers}L d={copy_cfg.model.d_model}, "
        f"{copy_cfg.model.n_heads} heads, ctx {copy_cfg.seq_len}, batch "
        f"{copy_cfg.data.batch_size}, {copy_cfg.train.steps} steps, lr {copy_cfg.optim.lr}",
        "text_width": text_base.model.d_model,
        "task": s["task"], "probe": s["probe"], "lr_grid": list(s["lrs"]),
        "tolerance_nats": TOLERANCE,
        "analysed_heads": s["analysed_heads"],
        "tuning": [{"setting": t.setting, "val_loss": t.final_val} for t in tuning],
        "text": {"analysis": text_analysis, "probes": [t.extra["probes"] for t in text_models],
                 "val_curves": [t.val for t in text_models],
                 "lr": best_lr[analysed]},
        "copy": {"analysis": copy_analysis, "probes": [t.extra["probes"] for t in copy_trials],
                 "val_curves": [t.val for t in copy_trials]},
    }  # fmt: skip
    return write_results("attention_heads", metrics | {"rows": rows}, rows=mean_columns(rows),
                         plots={"attention_heads": _plot(metrics, rows)}, out_dir=args.out_dir,
                         quick=args.quick)  # fmt: skip


ABBREVIATION = {"induction": "I", "previous-token": "P", "first-token": "F", "other": ""}


def _short(kind: str) -> str:
    return "D" + kind.split("=")[1] if kind.startswith("positional") else ABBREVIATION[kind]


def _heatmap(ax, fig, values, title, labels=None, cmap="viridis", vmin=0.0, vmax=1.0):
    """An [L, N] heatmap with each cell's value (under its label, if given)."""
    values = np.asarray(values, float)
    image = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    for (layer, head), v in np.ndenumerate(values):
        text = f"{v:.2f}" if labels is None else f"{labels[layer][head]}\n{v:.2f}"
        ax.text(head, layer, text, ha="center", va="center", fontsize=6,
                color="w" if v < vmin + 0.6 * (vmax - vmin) else "k")  # fmt: skip
    ax.set_xticks(range(values.shape[1]))
    ax.set_yticks(range(values.shape[0]))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04)


def _plot(metrics, rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 4, figsize=(13.5, 10.5), dpi=80)
    parts = {"text": metrics["text"], "copy": metrics["copy"]}
    for i, (name, part) in enumerate(parts.items()):
        a = part["analysis"][0]
        _heatmap(axes[i, 0], fig, a["previous_token"], f"{name}: previous-token score")
        _heatmap(axes[i, 1], fig, a["induction"], f"{name}: induction score (probe rows)")
        distance = [[f"d={d}" for d in row] for row in a["positional_distance"]]
        _heatmap(axes[i, 2], fig, a["positional_peak"], f"{name}: most attention at one distance",
                 labels=distance)  # fmt: skip
        ablation = np.asarray(a["ablation"])
        kinds = [[_short(k) for k in row] for row in a["kinds"]]
        _heatmap(axes[i, 3], fig, ablation, f"{name}: loss rise, head zeroed (nats), kind",
                 labels=kinds, cmap="magma", vmin=min(0.0, ablation.min()),
                 vmax=max(ablation.max(), 1e-3))  # fmt: skip

    for j, (name, part) in enumerate(parts.items()):
        ax = axes[2, j]
        runs = part["probes"]
        induction = [[(p["step"], np.max(p["induction"])) for p in r] for r in runs]
        loss = [[(p["step"], p["repeated_loss"]) for p in r] for r in runs]
        seed_band(ax, induction, "top induction score", color="tab:blue")
        ax.set_xlabel("training step")
        ax.set_ylabel("induction score of the top head", color="tab:blue")
        ax.set_ylim(0, 1)
        twin = ax.twinx()
        seed_band(twin, loss, "loss, probe's repeated part", color="tab:red")
        seed_band(twin, part["val_curves"], f"{name} validation loss", color="tab:red", ls="--")
        twin.set_ylabel("loss (nats)", color="tab:red")
        ax.set_title(f"{name}: induction vs in-context loss, {len(runs)} seeds", fontsize=9)
        handles, labels = ax.get_legend_handles_labels()
        more = twin.get_legend_handles_labels()
        ax.legend(handles + more[0], labels + more[1], fontsize=7, loc="center right")
        ax.grid(alpha=0.3)

    colors = {"induction": "tab:red", "previous-token": "tab:blue", "positional": "tab:green",
              "first-token": "tab:purple", "other": "tab:gray"}  # fmt: skip
    for j, (name, part) in enumerate(parts.items()):
        ax = axes[2, 2 + j]
        a = part["analysis"][0]
        profile = np.asarray(a["profile"])
        shown = set()
        for (layer, head), kind in np.ndenumerate(np.asarray(a["kinds"], dtype=object)):
            group = kind.split(" ")[0]
            ax.plot(np.arange(profile.shape[-1]), profile[layer, head], color=colors[group],
                    lw=1, alpha=0.8, label=None if group in shown else group,
                    ls="-" if layer else "--")  # fmt: skip
            shown.add(group)
        ax.set_yscale("log")
        ax.set_ylim(1e-4, 1.1)
        ax.set_xlabel("distance back t - s (tokens)")
        ax.set_ylabel("mean attention at that distance")
        ax.set_title(f"{name}: how far heads look (-- layer 0, - layer 1)", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)

    for j, (name, part) in enumerate(parts.items()):
        ax = axes[3, j]
        curves_of = {"pruning_losses": ("held-out batch", "-"),
                     "pruning_losses_choosing_batch": ("batch that chose", "--")}  # fmt: skip
        for key, (label, style) in curves_of.items():
            curves = []
            for a in part["analysis"]:
                rise = np.asarray(a[key]) - a[key][0]
                curves.append(list(enumerate(rise)))
            seed_band(ax, curves, label, ls=style)
        ax.axhline(TOLERANCE, color="k", ls=":", label=f"+{TOLERANCE} nats")
        heads = part["analysis"][0]["heads"]
        removable = [a["removable"] for a in part["analysis"]]
        ax.set_xlabel(f"heads removed, least important first (of {heads})")
        ax.set_ylabel("loss rise (nats)")
        ax.set_yscale("symlog", linthresh=0.01)
        ax.set_title(f"{name}: greedy pruning; {min(removable)}-{max(removable)} of {heads} go "
                     f"within +{TOLERANCE}", fontsize=9)  # fmt: skip
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)

    ax = axes[3, 2]
    text = sorted((r for r in rows if r["part"] == "text"), key=lambda r: r["heads"])
    spread_bars(ax, text, "val_loss", "mean, min-max over seeds", 0.0, 0.6, color="tab:blue")
    ax.set_xticks(range(len(text)), [f"{r['heads']}\n{r['lr']:g}" for r in text], fontsize=7)
    ax.set_xlabel(f"heads at d={metrics['text_width']} (head size d / heads), tuned lr below")
    ax.set_ylabel("text validation loss (nats/byte)")
    low = np.nanmin([r.get("val_loss_min", np.nan) for r in text])
    high = np.nanmax([r.get("val_loss_max", np.nan) for r in text])
    ax.set_ylim(low - 0.05 - 0.5 * (high - low), high + 0.05)
    ax.set_title("text: loss vs heads, each at its tuned lr", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)

    ax = axes[3, 3]
    lines = {("copy", "train"): ("copy model, its own (filled) rows", "tab:orange", "--"),
             ("copy", "probe"): ("copy model, probe rows", "tab:orange", "-"),
             ("text", "probe"): ("text model, probe rows", "tab:blue", "-")}  # fmt: skip
    for (name, rows_of), (label, color, style) in lines.items():
        by = [a[f"loss_by_period_{rows_of}"] for a in metrics[name]["analysis"]]
        ks = sorted(set.intersection(*(set(b) for b in by)), key=int)
        loss = np.asarray([[b[k] for k in ks] for b in by])
        x = [int(k) for k in ks]
        ax.plot(x, loss.mean(0), marker="o", ms=3, color=color, ls=style, label=label)
        ax.fill_between(x, loss.min(0), loss.max(0), color=color, alpha=0.15)
    ax.set_xlabel("block length k (the copy is k tokens back)")
    ax.set_ylabel("loss on the copy (nats)")
    ax.set_title("in-context copying by distance (min-max over seeds)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    t = THRESHOLDS
    thresholds = (f"I induction >= {t['induction']}, P previous-token >= {t['previous-token']}, "
                  f"Dd most attention at distance d >= {t['positional']}, "
                  f"F first token >= {t['first-token']}")  # fmt: skip
    fig.suptitle(f"attention heads. text: {metrics['text_shape']}; copy: {metrics['copy_shape']}"
                 f"\nhead kinds: {thresholds}",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
