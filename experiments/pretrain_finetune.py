"""Q10: pretraining vs fine-tuning. Does a model pretrained on a large, diverse corpus learn a
small, different one faster than the same model trained on it from scratch, and what does it
forget?

Source: the built-in corpus (this interpreter's standard library sources, ~4 MB of Python).
Target: English prose (default: tiny Shakespeare), different from the source. One byte-level
tokenizer serves both, so the pretrained model is the starting point as it is. Per target-set
size (the first N tokens of the target's train split), each method gets the same tuning: one
run per learning rate of the same grid, the best by the target validation loss, then more
seeds at that rate. Fine-tuning starts from a pretrained model (one per seed) with a fresh
optimizer; scratch from a random init. Reported: the target test loss (the held-out half the
tuning never sees) against target tokens seen, the best (early-stopped on validation) loss per
set size, and the source validation loss before and after fine-tuning (forgetting).

    python -m experiments.pretrain_finetune            # 33 runs; 7.6 min of CPU time (13.8 min
                                                       # wall on 2 cores shared with other jobs)
    python -m experiments.pretrain_finetune --quick    # ~27 s of CPU: one size, seed and rate

What would change the conclusion: a target sharing less with the source than English prose
shares with Python's comments and docstrings; much more target data or training (the gap
narrows with the target-set size here, and scratch is still improving at the end of the budget
at 100k); a bigger model or longer pretraining; a wider learning-rate grid (fine-tuning's best
rate for the two smaller sets is the grid's lowest, scratch's for the two larger its highest).
Forgetting is that of plain full fine-tuning with a fresh AdamW and no source replay.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from llmjax.config import PRESETS, apply_overrides
from llmjax.data import prepare_data, val_batches
from llmjax.data.sources import TextWindows
from llmjax.results import experiment_parser, spread, write_results
from llmjax.train.curves import curve, learning_curve, log_steps, tokens_to_match, tokens_to_reach
from llmjax.train.fit import with_vocab
from llmjax.train.trainer import Trainer

# nanoGPT's tiny Shakespeare (1.1 MB), looked for in the working directory.
TINY_SHAKESPEARE = Path("tinyshakespeare.txt")
METHODS = ("fine-tune", "scratch")


@dataclass(frozen=True)
class Settings:
    model: tuple[str, ...]  # overrides of the nano preset's model
    batch: int
    pretrain_steps: int
    pretrain_lr: float
    steps: int  # updates on the target per run
    sizes: tuple[int, ...]  # target train tokens
    lrs: tuple[float, ...]  # the grid each method is tuned over
    seeds: int
    eval_points: int
    eval_batches: int  # per split, of 2 * batch windows

    def __post_init__(self):
        if self.seeds < 1 or not self.lrs or not self.sizes:
            raise ValueError("Settings need at least one seed, learning rate and target size")


FULL = Settings(
    model=("model.n_layers=2", "model.d_model=64", "model.scan_unroll=2"),
    batch=16,
    pretrain_steps=800,
    pretrain_lr=3e-3,
    steps=200,
    sizes=(1_000, 10_000, 100_000),
    lrs=(3e-4, 1e-3, 3e-3),
    seeds=3,
    eval_points=8,
    eval_batches=3,
)
QUICK = Settings(
    model=("model.n_layers=2", "model.d_model=32", "model.n_heads=2", "model.max_seq_len=32"),
    batch=8,
    pretrain_steps=30,  # the schedule of the tuning runs: one compiled trainer serves all
    pretrain_lr=3e-3,
    steps=30,
    sizes=(2_000,),
    lrs=(3e-3,),
    seeds=1,
    eval_points=4,
    eval_batches=2,
)


def config(s: Settings, tokenizer, *, steps: int, lr: float):
    overrides = [
        *s.model,
        f"data.batch_size={s.batch}",
        f"train.steps={steps}",
        f"optim.lr={lr}",
        f"optim.warmup_steps={max(1, steps // 20)}",
        "train.mfu=false",
    ]
    return with_vocab(apply_overrides(PRESETS["nano"], overrides), tokenizer)


def pretrain(s: Settings, source, trainer_for) -> tuple[list, list[float]]:
    """One pretrained model per seed: (params, their final training loss)."""
    trainer = trainer_for(s.pretrain_steps, s.pretrain_lr)
    params, losses = [], []
    for seed in range(s.seeds):
        windows = TextWindows(source.train, s.batch, trainer.cfg.seq_len, seed)
        state, metrics = trainer.train(windows, state=trainer.init_state(seed))
        params.append(jax.device_get(state.params))
        losses.append(float(np.mean([m["loss"] for m in metrics[-20:]])))
        print(f"pretrained seed {seed}: train loss {losses[-1]:.3f}", flush=True)
    return params, losses


def summarize(records: list[dict], tokens_per_step: int) -> dict:
    """One run's curves and its early-stopped point (the evaluation of least val loss)."""
    steps, val = curve(records, "val")
    out = {"tokens": steps * tokens_per_step, "val": val}
    out |= {split: curve(records, split)[1] for split in ("test", "source")}
    best = int(np.argmin(val))
    return out | {"best": best, "best_val": val[best]}


