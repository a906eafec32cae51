"""Q4: why Transformers instead of RNNs? A transformer, an LSTM and a GRU of equal size.

Compared on text loss per step and per second, throughput against sequence length, gradients
against distance, and recall at a distance:

- Text (byte models of the built-in corpus, 100 steps): the nano-shaped transformer (4 layers,
  d=128, context 64, batch 12) against a 4-layer LSTM and GRU whose width is chosen so that
  their parameter count is the transformer's (the nearest width; counts in `params`).
  Validation loss against steps and against training wall time (the first logging interval,
  which waits for compilation, is counted at the median speed of the others), and each
  architecture's loss at the time the fastest one finished; each architecture at its own lr
  from the same grid, 3 seeds.
- Throughput: training tokens/s of each model's compiled train step against the sequence
  length at a fixed number of tokens per batch (batch = tokens / length), timed after
  compiling, interleaved over the models (`llmjax.train.bench.time_round_robin`), fastest step.
- Gradient against distance: ||d loss_T / d x_t|| (x_t the input vector at t, T the last
  position) against T - t, averaged over validation rows (`llmjax.analysis.gradient_distance`),
  at initialization and after training (seed 0 of each tuned text model).
- Recall at a distance (`llmjax.data.synthetic.RecallTask` with one key: a fact token carrying
  a value among filler, then a query whose answer is that value; 64 tokens): answer accuracy
  against the fact-query distance after equal training steps (200), on smaller models of equal
  parameter counts (a 2-layer d=64 transformer without positions, which finds the fact by
  content, and matched LSTM and GRU), each at its own lr from the same grid, 3 seeds (seeds
  vary the initialization; every run sees the same task stream).

    python -m experiments.rnn_vs_transformer           # about 12 minutes on a quiet 2-core CPU
    python -m experiments.rnn_vs_transformer --quick
"""

from __future__ import annotations

import math

import jax
import numpy as np

from llmjax.analysis.gradient_distance import gradient_by_distance
from llmjax.config import PRESETS, Config, apply_overrides
from llmjax.data import ByteTokenizer, prepare_data, val_batches
from llmjax.data.sources import FromFunction
from llmjax.data.synthetic import RecallTask
from llmjax.eval.long_context import recall_by_distance
from llmjax.models import build_model, init_model
from llmjax.results import experiment_parser, write_results
from llmjax.scaling.cost import param_counts
from llmjax.train.bench import compile_step, time_round_robin
from llmjax.train.fit import with_vocab
from llmjax.train.sweep import curves, mean_columns, run_trials, summarize, tune

ARCHS = ("transformer", "lstm", "gru")
COLORS = {"transformer": "tab:blue", "lstm": "tab:orange", "gru": "tab:green"}
FULL = {
    "text": [
        "train.steps=100",
        "optim.warmup_steps=10",
        "train.eval_every=20",
        "train.eval_batches=8",
        "train.log_every=5",
    ],  # fmt: skip
    "lrs": (3e-3, 1e-2),
    "seeds": (0, 1, 2),
    "lengths": (32, 128, 512, 1024),
    "tokens_per_batch": 2048,
    "rounds": 3,
    "grad_rows": 32,
    "recall": [
        "model.n_layers=2",
        "model.d_model=64",
        "model.n_heads=4",
        "data.batch_size=32",
        "train.steps=200",
        "optim.warmup_steps=20",
        "train.eval_every=40",
        "train.log_every=10",
    ],  # fmt: skip
    "recall_len": 64,
    "recall_lrs": (3e-3, 1e-2),
    "recall_eval_batches": 8,
}
QUICK = {
    "text": [
        "model.n_layers=1",
        "model.d_model=32",
        "model.n_heads=2",
        "model.max_seq_len=32",
        "data.batch_size=4",
        "train.steps=4",
        "optim.warmup_steps=1",
        "train.eval_every=2",
        "train.eval_batches=1",
        "train.log_every=1",
    ],  # fmt: skip
    "lrs": (3e-3,),
    "seeds": (0,),
    "lengths": (32,),
    "tokens_per_batch": 64,
    "rounds": 1,
    "grad_rows": 4,
    "recall": [
        "model.n_layers=1",
        "model.d_model=32",
        "model.n_heads=2",
        "data.batch_size=8",
        "train.steps=4",
        "optim.warmup_steps=1",
        "train.eval_every=2",
        "train.log_every=1",
    ],  # fmt: skip
    "recall_len": 16,
    "recall_lrs": (1e-2,),
    "recall_eval_batches": 1,
}
COMMON = ["train.mfu=false", "model.dropout=0.0"]
# A recurrence has no use for a position table or heads (n_heads=1: the config checks
# d_model % n_heads for every family, and any width may match the transformer's count).
RNN = ["model.position=none", "model.n_heads=1"]


