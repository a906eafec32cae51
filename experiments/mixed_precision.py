"""Q19: mixed precision. float32 vs bfloat16 vs float16 with and without loss scaling.

Params stay float32 in every run; only the compute dtype changes. Loss curves, compiled
memory and step time per setting, and the failure loss scaling prevents: with a mean loss over
many tokens the backward pass carries per-token gradients of order 1/tokens, below float16's
smallest normal number (6.1e-5), so they round to subnormals or to zero. Measured here as the
share of gradient entries that underflow to exactly zero, and the gradient's relative error
against float32, at the same params and batch.

    python -m experiments.mixed_precision            # 4L d=128, ctx 128, batch 32, 200 steps
    python -m experiments.mixed_precision --quick
"""

from __future__ import annotations

import jax
import numpy as np

from llmjax.config import PRESETS, apply_overrides
from llmjax.data import prepare_data, train_batch
from llmjax.models import build_model
from llmjax.objectives import batch_tokens
from llmjax.results import experiment_parser, write_results
from llmjax.train.bench import compile_step
from llmjax.train.fit import with_vocab
from llmjax.train.precision import gradient_fidelity
from llmjax.train.step import make_gradient_fn

SETTINGS = {
    "fp32": ["model.dtype=float32"],
    "bf16": ["model.dtype=bfloat16"],
    "fp16": ["model.dtype=float16", "train.loss_scale=none"],
    "fp16+scaling": ["model.dtype=float16", "train.loss_scale=dynamic"],
}
FULL = ["model.max_seq_len=128", "data.batch_size=32", "train.steps=200"]
QUICK = ["model.n_layers=2", "model.n_heads=2", "model.d_model=64", "model.max_seq_len=64",
         "data.batch_size=8", "train.steps=12"]  # fmt: skip
# XLA:CPU cannot compile jax.nn.dot_product_attention in float16 (see check_compute_dtype), so
# every setting uses the reference kernel, which computes logits and softmax in float32.
COMMON = ["model.attention=reference", "optim.warmup_steps=10", "train.mfu=false",
          "train.loss_scale_growth_interval=50"]  # fmt: skip


