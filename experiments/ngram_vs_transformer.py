"""Q2: a traditional n-gram language model against a transformer on the same training bytes.

Interpolated Kneser-Ney models of order 1 to 5 (llmjax.eval.KneserNey) are counted on the whole
training split of the built-in corpus (this interpreter's standard-library source, bytes as
tokens); byte transformers of the nano shape (4 layers, d=128, context 64) train on the same
split for several step budgets, 3 seeds each. All are scored by the same harness
(llmjax.eval.rolling_log_probs over one stretch of the validation split, windows of 64 bytes
moving 32 at a time) in bits per byte, and the table says which budget first beats each
n-gram order. The n-gram's training cost is one counting pass; the transformer's is given in
training FLOPs (6 N per token plus attention, llmjax.scaling) and wall time.

The second half measures the other side of Q2: one pretrained model adapted to several tasks
against a separate model trained per task. Three built-in tasks (reverse a word, sort its
letters, uppercase it; "Q: ...\nA: ..." lines, one phrasing) get 400 training examples each and
100 held-out questions (other inputs). A 2 x 2 design, 3 seeds, every model the same shape and
recipe:

  pretrained, per task   the largest-budget transformer above, fine-tuned on one task's lines
  pretrained, one model  the same, fine-tuned once on the union of the tasks
  scratch, per task      a random init trained on one task's lines (the traditional recipe)
  scratch, one model     a random init trained on the union

Each per-task model gets 300 steps on its task; each one-model run gets 3 x 300 steps on the
union, so both designs spend the same compute and see each task's examples as often. Greedy
answers to the held-out questions are scored by exact match.

    python -m experiments.ngram_vs_transformer            # 67 min on this 2-core CPU (shared)
    python -m experiments.ngram_vs_transformer --quick

What would change the conclusion: a base pretrained on text closer to the tasks (here Python
source), more task data or training steps, a learning rate tuned
per method (all runs share one recipe, untuned), or prompting instead of fine-tuning (a
context of 64 bytes leaves no room for demonstrations).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from llmjax import fit
from llmjax.config import PRESETS, apply_overrides
from llmjax.data import ByteTokenizer, prepare_data
from llmjax.data.instruct.tasks import exact_match, make_instances
from llmjax.eval import EvalLM, KneserNey, rolling_log_probs
from llmjax.eval.ngram import NgramScorer
from llmjax.results import experiment_parser, spread, write_results
from llmjax.scaling import train_flops_per_token
from llmjax.train.fit import with_vocab

FULL = {"orders": (1, 2, 3, 4, 5), "steps": (200, 600, 1500), "seeds": 3, "val_bytes": 100_000,
        "tasks": ("reverse", "sort_letters", "upper"), "task_examples": 400,
        "task_questions": 100, "adapt_steps": 300}  # fmt: skip
QUICK = {
    "orders": (1, 3),
    "steps": (4,),
    "seeds": 1,
    "val_bytes": 4_000,
    "tasks": ("reverse", "add"),
    "task_examples": 24,
    "task_questions": 4,
    "adapt_steps": 3,
}
METHODS = ("pretrained, per task", "pretrained, one model", "scratch, per task",
           "scratch, one model")  # fmt: skip
CONTEXT, STRIDE, BATCH = 64, 32, 16


def _bpb(scorer, ids: np.ndarray, prefix: int) -> float:
    lp = rolling_log_probs(scorer, np.concatenate([[prefix], ids]), window=CONTEXT, stride=STRIDE)
    return float(-lp.sum() / np.log(2) / len(ids))


def _transformer(
    steps: int, seed: int, out: Path, *, data: Path | None = None, init_from: Path | None = None
) -> tuple[EvalLM, dict]:
    """A nano byte transformer trained `steps` steps on the built-in corpus (or the text file
    `data`), from a random init (or from the run `init_from`)."""
    extra = [] if data is None else [f"data.path={data}"]
    extra += [] if init_from is None else [f"train.init_from={init_from}"]
    cfg = apply_overrides(with_vocab(PRESETS["nano"], ByteTokenizer()), [
        *extra, f"model.max_seq_len={CONTEXT}", f"data.batch_size={BATCH}", f"train.steps={steps}",
        f"train.eval_every={steps}", "train.eval_batches=2", "train.mfu=false",
        f"train.seed={seed}", "optim.name=muon", "optim.lr=1e-2", "optim.momentum=0.95",
        f"optim.warmup_steps={min(20, steps)}", f"train.checkpoint_every={steps}"])  # fmt: skip
    t0 = time.perf_counter()
    fit(cfg, out, progress=False)
    wall = time.perf_counter() - t0
    lm = EvalLM.from_run(out, batch_size=32)
    tokens = steps * BATCH * CONTEXT
    flops = train_flops_per_token(cfg.model, CONTEXT) * tokens
    return lm, {"train_tokens": tokens, "train_flops": float(flops), "train_wall_s": wall}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = experiment_parser(__doc__.splitlines()[0]).parse_args(argv)
    s = QUICK if args.quick else FULL
    t_start = time.perf_counter()
    tok = ByteTokenizer()
    data = prepare_data(None, tok)
    val = np.asarray(data.val[: s["val_bytes"]], np.int64)
    train = np.asarray(data.train, np.int64)
    rows = []
    for order in s["orders"]:
        t0 = time.perf_counter()
        kn = KneserNey.fit(train, order=order, vocab_size=tok.vocab_size)
        fit_s = time.perf_counter() - t0
        bpb = _bpb(NgramScorer(kn), val, tok.bos_id)
        rows.append({"model": f"{order}-gram Kneser-Ney", "bpb": round(bpb, 4),
                     "train_bytes": len(train), "train_wall_s": round(fit_s, 1)})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for steps in s["steps"]:
            for seed in range(s["seeds"]):
                lm, cost = _transformer(steps, seed, Path(tmp) / f"t{steps}-{seed}")
                runs.append({"steps": steps, "seed": seed, "bpb": _bpb(lm.scorer, val, tok.bos_id),
                             **cost})  # fmt: skip
                print(json.dumps(runs[-1]), flush=True)
        adapted = [_adaptation(s, seed, Path(tmp) / f"t{s['steps'][-1]}-{seed}", Path(tmp))
                   for seed in range(s["seeds"])]  # fmt: skip
    return report(s, rows, runs, adapted, train_bytes=len(train), val_bytes=len(val),
                  wall_s=time.perf_counter() - t_start, out_dir=args.out_dir,
                  quick=args.quick)  # fmt: skip


def report(
    s: dict,
    rows: list[dict],
    runs: list[dict],
    adapted: list[dict],
    *,
    train_bytes: int,
    val_bytes: int,
    wall_s: float,
    out_dir: str | None,
    quick: bool,
) -> dict[str, Any]:
    """The results (tables, figure, metrics.json) from the measurements: the n-gram rows, the
    transformer runs and the adaptation results, as main prints them line by line."""
    rows = list(rows)
    ngram = {r["model"]: r["bpb"] for r in rows}
    for steps in s["steps"]:
        mine = [r for r in runs if r["steps"] == steps]
        b = spread([r["bpb"] for r in mine])
        beats = [m for m, v in ngram.items() if b["max"] < v]
        rows.append({
            "model": f"transformer, {steps} steps", "bpb": round(b["mean"], 4),
            "bpb_min": round(b["min"], 4), "bpb_max": round(b["max"], 4),
            "train_bytes": mine[0]["train_tokens"],
            "epochs": round(mine[0]["train_tokens"] / train_bytes, 2),
            "train_flops": mine[0]["train_flops"],
            "train_wall_s": round(float(np.mean([r["train_wall_s"] for r in mine])), 1),
            "beats (every seed)": ", ".join(beats) or "none",
        })  # fmt: skip
    task_rows = _task_rows(adapted, s)
    metrics = {"settings": s, "runs": runs, "val_bytes": val_bytes, "adaptation": adapted,
               "task_rows": task_rows, "wall_s": round(wall_s, 1)}  # fmt: skip
    out = write_results("ngram_vs_transformer", metrics, rows=rows + task_rows,
                        plots={"ngram_vs_transformer": _plot(rows, runs, task_rows, s)},
                        out_dir=out_dir, quick=quick)  # fmt: skip
    metrics["rows"], metrics["results_dir"] = rows, str(out)
    return metrics


def _task_lines(instances) -> str:
    return "".join(f"Q: {x.phrased(0).prompt}\nA: {x.answer}\n" for x in instances)


def _adaptation(s: dict, seed: int, base: Path, tmp: Path) -> dict:
    """Exact match on each task's held-out questions for the four METHODS, one seed."""
    held = make_instances(1000 + seed, s["task_questions"], s["tasks"])
    train = make_instances(seed, s["task_examples"], s["tasks"], exclude={x.key for x in held})
    by_task = {t: [x for x in train if x.task == t] for t in s["tasks"]}
    files = {t: tmp / f"task-{t}-{seed}.txt" for t in s["tasks"]}
    for t, path in files.items():
        path.write_text(_task_lines(by_task[t]))
    union = tmp / f"tasks-{seed}.txt"
    rng = np.random.default_rng(seed)
    union.write_text(_task_lines(train[i] for i in rng.permutation(len(train))))
    k, n_tasks = s["adapt_steps"], len(s["tasks"])

    def score(lm: EvalLM, task: str) -> float:
        qs = [x for x in held if x.task == task]
        replies = lm.generate_until([f"Q: {x.phrased(0).prompt}\nA:" for x in qs],
                                    until=["\n"], max_new_tokens=16)  # fmt: skip
        return float(np.mean([exact_match(r, x.answer) for r, x in zip(replies, qs, strict=True)]))

    out: dict[str, dict[str, float]] = {m: {} for m in METHODS}
    for init, name in ((base, "pretrained"), (None, "scratch")):
        one, _ = _transformer(k * n_tasks, seed, tmp / f"{name}-one-{seed}", data=union,
                              init_from=init)  # fmt: skip
        for t in s["tasks"]:
            out[f"{name}, one model"][t] = score(one, t)
            lm, _ = _transformer(k, seed, tmp / f"{name}-{t}-{seed}", data=files[t],
                                 init_from=init)  # fmt: skip
            out[f"{name}, per task"][t] = score(lm, t)
    print(json.dumps({"seed": seed, "exact_match": out}), flush=True)
    return {"seed": seed, "exact_match": out}


