"""Q8/Q9: why cross-entropy. Next-token cross-entropy against the Brier score (squared error
on the predicted distribution) and the focal loss, on the same model, data and budget.

Each loss gets its own peak lr from the same 3-point grid (seed 0, lowest validation NLL),
then 3 seeds. Every model is evaluated the same way, by validation NLL (nats/byte), top-1
accuracy and the calibration of its next-byte confidence (reliability diagram, ECE over the
validation bytes). And the gradient each loss gives when the model is confidently wrong: the
norm of d loss / d logits against the target's probability, in closed form over a
distribution that puts the rest of its mass on one wrong byte, and measured on the trained
models' validation tokens.

    python -m experiments.loss_functions          # nano shape, 250 steps
    python -m experiments.loss_functions --quick
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from llmjax.config import PRESETS, apply_overrides
from llmjax.data import prepare_data, val_batches
from llmjax.eval.calibration import reliability
from llmjax.models import build_model
from llmjax.objectives.token_losses import (
    TOKEN_LOSSES,
    confidently_wrong_logits,
    logit_gradient_norms,
)
from llmjax.results import experiment_parser, seed_band, spread_bars, write_results
from llmjax.train.fit import with_vocab
from llmjax.train.sweep import curves, mean_columns, run_trials, summarize, tune

LOSSES = {"cross-entropy": ["train.objective=lm"], "brier": ["train.objective=brier"],
          "focal": ["train.objective=focal"]}  # fmt: skip
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
    "probe_batches": 1,
}
COMMON = ["train.mfu=false"]
WRONG_P = np.geomspace(1e-5, 0.5, 30)


def _probe(data, n_batches: int):
    """measure(result, cfg): calibration and logit-gradient sizes on validation tokens."""

    def measure(result, cfg) -> dict:
        model = build_model(cfg.model)
        variables = {"params": result.state.params, **result.state.model_state}

        @jax.jit
        def probs_and_grads(inputs, targets):
            logits = model.apply(variables, inputs).logits[..., : cfg.model.vocab_size]
            grads = {name: logit_gradient_norms(fn, logits, targets)
                     for name, fn in TOKEN_LOSSES.items()}  # fmt: skip
            return jax.nn.softmax(logits.astype(jnp.float32), -1), grads

        conf, correct, p_target, grads = [], [], [], {n: [] for n in TOKEN_LOSSES}
        for b in val_batches(data.val, batch_size=cfg.data.batch_size, seq_len=cfg.seq_len,
                             max_batches=n_batches):  # fmt: skip
            probs, g = jax.device_get(probs_and_grads(b["inputs"], b["targets"]))
            keep = b["mask"] > 0
            conf.append(probs.max(-1)[keep])
            correct.append((probs.argmax(-1) == b["targets"])[keep])
            p_target.append(np.take_along_axis(probs, b["targets"][..., None], -1)[..., 0][keep])
            for name in TOKEN_LOSSES:
                grads[name].append(g[name][keep])
        conf, correct = np.concatenate(conf), np.concatenate(correct)
        p_target = np.concatenate(p_target)
        rel = reliability(np.clip(conf, 0, 1), correct, bins=10)
        wrong = (p_target < 0.01) & (conf > 0.5)  # confidently wrong tokens
        return {
            "accuracy": float(correct.mean()),
            "ece": rel.ece,
            "reliability": rel.to_dict(),
            "confidently_wrong_share": float(wrong.mean()),
            # under this model's own loss, and under each loss at the same logits
            "grad_norm_confidently_wrong": {
                n: float(np.concatenate(v)[wrong].mean()) if wrong.any() else float("nan")
                for n, v in grads.items()
            },  # fmt: skip
            "grad_norm_all": {n: float(np.concatenate(v).mean()) for n, v in grads.items()},
        }

    return measure


def main(argv: list[str] | None = None):
    args = experiment_parser(__doc__.splitlines()[0]).parse_args(argv)
    s = QUICK if args.quick else FULL
    data = prepare_data(None, "byte")
    base = apply_overrides(PRESETS[s.get("preset", "nano")], [*s["overrides"], *COMMON])
    base = with_vocab(base, data.tokenizer)
    run = dict(data=data, measure=_probe(data, s["probe_batches"]))

    search = tune(base, LOSSES, "optim.lr", s["lrs"], **run)
    tuned = {name: [*o, f"optim.lr={search.best[name]}"] for name, o in LOSSES.items()}
    trials = [*search.best_trials.values(), *run_trials(base, tuned, seeds=s["seeds"][1:], **run)]
    rows = summarize(trials, {
        "val_nll": lambda t: t.final_val,
        "accuracy": lambda t: t.extra["accuracy"],
        "ece": lambda t: t.extra["ece"],
        "grad_when_confidently_wrong": lambda t: t.extra["grad_norm_confidently_wrong"][
            t.setting],
    })  # fmt: skip
    for row in rows:
        row["lr"] = search.best[row["setting"]]

    vocab = base.model.vocab_size
    logits = confidently_wrong_logits(jnp.asarray(WRONG_P), vocab)[:, None]  # [P, 1, V]
    targets = jnp.zeros((len(WRONG_P), 1), jnp.int32)
    closed_form = {name: np.asarray(logit_gradient_norms(fn, logits, targets))[:, 0].tolist()
                   for name, fn in TOKEN_LOSSES.items()}  # fmt: skip
    metrics = {
        "shape": f"{base.model.n_layers}L d={base.model.d_model} ctx={base.seq_len} "
        f"batch={base.data.batch_size}, {base.train.steps} steps",
        "lr_grid": list(s["lrs"]),
        "tuned_lr": search.best,
        "tuning": [{"setting": t.setting, "val_loss": t.final_val} for t in search.trials],
        "val_curves": curves(trials, "val"),
        "reliability_seed0": {n: t.extra["reliability"] for n, t in search.best_trials.items()},
        "grad_vs_p_target": {"p_target": WRONG_P.tolist(), **closed_form},
        "grad_norms_seed0": {
            n: {
                "confidently_wrong": t.extra["grad_norm_confidently_wrong"],
                "all": t.extra["grad_norm_all"],
                "confidently_wrong_share": t.extra["confidently_wrong_share"],
            }
            for n, t in search.best_trials.items()
        },  # fmt: skip
    }
    return write_results("loss_functions", metrics | {"rows": rows}, rows=mean_columns(rows),
                         plots={"loss_functions": _plot(metrics, rows)}, out_dir=args.out_dir,
                         quick=args.quick)  # fmt: skip


def _plot(metrics, rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9), dpi=80)
    (curve_ax, rel_ax), (grad_ax, bar_ax) = axes
    for name, runs in metrics["val_curves"].items():
        seed_band(curve_ax, runs, f"{name} (lr {metrics['tuned_lr'][name]})")
    curve_ax.set_xlabel("step")
    curve_ax.set_ylabel("validation NLL (nats/byte)")
    curve_ax.set_title("trained on each loss, evaluated by NLL; min-max over seeds")
    curve_ax.legend(fontsize=8)
    curve_ax.grid(alpha=0.3)

    rel_ax.plot([0, 1], [0, 1], "k:", label="calibrated")
    for name, rel in metrics["reliability_seed0"].items():
        conf, acc = np.asarray(rel["confidence"], float), np.asarray(rel["accuracy"], float)
        ok = np.isfinite(conf) & np.isfinite(acc)
        rel_ax.plot(conf[ok], acc[ok], "o-", label=f"{name} (ECE {rel['ece']:.3f})")
    rel_ax.set_xlabel("confidence (max next-byte probability)")
    rel_ax.set_ylabel("accuracy of the top byte")
    rel_ax.set_title("reliability on validation bytes (seed 0)")
    rel_ax.legend(fontsize=8)
    rel_ax.grid(alpha=0.3)

    g = metrics["grad_vs_p_target"]
    for name in metrics["val_curves"]:
        grad_ax.plot(g["p_target"], g[name], label=name)
    grad_ax.set_xscale("log")
    grad_ax.set_yscale("log")
    grad_ax.set_xlabel("probability of the right byte (the rest on one wrong byte)")
    grad_ax.set_ylabel("|d loss / d logits|")
    grad_ax.set_title("gradient when confidently wrong (closed form)")
    grad_ax.legend(fontsize=8)
    grad_ax.grid(alpha=0.3)

    names = [r["setting"] for r in rows]
    x = np.arange(len(names))
    for offset, key, label in ((-0.2, "accuracy", "top-1 accuracy"), (0.2, "ece", "ECE")):
        spread_bars(bar_ax, rows, key, label, offset, 0.4)
    bar_ax.set_xticks(x, names)
    bar_ax.set_ylabel("share")
    bar_ax.set_title("accuracy and calibration error; min-max over seeds")
    bar_ax.legend(fontsize=8)
    bar_ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"loss functions, {metrics['shape']}")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