def main(argv: list[str] | None = None):
    args = experiment_parser(__doc__.splitlines()[0]).parse_args(argv)
    base = apply_overrides(PRESETS["nano"], [*(QUICK if args.quick else FULL), *COMMON])
    data = prepare_data(None, "byte")
    base = with_vocab(base, data.tokenizer)
    batches = [
        train_batch(data.train, s, batch_size=base.data.batch_size, seq_len=base.seq_len, seed=0)
        for s in range(base.train.steps)
    ]
    runs = {
        name: compile_step(apply_overrides(base, o), batches[0]) for name, o in SETTINGS.items()
    }
    start_params = jax.device_get(runs["fp32"].state.params)
    for batch in batches:  # alternating, so that the machine's slow spells hit all alike
        for run in runs.values():
            run.run(1, [batch])
    end_params = jax.device_get(runs["fp32"].state.params)

    # Gradients at the same params and batch; multiplying by a scale of 1 is exact, so one
    # compiled function per compute dtype serves the scaled and unscaled float16 cases.
    grad_fns = {dtype: _grad_fn(runs[name].cfg) for name, dtype in
                (("fp32", "float32"), ("bf16", "bfloat16"), ("fp16", "float16"))}  # fmt: skip
    settings = {"fp32": ("float32", 1.0), "bf16": ("bfloat16", 1.0), "fp16": ("float16", 1.0),
                "fp16+scaling": ("float16", 2.0**15)}  # fmt: skip
    fidelity = {}
    for label, params in (("init", start_params), ("trained", end_params)):
        grads = {n: grad_fns[d](params, batches[-1], s) for n, (d, s) in settings.items()}
        fidelity[label] = {n: gradient_fidelity(grads["fp32"], g) for n, g in grads.items()}

    # The same trained params on batches of more tokens: the mean's 1/tokens factor shrinks
    # every per-token gradient, and unscaled float16 loses more of them.
    sweep = []
    for multiple in (1,) if args.quick else (1, 4, 16):
        batch = {k: np.concatenate([b[k] for b in batches[-multiple:]]) for k in batches[-1]}
        reference = grad_fns["float32"](end_params, batch, 1.0)
        row = {"tokens": batch["targets"].size}
        for name in ("fp16", "fp16+scaling"):
            dtype, scale = settings[name]
            out = gradient_fidelity(reference, grad_fns[dtype](end_params, batch, scale))
            row |= {f"{name}_underflow": out["underflow"], f"{name}_rel_error": out["rel_error"]}
        sweep.append(row)

    rows = []
    for name, run in runs.items():
        losses = [m["loss"] for m in run.metrics]
        rows.append(
            {
                "setting": name,
                "final_loss": float(np.mean(losses[-5:])),
                "step_s": float(np.median(run.times)),
                "temp_MB": run.memory["temp"] / 1e6,
                "skipped_steps": int(run.metrics[-1]["nonfinite_total"]),
                "grad_underflow_trained": fidelity["trained"][name]["underflow"],
                "grad_rel_error_trained": fidelity["trained"][name]["rel_error"],
            }
        )
    m = base.model
    metrics = {
        "shape": f"{m.n_layers}L d={m.d_model} ctx={base.seq_len} batch={base.data.batch_size}",
        "tokens_per_batch": base.data.batch_size * base.seq_len,
        "fidelity_scale": settings["fp16+scaling"][1],
        "gradient_fidelity": fidelity,
        "fidelity_vs_tokens": sweep,
        "losses": {name: [m["loss"] for m in run.metrics] for name, run in runs.items()},
        "loss_scale": [m.get("loss_scale") for m in runs["fp16+scaling"].metrics],
    }
    return write_results(
        "mixed_precision", metrics, rows=rows, plots={"mixed_precision": _plot(metrics)},
        out_dir=args.out_dir, quick=args.quick,
    )  # fmt: skip


def _grad_fn(cfg):
    """(float32 params, batch, scale) -> float32-param gradients in cfg's compute dtype."""
    fn = make_gradient_fn(build_model(cfg.model))

    @jax.jit
    def grads(params, batch, scale):
        g, _, _ = fn(params, {}, batch, jax.random.key(0), batch_tokens(batch), scale)
        return jax.tree.map(lambda x: x / scale, g)

    return lambda params, batch, scale: jax.device_get(grads(params, batch, scale))


def _plot(metrics):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right, sweep_ax) = plt.subplots(1, 3, figsize=(16, 4), dpi=110)
    for name, losses in metrics["losses"].items():
        left.plot(np.arange(1, len(losses) + 1), losses, label=name)
    left.set_xlabel("step")
    left.set_ylabel("train loss (nats/token)")
    left.legend()
    left.grid(alpha=0.3)
    fid = metrics["gradient_fidelity"]
    names = list(fid["init"])
    x = np.arange(len(names))
    for i, label in enumerate(("init", "trained")):
        right.bar(x + 0.4 * i, [fid[label][n]["underflow"] for n in names], 0.4, label=label)
    right.set_xticks(x + 0.2, names)
    right.set_ylabel("gradient entries underflowed to 0")
    right.legend(title="params")
    right.grid(axis="y", alpha=0.3)
    sweep = metrics["fidelity_vs_tokens"]
    tokens = [r["tokens"] for r in sweep]
    for name, style in (("fp16", "o-"), ("fp16+scaling", "s--")):
        sweep_ax.plot(tokens, [r[f"{name}_rel_error"] for r in sweep], style, label=name)
    sweep_ax.set_xscale("log", base=2)
    sweep_ax.set_yscale("log")
    sweep_ax.set_xlabel("tokens per batch (trained params)")
    sweep_ax.set_ylabel("gradient relative error vs float32")
    sweep_ax.legend()
    sweep_ax.grid(alpha=0.3)
    fig.suptitle(f"mixed precision, {metrics['shape']}")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