def _task_rows(adapted: list[dict], s: dict) -> list[dict]:
    rows = []
    for m in METHODS:
        row: dict[str, Any] = {"model": m}
        for t in (*s["tasks"], "mean"):
            vals = [np.mean(list(a["exact_match"][m].values())) if t == "mean"
                    else a["exact_match"][m][t] for a in adapted]  # fmt: skip
            v = spread(vals)
            row[f"{t} exact match"] = round(v["mean"], 3)
            row[f"{t} min"], row[f"{t} max"] = round(v["min"], 3), round(v["max"], 3)
        rows.append(row)
    return rows


def _plot(rows: list[dict], runs: list[dict], task_rows: list[dict], s: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(14, 4.5), dpi=100)
    for r in rows:
        if "gram" in r["model"]:
            ax.axhline(r["bpb"], ls="--", lw=1, color="gray")
            ax.text(s["steps"][0] * BATCH * CONTEXT, r["bpb"], f" {r['model']}", va="bottom",
                    fontsize=8, color="dimgray")  # fmt: skip
    tokens = np.asarray([r["train_tokens"] for r in runs])
    ax.semilogx(tokens, [r["bpb"] for r in runs], "o", color="tab:blue", ms=4,
                label=f"transformer, {s['seeds']} seeds per budget")  # fmt: skip
    budgets = sorted({r["train_tokens"] for r in runs})
    ax.semilogx(budgets, [np.mean([r["bpb"] for r in runs if r["train_tokens"] == b])
                          for b in budgets], "-", color="tab:blue")  # fmt: skip
    ax.set_xlabel("transformer training tokens (bytes seen)")
    ax.set_ylabel("validation bits per byte")
    ax.set_title("n-gram (dashed, counted on all training bytes) vs transformer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    names = (*s["tasks"], "mean")
    x = np.arange(len(names))
    width = 0.8 / len(task_rows)
    for i, r in enumerate(task_rows):
        mean = np.asarray([r[f"{t} exact match"] for t in names])
        lo = np.asarray([r[f"{t} min"] for t in names])
        hi = np.asarray([r[f"{t} max"] for t in names])
        spread_ = np.maximum([mean - lo, hi - mean], 0.0)  # (rounding can cross the mean)
        bx.bar(x + (i - (len(task_rows) - 1) / 2) * width, mean, width, label=r["model"],
               yerr=spread_, capsize=2)  # fmt: skip
    bx.set_xticks(x, names)
    bx.set_ylabel("exact match on held-out questions")
    bx.set_title(f"adapting one pretrained model vs a model per task ({s['seeds']} seeds, "
                 "bars: min..max)")  # fmt: skip
    bx.set_ylim(0, 1)
    bx.grid(alpha=0.3, axis="y")
    bx.legend(fontsize=8)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