def matched_width(base: Config, arch: str, target: int) -> int:
    """The width of `arch` whose parameter count is nearest `target`: the count is a quadratic
    in the width, fitted exactly on three widths."""

    def count(width: int) -> int:
        cfg = apply_overrides(base, [f"model.arch={arch}", *RNN, f"model.d_model={width}"])
        return param_counts(cfg.model).total

    widths = np.asarray([8, 16, 32])
    coeffs = np.polyfit(widths, [count(int(w)) for w in widths], 2)
    candidates = np.arange(1, 4 * base.model.d_model + 1)
    return int(candidates[np.argmin(np.abs(np.polyval(coeffs, candidates) - target))])


def _architectures(base: Config) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Each architecture's overrides on `base` (a transformer) and its parameter count."""
    target = param_counts(base.model).total
    settings = {"transformer": []}
    for arch in ARCHS[1:]:
        width = matched_width(base, arch, target)
        settings[arch] = [f"model.arch={arch}", *RNN, f"model.d_model={width}"]
    counts = {a: param_counts(apply_overrides(base, o).model).total for a, o in settings.items()}
    return settings, counts


def _layers(cfg: Config) -> str:
    n = cfg.model.n_layers
    return f"{n} layer{'s' if n > 1 else ''}"


def _train_seconds(result, cfg) -> dict:
    """measure(): training seconds (evaluation excluded) at each logged step, from the train
    records' tokens/s; the first interval, which waits for compilation, at the others' median."""
    tokens = cfg.data.batch_size * cfg.seq_len
    records = [r for r in result.history if r.get("split") == "train"]
    steps = [r["step"] for r in records]
    per_step = [tokens / r["tokens_per_s"] if r["tokens_per_s"] > 0 else math.nan for r in records]
    if len(per_step) > 1:
        per_step[0] = float(np.nanmedian(per_step[1:]))
    previous = [0, *steps[:-1]]
    seconds = np.cumsum([(s - p) * t for s, p, t in zip(steps, previous, per_step, strict=True)])
    return {"train_s_at": [[int(s), float(t)] for s, t in zip(steps, seconds, strict=True)]}


def _val_vs_seconds(trial) -> list[tuple[float, float]]:
    at = dict((s, t) for s, t in trial.extra["train_s_at"])
    return [(at[s], loss) for s, loss in trial.val if s in at]


def _loss_at_equal_seconds(by_seconds: dict[str, list]) -> tuple[float, dict[str, float]]:
    """The training time of the architecture that finished first (its seeds' mean), and each
    architecture's mean validation loss interpolated at that time (nan before its first
    evaluation)."""
    means = {}
    for arch, runs in by_seconds.items():
        n = max((len(r) for r in runs), default=0)
        whole = np.asarray([r for r in runs if len(r) == n > 0], float)
        if whole.size:
            means[arch] = whole.mean(0)  # [evaluations, (seconds, loss)]
    if not means:
        return math.nan, {}
    seconds = min(m[-1, 0] for m in means.values())
    return float(seconds), {
        a: float(np.interp(seconds, m[:, 0], m[:, 1])) if seconds >= m[0, 0] else math.nan
        for a, m in means.items()
    }


