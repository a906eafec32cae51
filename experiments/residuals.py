"""Q14: residual connections. Depth 2 to 32 with and without them (and pre- vs post-norm).

For each depth and variant: the final validation loss (each variant and depth with its own
peak lr from the same 2-point grid, 3 seeds), the gradient norm of every block at
initialization and after training, and the rank collapse of token representations that Dong
et al. (2021) predict for attention without skip connections: layer by layer, the effective
rank of a sequence's representations and their distance from all being one vector
(`llmjax.analysis.representations`), at initialization and after training.

    python -m experiments.residuals            # d=64, 4 heads, ctx 64, batch 8, 200 steps
    python -m experiments.residuals --quick
"""

from __future__ import annotations

import jax
import numpy as np

from llmjax.analysis.representations import (
    effective_rank,
    layer_grad_norms,
    layer_outputs,
    rank_one_residual,
)
from llmjax.config import PRESETS, apply_overrides
from llmjax.data import prepare_data, val_batches
from llmjax.models import build_model, init_model
from llmjax.objectives import batch_tokens
from llmjax.results import experiment_parser, write_results
from llmjax.train.fit import with_vocab
from llmjax.train.step import make_gradient_fn
from llmjax.train.sweep import mean_columns, run_trials, summarize, tune

VARIANTS = {
    "residual, pre-norm": ["model.residual=true", "model.norm_position=pre"],
    "residual, post-norm": ["model.residual=true", "model.norm_position=post"],
    "no residual, pre-norm": ["model.residual=false", "model.norm_position=pre"],
}
FULL = {
    "overrides": [
        "model.d_model=64",
        "model.n_heads=4",
        "model.d_ff=256",
        "model.max_seq_len=64",
        "data.batch_size=8",
        "train.steps=200",
        "optim.warmup_steps=20",
        "train.eval_every=50",
        "train.eval_batches=8",
        "train.log_every=10",
    ],  # fmt: skip
    "depths": (2, 8, 32),
    "lrs": (1e-3, 3e-3),
    "seeds": (0, 1, 2),
}
QUICK = {
    "overrides": [
        "model.d_model=32",
        "model.n_heads=2",
        "model.d_ff=64",
        "model.max_seq_len=32",
        "data.batch_size=4",
        "train.steps=4",
        "optim.warmup_steps=1",
        "train.eval_every=2",
        "train.eval_batches=1",
        "train.log_every=2",
    ],  # fmt: skip
    "depths": (2, 4),
    "lrs": (3e-3,),
    "seeds": (0,),
}
COMMON = ["train.mfu=false", "model.dropout=0.0", "model.scan_unroll=1"]


def _probe(batch):
    """Per-layer gradient norms and representation rank of a model on one validation batch."""

    def of(cfg, params, model_state) -> dict[str, list[float]]:
        model = build_model(cfg.model)
        grads_fn = jax.jit(make_gradient_fn(model))
        grads, _, _ = grads_fn(params, model_state, batch, jax.random.key(0),
                               batch_tokens(batch), None)  # fmt: skip
        h = layer_outputs(model, {"params": params, **model_state}, batch["inputs"])
        return {
            "grad_norm_by_layer": layer_grad_norms(grads, cfg.model.n_layers).tolist(),
            "effective_rank_by_layer": effective_rank(h).tolist(),
            "rank_one_residual_by_layer": rank_one_residual(h).tolist(),
        }

    return of


def main(argv: list[str] | None = None):
    args = experiment_parser(__doc__.splitlines()[0]).parse_args(argv)
    s = QUICK if args.quick else FULL
    data = prepare_data(None, "byte")
    base = apply_overrides(PRESETS["nano"], [*s["overrides"], *COMMON])
    base = with_vocab(base, data.tokenizer)
    batch = next(val_batches(data.val, batch_size=base.data.batch_size, seq_len=base.seq_len))
    probe = _probe(batch)
    measure = lambda result, cfg: probe(cfg, result.state.params, result.state.model_state)  # noqa: E731
    settings = {f"{name}, {depth} layers": [*o, f"model.n_layers={depth}"]
                for depth in s["depths"] for name, o in VARIANTS.items()}  # fmt: skip

    at_init = {}
    for name, overrides in settings.items():
        cfg = apply_overrides(base, overrides)
        params, model_state = init_model(cfg.model, jax.random.key(0))
        at_init[name] = probe(cfg, params, model_state)

    search = tune(base, settings, "optim.lr", s["lrs"], data=data, measure=measure)
    tuned = {name: [*o, f"optim.lr={search.best[name]}"] for name, o in settings.items()}
    more = run_trials(base, tuned, seeds=s["seeds"][1:], data=data, measure=measure)
    trials = [*search.best_trials.values(), *more]
    rows = summarize(trials, {"val_loss": lambda t: t.final_val,
                              "train_loss": lambda t: t.final_train})  # fmt: skip
    for row in rows:
        name = row["setting"]
        row["variant"], row["depth"] = name.rsplit(", ", 1)[0], int(name.rsplit(" ", 2)[1])
        row["lr"] = search.best[name]
        seed0 = search.best_trials[name].extra
        init = at_init[name]
        row["init_grad_first/last"] = _ratio(init["grad_norm_by_layer"])
        row["init_rank_one_residual_last"] = init["rank_one_residual_by_layer"][-1]
        if seed0:
            row["trained_rank_one_residual_last"] = seed0["rank_one_residual_by_layer"][-1]
            row["trained_effective_rank_last"] = seed0["effective_rank_by_layer"][-1]
    metrics = {
        "shape": f"d={base.model.d_model}, {base.model.n_heads} heads, ctx {base.seq_len}, "
        f"batch {base.data.batch_size}, {base.train.steps} steps",
        "lr_grid": list(s["lrs"]),
        "tuning": [{"setting": t.setting, "val_loss": t.final_val} for t in search.trials],
        "at_init": at_init,
        "trained_seed0": {name: t.extra for name, t in search.best_trials.items()},
        "depths": list(s["depths"]),
    }
    return write_results("residuals", metrics | {"rows": rows}, rows=mean_columns(rows),
                         plots={"residuals": _plot(metrics, rows)}, out_dir=args.out_dir,
                         quick=args.quick)  # fmt: skip


