"""Q16, Q17: scaling laws on this CPU. A grid of byte transformers (several widths and depths)
trained for several token budgets on the built-in corpus, Chinchilla's law
L(N, D) = E + A / N^alpha + B / D^beta fitted to their validation losses with bootstrap
intervals (llmjax.scaling), set beside Hoffmann et al.'s (alpha 0.34, beta 0.28, about 20 tokens
per parameter at the optimum), and checked on a larger run left out of the fit. Cost against N:
the measured training step time, the parameter and AdamW state memory, and the latency of
KV-cached decoding of one sequence.

N counts non-embedding parameters (Kaplan et al.'s choice; with a 259-byte vocabulary the
embedding is a large share of a tiny model and does not scale with depth). Every run has its
own warmup-cosine schedule ending at its budget (Hoffmann et al.'s point: a schedule longer than
the run overstates the loss of short runs), and the same recipe (AdamW, lr 3e-3, batch 16 x 64
bytes); one seed per grid point, the bootstrap over runs giving the uncertainty.

    python -m experiments.scaling_laws [--quick]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from llmjax import fit
from llmjax.config import PRESETS, apply_overrides
from llmjax.data import ByteTokenizer
from llmjax.decode.samplers import SamplingConfig
from llmjax.decode.tokens import generate_tokens
from llmjax.results import experiment_parser, write_results
from llmjax.runs import load_run
from llmjax.scaling import HOFFMANN_2022, bootstrap, fit_frontier, fit_law, param_counts
from llmjax.train.fit import with_vocab

# (d_model, n_layers): non-embedding N from about 12k to 0.8M
FULL = {"shapes": ((32, 1), (48, 2), (64, 2), (96, 3), (128, 4)),
        "steps": (150, 300, 600, 1200), "heldout": ((192, 4), 1200), "samples": 200}  # fmt: skip
QUICK = {"shapes": ((16, 1), (24, 1), (32, 1)), "steps": (3, 6), "heldout": ((40, 1), 6),
         "samples": 10}  # fmt: skip
BATCH, CONTEXT = 16, 64


def _run(shape: tuple[int, int], steps: int, out: Path) -> dict:
    d, layers = shape
    cfg = apply_overrides(with_vocab(PRESETS["nano"], ByteTokenizer()), [
        f"model.d_model={d}", f"model.n_layers={layers}", f"model.n_heads={max(d // 16, 1)}",
        f"model.d_ff={4 * d}", f"model.max_seq_len={CONTEXT}", f"data.batch_size={BATCH}",
        f"train.steps={steps}", f"train.eval_every={steps}", "train.eval_batches=16",
        "train.mfu=false", "optim.lr=3e-3", f"optim.warmup_steps={max(steps // 20, 1)}",
        "optim.min_lr_ratio=0.1", f"train.checkpoint_every={steps}",
        "model.scan_unroll=1"])  # fmt: skip
    counts = param_counts(cfg.model)
    t0 = time.perf_counter()
    result = fit(cfg, out, progress=False)
    wall = time.perf_counter() - t0
    return {
        "d_model": d, "n_layers": layers, "N": counts.non_embedding, "N_total": counts.total,
        "steps": steps, "D": steps * BATCH * CONTEXT, "loss": float(result.final_eval["loss"]),
        "wall_s": round(wall, 1),
        # parameters plus AdamW's two moments, float32
        "state_mib": round(3 * counts.total * 4 / 2**20, 3),
    }  # fmt: skip


def _decode_latency(run: Path, new_tokens: int = 48) -> float:
    """Seconds to decode `new_tokens` after an 8-byte prompt, one row, compiled (median of 3)."""
    loaded = load_run(run)
    variables = {"params": loaded.params, **loaded.model_state}
    prompt = [np.arange(8, dtype=np.int32)]

    def once(i: int) -> float:
        t0 = time.perf_counter()
        generate_tokens(loaded.model, variables, prompt, max_new_tokens=new_tokens,
                        key=jax.random.key(i),
                        sampling=SamplingConfig(temperature=1.0))  # fmt: skip
        return time.perf_counter() - t0

    once(0)
    return float(np.median([once(i) for i in range(1, 4)]))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = experiment_parser(__doc__.splitlines()[0]).parse_args(argv)
    s = QUICK if args.quick else FULL
    t_start = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in s["shapes"]:
            for i, steps in enumerate(s["steps"]):
                out = Path(tmp) / f"{shape[0]}x{shape[1]}-{steps}"
                runs.append(_run(shape, steps, out))
                if i == len(s["steps"]) - 1:  # cost of the size, from its longest run
                    runs[-1]["decode_s"] = _decode_latency(out)
                print(json.dumps(runs[-1]), flush=True)
        held_shape, held_steps = s["heldout"]
        held = _run(held_shape, held_steps, Path(tmp) / "heldout")
        print(json.dumps({"heldout": held}), flush=True)
    N, D, L = (np.asarray([r[k] for r in runs], np.float64) for k in ("N", "D", "loss"))
    law = fit_law(N, D, L)
    boot = bootstrap(N, D, L, samples=s["samples"], seed=0)
    intervals = {name: tuple(round(float(x), 4) for x in boot.interval(name, 0.9))
                 for name in ("E", "A", "B", "alpha", "beta")}  # fmt: skip
    predicted = float(law.predict(held["N"], held["D"]))
    pred_lo, pred_hi = (round(float(x), 4) for x in
                        boot.prediction_interval(held["N"], held["D"], 0.9))  # fmt: skip
    budgets = sorted({6 * n * d for n, d in zip(N, D, strict=True)})
    frontier = fit_frontier(N, D, L) if len(budgets) >= 4 else None
    C = 6 * held["N"] * held["D"]
    n_opt, d_opt = law.optimal(C)
    metrics = {
        "settings": s, "runs": runs, "heldout": held, "law": law.to_dict(),
        "intervals_90": intervals, "chinchilla": HOFFMANN_2022.to_dict(),
        "heldout_predicted": predicted, "heldout_interval_90": (pred_lo, pred_hi),
        "heldout_error": predicted - held["loss"],
        "tokens_per_param_at_heldout_compute": float(law.tokens_per_param(C)),
        "optimal_at_heldout_compute": {"N": float(n_opt), "D": float(d_opt)},
        "chinchilla_tokens_per_param_there": float(HOFFMANN_2022.tokens_per_param(C)),
        "frontier": None if frontier is None else frontier.to_dict(),
        "wall_s": round(time.perf_counter() - t_start, 1),
    }  # fmt: skip
    rows = [
        {"quantity": name, "fit": getattr(law, name), "interval_90": intervals[name],
         "chinchilla": getattr(HOFFMANN_2022, name)}
        for name in ("E", "A", "B", "alpha", "beta")
    ] + [
        {"quantity": f"held-out run N={held['N']:,} D={held['D']:,}: loss",
         "fit": predicted, "interval_90": (pred_lo, pred_hi), "measured": held["loss"]},
        {"quantity": "tokens per parameter at the optimum (held-out compute)",
         "fit": metrics["tokens_per_param_at_heldout_compute"],
         "chinchilla": metrics["chinchilla_tokens_per_param_there"]},
    ]  # fmt: skip
    out = write_results("scaling_laws", metrics, rows=rows,
                        plots={"scaling_laws": _plot(runs, held, law, s)},
                        out_dir=args.out_dir, quick=args.quick)  # fmt: skip
    metrics["results_dir"] = str(out)
    return metrics


def _plot(runs: list[dict], held: dict, law, s: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4.5), dpi=100)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    Ns = sorted({r["N"] for r in runs})
    for i, n in enumerate(Ns):
        mine = sorted((r for r in runs if r["N"] == n), key=lambda r: r["D"])
        D = np.asarray([r["D"] for r in mine], np.float64)
        a.loglog(D, [r["loss"] for r in mine], "o", color=colors[i % 10], label=f"N={n:,}")
        grid = np.geomspace(D.min(), held["D"], 50)
        a.loglog(grid, law.predict(np.full_like(grid, n), grid), "-", color=colors[i % 10], lw=1)
    a.loglog([held["D"]], [held["loss"]], "k*", ms=12, label=f"held out N={held['N']:,}")
    a.loglog([held["D"]], [law.predict(held["N"], held["D"])], "kx", ms=9, label="its prediction")
    a.set_xlabel("training tokens D (bytes)")
    a.set_ylabel("validation loss (nats per byte)")
    a.set_title(f"fit: alpha={law.alpha:.2f}, beta={law.beta:.2f} (Chinchilla 0.34, 0.28)")
    flops = np.asarray([6 * r["N"] * r["D"] for r in runs], np.float64)
    b.loglog(flops, [r["loss"] for r in runs], "o", ms=4, label="runs")
    grid = np.geomspace(flops.min(), flops.max() * 4, 50)
    b.loglog(grid, [law.loss_at_compute(x) for x in grid], "-", label="fitted law's frontier")
    b.set_xlabel("training compute C = 6 N D (FLOPs)")
    b.set_ylabel("validation loss (nats per byte)")
    b.set_title("loss against compute")
    last = [max((r for r in runs if r["N"] == n), key=lambda r: r["D"]) for n in Ns]
    c.loglog(Ns, [r["wall_s"] / r["steps"] * 1e3 for r in last], "o-", label="train step (ms)")
    c.loglog(Ns, [r["decode_s"] / 48 * 1e3 for r in last], "s-", label="decode (ms per token)")
    c.loglog(Ns, [r["state_mib"] for r in last], "^-", label="params + AdamW state (MiB)")
    c.set_xlabel("non-embedding parameters N")
    c.set_ylabel("ms, or MiB")
    c.set_title("cost against N on this CPU (step time includes compile)")
    for ax in (a, b, c):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