def study(s: Settings, source, target) -> dict:
    """Every run of the study: {(size, method): {"lr", "grid", "runs": [summary per seed]}}."""
    # One trainer (and one compile) per schedule: seeds and methods share its steps.
    trainer_for = functools.cache(
        lambda steps, lr: Trainer(config(s, source.tokenizer, steps=steps, lr=lr))
    )
    pretrained, pretrain_loss = pretrain(s, source, trainer_for)
    half = len(target.val) // 2
    seq = config(s, source.tokenizer, steps=1, lr=1e-3).seq_len

    def split(tokens, batches):
        return lambda: val_batches(tokens, batch_size=2 * s.batch, seq_len=seq, max_batches=batches)

    splits = {
        "val": split(target.val[:half], s.eval_batches),
        "test": split(target.val[half:], s.eval_batches),
        "source": split(source.val, s.eval_batches),
    }
    at = log_steps(s.steps, s.eval_points)

    def run(method: str, lr: float, size: int, seed: int) -> dict:
        trainer = trainer_for(s.steps, lr)
        pre = method == "fine-tune"
        state = trainer.state_from(pretrained[seed]) if pre else trainer.init_state(seed)
        windows = TextWindows(target.train[:size], s.batch, seq, seed)
        _, records = learning_curve(trainer, state, windows, splits, at)
        out = summarize(records, s.batch * seq)
        print(
            f"{method} size {size} lr {lr:g} seed {seed}: best val {out['best_val']:.3f} "
            f"at {out['tokens'][out['best']]} tokens",
            flush=True,
        )
        return out

    results = {}
    for size in s.sizes:
        for method in METHODS:
            grid = {lr: run(method, lr, size, 0) for lr in s.lrs}
            lr = min(grid, key=lambda r: grid[r]["best_val"])
            seeds = [grid[lr], *(run(method, lr, size, seed) for seed in range(1, s.seeds))]
            grid_val = {f"{r:g}": float(g["best_val"]) for r, g in grid.items()}
            results[size, method] = {"lr": lr, "grid": grid_val, "runs": seeds}
    return {"results": results, "pretrain_loss": pretrain_loss}


def rows_of(results: dict) -> list[dict]:
    rows = []
    for (size, method), r in results.items():
        runs = r["runs"]
        row = {
            "target_tokens": size,
            "method": method,
            "lr": r["lr"],
            "zero_shot_test": float(np.mean([run["test"][0] for run in runs])),
        }
        columns = {
            "best_test": [run["test"][run["best"]] for run in runs],
            "source_at_best": [run["source"][run["best"]] for run in runs],
            "source_end": [run["source"][-1] for run in runs],
        }
        for name, values in columns.items():
            m = spread(values)
            row |= {name: m["mean"], f"{name}_min": m["min"], f"{name}_max": m["max"]}
        row |= {
            "best_at_tokens": float(np.median([run["tokens"][run["best"]] for run in runs])),
            "final_test": float(np.mean([run["test"][-1] for run in runs])),
            "source_before": float(np.mean([run["source"][0] for run in runs])),
            "lr_grid_val": r["grid"],
        }
        rows.append(row)
    return rows


def sample_efficiency(results: dict, size: int) -> dict:
    """The target tokens each method needs to reach the other's test loss at `size` (mean over
    seeds, with the range of tokens_to_match)."""
    test = {m: np.stack([run["test"] for run in results[size, m]["runs"]]) for m in METHODS}
    ft, sc = test["fine-tune"], test["scratch"]
    tokens = results[size, "fine-tune"]["runs"][0]["tokens"]
    return {
        # Fine-tuning's loss after each of its evaluations, and what scratch needs for it.
        "scratch_to_match_finetune": [
            {"finetune_tokens": int(tokens[i]), "finetune_test": float(ft[:, i].mean()),
             **{f"scratch_{k}": v for k, v in tokens_to_match(tokens, sc, ft[:, i]).items()}}
            for i in range(1, len(tokens))
        ],
        # Scratch's loss at the end of the budget, and when fine-tuning got there.
        "finetune_to_match_scratch_end": {
            "scratch_tokens": int(tokens[-1]), "scratch_test": float(sc[:, -1].mean()),
            **tokens_to_match(tokens, ft, sc[:, -1]),
        },
    }  # fmt: skip