def _ratio(norms: list[float]) -> float:
    """The first block's gradient norm over the last one's (how unevenly depth shares it)."""
    return float(norms[0] / norms[-1]) if norms[-1] > 0 else float("inf")


def _plot(metrics, rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(14, 9), dpi=80)
    (loss_ax, grad_ax), (rank_ax, eff_ax) = axes
    variants = list(VARIANTS)
    colors = dict(zip(variants, ("tab:blue", "tab:orange", "tab:red"), strict=True))
    for variant in variants:
        mine = sorted((r for r in rows if r["variant"] == variant), key=lambda r: r["depth"])
        depths = [r["depth"] for r in mine]
        mean = np.asarray([r.get("val_loss", np.nan) for r in mine])
        low = mean - np.asarray([r.get("val_loss_min", np.nan) for r in mine])
        high = np.asarray([r.get("val_loss_max", np.nan) for r in mine]) - mean
        loss_ax.errorbar(depths, mean, yerr=[low, high], marker="o", capsize=3, label=variant,
                         color=colors[variant])  # fmt: skip
    loss_ax.set_xscale("log", base=2)
    loss_ax.set_xlabel("layers")
    loss_ax.set_ylabel("final validation loss (nats/byte)")
    loss_ax.set_title("each at its tuned lr; min-max over seeds")
    loss_ax.legend(fontsize=8)
    loss_ax.grid(alpha=0.3)

    deepest = max(metrics["depths"])
    for variant in variants:
        name = f"{variant}, {deepest} layers"
        layers = np.arange(1, deepest + 1)
        grad_ax.plot(layers, metrics["at_init"][name]["grad_norm_by_layer"], "--",
                     color=colors[variant], label=f"{variant}, init")  # fmt: skip
        trained = metrics["trained_seed0"].get(name) or {}
        if trained:
            grad_ax.plot(layers, trained["grad_norm_by_layer"], "-", color=colors[variant],
                         label=f"{variant}, trained")  # fmt: skip
            rank_ax.plot(layers, trained["rank_one_residual_by_layer"], "-",
                         color=colors[variant], label=f"{variant}, trained")  # fmt: skip
            eff_ax.plot(layers, trained["effective_rank_by_layer"], "-", color=colors[variant],
                        label=f"{variant}, trained")  # fmt: skip
        rank_ax.plot(layers, metrics["at_init"][name]["rank_one_residual_by_layer"], "--",
                     color=colors[variant], label=f"{variant}, init")  # fmt: skip
        eff_ax.plot(layers, metrics["at_init"][name]["effective_rank_by_layer"], "--",
                    color=colors[variant], label=f"{variant}, init")  # fmt: skip
    grad_ax.set_yscale("log")
    grad_ax.set_xlabel(f"block (of {deepest})")
    grad_ax.set_ylabel("gradient norm of the block's params")
    grad_ax.set_title(f"gradient by layer, {deepest} layers (seed 0)")
    rank_ax.set_yscale("log")
    rank_ax.set_xlabel(f"block (of {deepest})")
    rank_ax.set_ylabel("||X - 1 mean(X)|| / ||X|| (0: rank collapse)")
    rank_ax.set_title("distance of the tokens from one shared vector")
    eff_ax.set_xlabel(f"block (of {deepest})")
    eff_ax.set_ylabel("effective rank of a sequence's T x D representations")
    eff_ax.set_title("effective rank by layer")
    for ax in (grad_ax, rank_ax, eff_ax):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"residual connections, {metrics['shape']}")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