def text_part(s: dict, data) -> dict:
    base = with_vocab(apply_overrides(PRESETS["nano"], [*s["text"], *COMMON]), data.tokenizer)
    settings, counts = _architectures(base)
    search = tune(base, settings, "optim.lr", s["lrs"], data=data, keep_params=True,
                  measure=_train_seconds)  # fmt: skip
    tuned = {a: [*o, f"optim.lr={search.best[a]}"] for a, o in settings.items()}
    more = run_trials(base, tuned, seeds=s["seeds"][1:], data=data, measure=_train_seconds)
    trials = [*search.best_trials.values(), *more]
    rows = summarize(trials, {"val_loss": lambda t: t.final_val,
                              "train_s": lambda t: t.extra["train_s_at"][-1][1]})  # fmt: skip
    for row in rows:
        arch = row["setting"]
        row |= {"part": "text", "params": counts[arch], "lr": search.best[arch]}

    batch = next(val_batches(data.val, batch_size=s["grad_rows"], seq_len=base.seq_len))
    gradients = {}
    for arch, overrides in settings.items():
        cfg = apply_overrides(base, overrides)
        model = build_model(cfg.model)
        params, model_state = init_model(cfg.model, jax.random.key(0))
        trained = search.best_trials[arch].params  # None when the run diverged
        gradients[arch] = {
            when: None if p is None else gradient_by_distance(
                model, {"params": p, **model_state}, batch["inputs"], batch["targets"]).tolist()
            for when, p in (("init", params), ("trained", trained))
        }  # fmt: skip
    by_seconds = {a: [_val_vs_seconds(t) for t in trials if t.setting == a and not t.diverged]
                  for a in settings}  # fmt: skip
    seconds, at_seconds = _loss_at_equal_seconds(by_seconds)
    # Distance 0 also has the direct path (the residual stream): the decay is read from d=1.
    far = base.seq_len // 2
    for row in rows:
        g = gradients[row["setting"]]
        for when in ("init", "trained"):
            if g[when] is not None:
                row[f"grad_d{far}/d1_{when}"] = g[when][far] / g[when][1]
    return {
        "rows": rows,
        "params": counts,
        "widths": {a: apply_overrides(base, o).model.d_model for a, o in settings.items()},
        "shape": f"{_layers(base)}, ctx {base.seq_len}, batch "
        f"{base.data.batch_size}, {base.train.steps} steps",
        "context": base.seq_len,
        "tuning": [{"setting": t.setting, "val_loss": t.final_val} for t in search.trials],
        "val_curves": curves(trials),
        "val_vs_seconds": by_seconds,
        "equal_seconds": seconds,
        "val_loss_at_equal_seconds": at_seconds,
        "gradient_by_distance": gradients,
        "settings": settings,
        "base": base,
    }


