"""Q2: a traditional n-gram language model against a transformer on the same training bytes.

Interpolated Kneser-Ney models of order 1 to 5 (llmjax.eval.KneserNey) are counted on the whole
training split of the built-in corpus (this interpreter's standard-library source, bytes as
tokens); byte transformers of the nano shape (4 layers, d=128, context 64) train on the same
split for several step budgets, 3 seeds each. All are scored by the same harness
(llmjax.eval.rolling_log_probs over one stretch of the validation split, windows of 64 bytes
moving 32 at a time) in bits per byte, and the table says which budget first beats each
n-gram order. The n-gram's training cost is one counting pass; the transformer's is given in
training FLOPs (6 N per token plus attention, llmjax.scaling) and wall time.

    python -m experiments.ngram_vs_transformer [--quick]
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
from llmjax.eval import EvalLM, KneserNey, rolling_log_probs
from llmjax.eval.ngram import NgramScorer
from llmjax.results import experiment_parser, spread, write_results
from llmjax.scaling import train_flops_per_token
from llmjax.train.fit import with_vocab

FULL = {"orders": (1, 2, 3, 4, 5), "steps": (200, 600, 1500), "seeds": 3, "val_bytes": 100_000}
QUICK = {"orders": (1, 3), "steps": (4,), "seeds": 1, "val_bytes": 4_000}
CONTEXT, STRIDE, BATCH = 64, 32, 16


def _bpb(scorer, ids: np.ndarray, prefix: int) -> float:
    lp = rolling_log_probs(scorer, np.concatenate([[prefix], ids]), window=CONTEXT, stride=STRIDE)
    return float(-lp.sum() / np.log(2) / len(ids))


def _transformer(steps: int, seed: int, out: Path) -> tuple[EvalLM, dict]:
    cfg = apply_overrides(with_vocab(PRESETS["nano"], ByteTokenizer()), [
        f"model.max_seq_len={CONTEXT}", f"data.batch_size={BATCH}", f"train.steps={steps}",
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
    ngram = {r["model"]: r["bpb"] for r in rows}
    for steps in s["steps"]:
        mine = [r for r in runs if r["steps"] == steps]
        b = spread([r["bpb"] for r in mine])
        beats = [m for m, v in ngram.items() if b["max"] < v]
        rows.append({
            "model": f"transformer, {steps} steps", "bpb": round(b["mean"], 4),
            "bpb_min": round(b["min"], 4), "bpb_max": round(b["max"], 4),
            "train_bytes": mine[0]["train_tokens"],
            "epochs": round(mine[0]["train_tokens"] / len(train), 2),
            "train_flops": mine[0]["train_flops"],
            "train_wall_s": round(float(np.mean([r["train_wall_s"] for r in mine])), 1),
            "beats (every seed)": ", ".join(beats) or "none",
        })  # fmt: skip
    metrics = {"settings": s, "runs": runs, "val_bytes": len(val),
               "wall_s": round(time.perf_counter() - t_start, 1)}  # fmt: skip
    out = write_results("ngram_vs_transformer", metrics, rows=rows,
                        plots={"ngram_vs_transformer": _plot(rows, runs, s)},
                        out_dir=args.out_dir, quick=args.quick)  # fmt: skip
    metrics["rows"], metrics["results_dir"] = rows, str(out)
    return metrics


def _plot(rows: list[dict], runs: list[dict], s: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=100)
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
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