def data_efficiency(results: dict, sizes: tuple[int, ...]) -> list[dict]:
    """Per target-set size: the set size scratch needs (interpolated over the sizes run) for
    fine-tuning's best test loss there; None beyond the largest."""

    def best(method, size):
        return float(np.mean([run["test"][run["best"]] for run in results[size, method]["runs"]]))

    scratch = [best("scratch", z) for z in sizes]
    return [
        {
            "finetune_size": z,
            "finetune_best_test": best("fine-tune", z),
            "scratch_size_needed": tokens_to_reach(sizes, scratch, best("fine-tune", z)),
        }
        for z in sizes
    ]


def plot(results: dict, s: Settings, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves_ax, sizes_ax, forget_ax) = plt.subplots(1, 3, figsize=(16, 4.6), dpi=90)
    colors = {"fine-tune": "tab:blue", "scratch": "tab:orange"}
    styles = dict(zip(s.sizes, ("-", "--", ":", "-."), strict=False))
    for (size, method), r in results.items():
        tokens = r["runs"][0]["tokens"][1:]  # step 0 has no place on a log axis
        for ax, key in ((curves_ax, "test"), (forget_ax, "source")):
            v = np.stack([run[key][1:] for run in r["runs"]])
            label = f"{method}, {size:,} target tokens"
            ax.plot(tokens, v.mean(0), styles[size], color=colors[method], label=label)
            ax.fill_between(tokens, v.min(0), v.max(0), color=colors[method], alpha=0.15)
    for method in METHODS:
        best = [[run["test"][run["best"]] for run in results[z, method]["runs"]] for z in s.sizes]
        mean = np.asarray([np.mean(b) for b in best])
        err = [mean - [min(b) for b in best], [max(b) for b in best] - mean]
        sizes_ax.errorbar(
            s.sizes, mean, yerr=err, fmt="o-", capsize=3, color=colors[method], label=method
        )
    zero = np.mean([run["test"][0] for run in results[s.sizes[0], "fine-tune"]["runs"]])
    sizes_ax.axhline(zero, color="gray", ls=":", label="pretrained, before fine-tuning")
    before = np.mean([run["source"][0] for run in results[s.sizes[0], "fine-tune"]["runs"]])
    forget_ax.axhline(before, color="gray", ls=":", label="pretrained, before fine-tuning")
    curves_ax.set(
        xscale="log",
        xlabel="target tokens seen (bytes)",
        ylabel="target test loss (nats/byte)",
        title="learning the target",
    )
    sizes_ax.set(
        xscale="log",
        xlabel="target training set (bytes)",
        ylabel="best target test loss (nats/byte)",
        title="early-stopped loss vs target-set size",
    )
    forget_ax.set(
        xscale="log",
        xlabel="target tokens seen (bytes)",
        ylabel="source validation loss (nats/byte)",
        title="forgetting the source",
    )
    for ax in (curves_ax, sizes_ax, forget_ax):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def main(argv=None):
    parser = experiment_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--target",
        default=str(TINY_SHAKESPEARE),
        help="text file of the target domain (default: tinyshakespeare.txt in the working "
        "directory)",
    )
    args = parser.parse_args(argv)
    if not Path(args.target).is_file():
        parser.error(
            f"--target {args.target} is not a file; pass a text file of the target "
            "domain (e.g. tiny Shakespeare, input.txt of nanoGPT's shakespeare_char)"
        )
    s = QUICK if args.quick else FULL
    source = prepare_data(None, "byte")
    target = prepare_data(args.target, source.tokenizer)
    out = study(s, source, target)
    results = out["results"]
    largest = max(s.sizes)
    rows = rows_of(results)
    model = config(s, source.tokenizer, steps=1, lr=1e-3).model
    shape = f"{model.n_layers}L d={model.d_model} ctx={model.max_seq_len} batch={s.batch}"
    metrics = {
        "settings": dataclasses.asdict(s),
        "shape": shape,
        "source": f"{source.corpus_name} ({len(source.train):,} train bytes)",
        "target": f"{target.corpus_name} ({len(target.train):,} train bytes)",
        "pretrain_train_loss": out["pretrain_loss"],
        "sample_efficiency": sample_efficiency(results, largest),
        "data_efficiency": data_efficiency(results, s.sizes),
        "curves": {
            f"{method} {size}": {
                k: [run[k] for run in r["runs"]] for k in ("tokens", "val", "test", "source")
            }
            for (size, method), r in results.items()
        },
    }
    title = (
        f"pretrained on {source.corpus_name} ({s.pretrain_steps} steps) vs scratch, "
        f"target {target.corpus_name}; {shape}, {s.seeds} seeds (bands: min-max)"
    )
    fig = plot(results, s, title)
    return write_results(
        "pretrain_finetune",
        metrics,
        rows=rows,
        plots={"pretrain_finetune": fig},
        out_dir=args.out_dir,
        quick=args.quick,
    )


if __name__ == "__main__":
    main()