def throughput_part(s: dict, base: Config, settings: dict[str, list[str]]) -> list[dict]:
    """Tokens/s of each architecture's train step at each length, batch = tokens / length."""
    steps, shapes = {}, {}
    for T in s["lengths"]:
        B = max(1, s["tokens_per_batch"] // T)
        for arch, overrides in settings.items():
            cfg = apply_overrides(base, [*overrides, f"model.max_seq_len={T}",
                                         f"data.batch_size={B}"])  # fmt: skip
            steps[arch, T] = compile_step(cfg)
            shapes[arch, T] = B
    time_round_robin(steps, s["rounds"])
    rows = []
    for (arch, T), step in steps.items():
        B = shapes[arch, T]
        rows.append({"part": "throughput", "setting": arch, "seq_len": T, "batch_size": B,
                     "step_ms": step.step_s * 1e3, "tokens_per_s": B * T / step.step_s,
                     "compile_s": step.compile_s})  # fmt: skip
    return rows


def _recall_accuracy(task: RecallTask, edges, batches: int):
    def measure(result, cfg) -> dict:
        buckets = recall_by_distance(cfg.model, result.state.params, task, edges=edges,
                                     batches=batches, batch_size=64, seed=10**6)  # fmt: skip
        return {"buckets": buckets}

    return measure


def recall_part(s: dict) -> dict:
    task = RecallTask(seq_len=s["recall_len"], n_keys=1, pairs=1)
    base = apply_overrides(PRESETS["nano"], [*s["recall"], *COMMON,
                                             f"model.max_seq_len={task.seq_len}",
                                             "model.position=none"])  # fmt: skip
    base = with_vocab(base, ByteTokenizer())
    settings, counts = _architectures(base)
    B = base.data.batch_size
    edges = np.unique(np.linspace(1, task.seq_len, 9).astype(int))
    run = dict(source=FromFunction(lambda step: task.batch(np.random.default_rng([0, step]), B)),
               val=lambda: [task.batch(np.random.default_rng([1, i]), B) for i in range(4)],
               tokenizer=ByteTokenizer(),
               measure=_recall_accuracy(task, edges, s["recall_eval_batches"]))  # fmt: skip
    search = tune(base, settings, "optim.lr", s["recall_lrs"], **run)
    tuned = {a: [*o, f"optim.lr={search.best[a]}"] for a, o in settings.items()}
    trials = [*search.best_trials.values(), *run_trials(base, tuned, seeds=s["seeds"][1:], **run)]
    near, far = f"accuracy_d<{edges[1]}", f"accuracy_d>={edges[-2]}"

    def accuracy(t, low=0, high=math.inf):
        """Answer accuracy over the buckets within [low, high)."""
        inside = [b for b in t.extra["buckets"]
                  if b["count"] and low <= b["low"] and b["high"] <= high]  # fmt: skip
        count = sum(b["count"] for b in inside)
        return sum(b["accuracy"] * b["count"] for b in inside) / count if count else math.nan

    rows = summarize(trials, {
        "answer_loss": lambda t: t.final_val,
        "accuracy": accuracy,
        near: lambda t: accuracy(t, high=edges[1]),
        far: lambda t: accuracy(t, low=edges[-2]),
    })  # fmt: skip
    for row in rows:
        arch = row["setting"]
        row |= {"part": "recall", "params": counts[arch], "lr": search.best[arch]}
    by_distance = {}
    for arch in settings:
        mine = [t for t in trials if t.setting == arch and not t.diverged]
        per_seed = np.asarray([[np.nan if b["accuracy"] is None else b["accuracy"]
                                for b in t.extra["buckets"]] for t in mine])  # fmt: skip
        by_distance[arch] = {"low": [b["low"] for b in mine[0].extra["buckets"]] if mine else [],
                             "high": [b["high"] for b in mine[0].extra["buckets"]] if mine else [],
                             "accuracy_per_seed": per_seed.tolist()}  # fmt: skip
    return {
        "rows": rows,
        "params": counts,
        "widths": {a: apply_overrides(base, o).model.d_model for a, o in settings.items()},
        "shape": f"{_layers(base)}, length {task.seq_len}, batch {B}, {base.train.steps} steps",
        "tuning": [{"setting": t.setting, "answer_loss": t.final_val} for t in search.trials],
        "val_curves": curves(trials),
        "accuracy_by_distance": by_distance,
        "far": far,
    }


def main(argv: list[str] | None = None):
    args = experiment_parser(__doc__.splitlines()[0]).parse_args(argv)
    s = QUICK if args.quick else FULL
    data = prepare_data(None, "byte")
    text = text_part(s, data)
    throughput = throughput_part(s, text.pop("base"), text.pop("settings"))
    recall = recall_part(s)
    metrics = {
        "text": {k: v for k, v in text.items() if k != "rows"},
        "recall": {k: v for k, v in recall.items() if k != "rows"},
        "lr_grid": list(s["lrs"]),
        "recall_lr_grid": list(s["recall_lrs"]),
        "tokens_per_batch": s["tokens_per_batch"],
        "findings": _findings(text, throughput, recall["rows"], recall["far"]),
    }
    rows = [*text["rows"], *throughput, *recall["rows"]]
    return write_results("rnn_vs_transformer", metrics | {"rows": rows}, rows=mean_columns(rows),
                         plots={"rnn_vs_transformer": _plot(metrics, throughput)},
                         out_dir=args.out_dir, quick=args.quick)  # fmt: skip


def _findings(text, throughput_rows, recall_rows, far: str) -> dict:
    """The numbers the comparison turns on: losses at equal steps and at equal training time,
    throughput ratios at the shortest and longest length, recall far away."""
    loss = {r["setting"]: r.get("val_loss", math.nan) for r in text["rows"]}
    seconds = {r["setting"]: r.get("train_s", math.nan) for r in text["rows"]}
    lengths = sorted({r["seq_len"] for r in throughput_rows})
    tps = {(r["setting"], r["seq_len"]): r["tokens_per_s"] for r in throughput_rows}
    ratio = {f"transformer_over_{a}_tokens_per_s_at_{T}": tps["transformer", T] / tps[a, T]
             for a in ARCHS[1:] for T in (lengths[0], lengths[-1])}  # fmt: skip
    return {
        "val_loss_at_equal_steps": loss,
        "train_s_at_equal_steps": seconds,
        "val_loss_at_equal_seconds": text["val_loss_at_equal_seconds"],
        "equal_seconds": text["equal_seconds"],
        **ratio,
        "recall_accuracy": {r["setting"]: r.get("accuracy", math.nan) for r in recall_rows},
        f"recall_{far}": {r["setting"]: r.get(far, math.nan) for r in recall_rows},
    }


def _band(ax, runs, label, color):
    """Mean of equally long (x, y) curves over seeds with the min-max of y as a band, at the
    seeds' mean x (wall times differ a little between seeds)."""
    n = max((len(r) for r in runs), default=0)
    whole = [r for r in runs if len(r) == n > 0]  # a diverged seed's curve is cut short
    if not whole:
        return
    xy = np.asarray(whole, float)
    x, y = xy[..., 0].mean(0), xy[..., 1]
    ax.plot(x, y.mean(0), label=label, color=color)
    ax.fill_between(x, y.min(0), y.max(0), color=color, alpha=0.2)


def _plot(metrics, throughput):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    text, recall = metrics["text"], metrics["recall"]
    fig, axes = plt.subplots(2, 3, figsize=(14, 8), dpi=80)
    (step_ax, time_ax, tps_ax), (grad_ax, acc_ax, rloss_ax) = axes

    def label(arch, part):
        return f"{arch} (d={part['widths'][arch]}, {part['params'][arch] / 1e3:.0f}k params)"

    for arch in ARCHS:
        _band(step_ax, text["val_curves"][arch], label(arch, text), COLORS[arch])
        _band(time_ax, text["val_vs_seconds"][arch], arch, COLORS[arch])
    step_ax.set(xlabel="training step", ylabel="validation loss (nats/byte)",
                title=f"text, {text['shape']}; tuned lr each, min-max over seeds")  # fmt: skip
    time_ax.set(
        xlabel="training wall time (s, evaluation excluded)",
        ylabel="validation loss (nats/byte)",
        title="the same runs against time",
    )

    for arch in ARCHS:
        mine = sorted((r for r in throughput if r["setting"] == arch), key=lambda r: r["seq_len"])
        tps_ax.plot([r["seq_len"] for r in mine], [r["tokens_per_s"] for r in mine], "o-",
                    color=COLORS[arch], label=arch)  # fmt: skip
    tps_ax.set(xscale="log", yscale="log", xlabel="sequence length (tokens)",
               ylabel="training throughput (tokens/s)",
               title=f"train step at {metrics['tokens_per_batch']} tokens per batch")  # fmt: skip
    tps_ax.set_xscale("log", base=2)

    for arch in ARCHS:
        g = text["gradient_by_distance"][arch]
        d = np.arange(len(g["init"]))
        grad_ax.plot(d, g["init"], "--", color=COLORS[arch], label=f"{arch}, init")
        if g["trained"] is not None:
            grad_ax.plot(d, g["trained"], "-", color=COLORS[arch], label=f"{arch}, trained")
    grad_ax.set(yscale="log", xlabel="distance T - t (tokens)",
                ylabel="mean ||d loss_T / d x_t||",
                title="gradient from the last position's loss, seed 0")  # fmt: skip

    for arch in ARCHS:
        b = recall["accuracy_by_distance"][arch]
        if not b["accuracy_per_seed"]:
            continue
        mid = (np.asarray(b["low"]) + np.asarray(b["high"]) - 1) / 2
        acc = np.asarray(b["accuracy_per_seed"], float)
        mean = np.nanmean(acc, 0)
        acc_ax.errorbar(mid, mean, yerr=[mean - np.nanmin(acc, 0), np.nanmax(acc, 0) - mean],
                        marker="o", capsize=3, color=COLORS[arch],
                        label=label(arch, recall))  # fmt: skip
    acc_ax.set(ylim=(-0.05, 1.05), xlabel="distance from the fact to its query (tokens)",
               ylabel="answer accuracy (held-out rows)",
               title=f"recall, {recall['shape']}; min-max, seeds")  # fmt: skip

    for arch in ARCHS:
        _band(rloss_ax, recall["val_curves"][arch], arch, COLORS[arch])
    rloss_ax.set(xlabel="training step", ylabel="answer loss (nats)",
                 title="recall: loss on the answers")  # fmt: skip
    for ax in axes.flat:
        ax.title.set_fontsize(10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Transformer against LSTM and GRU at equal parameter counts")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
