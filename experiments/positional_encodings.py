"""Q7: positional encodings. Learned, sinusoidal, RoPE, ALiBi and none (NoPE), on text and on
tasks that need order.

- Text (nano shape, context 64): validation loss (each type at its own lr from the same 2-point
  grid, 3 seeds); loss by position on windows 4x longer than trained (a learned table has no
  rows there); and whether the model knows where a token is: a ridge probe from the last
  layer's hidden states to the token's index (R^2 on held-out tokens). Haviv et al. (2022)
  report that causal models without positions still learn position, Kazemnejad et al. (2023)
  that they extrapolate in length better: both measured, not assumed.
- Order tasks (`llmjax.data.order_tasks`): reverse 8 symbols (needs to know where each input
  is) and sort them (needs only which symbols occur); per-output-token accuracy, 3 seeds, each
  type at its own lr from the same 2-point grid.

    python -m experiments.positional_encodings          # about 15 minutes on 2 cores
    python -m experiments.positional_encodings --quick
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from llmjax.config import PRESETS, apply_overrides
from llmjax.data import ByteTokenizer, prepare_data, val_batches
from llmjax.data.order_tasks import KINDS, OrderTask
from llmjax.data.sources import FromFunction
from llmjax.models import build_model
from llmjax.objectives.losses import token_log_probs
from llmjax.results import experiment_parser, spread_bars, write_results
from llmjax.train.fit import with_vocab
from llmjax.train.sweep import mean_columns, run_trials, summarize, tune

POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "none")
FULL = {
    "text": [
        "train.steps=250",
        "optim.warmup_steps=25",
        "train.eval_every=50",
        "train.eval_batches=8",
        "train.log_every=10",
    ],  # fmt: skip
    "task": [
        "model.n_layers=2",
        "model.d_model=64",
        "model.n_heads=4",
        "model.d_ff=256",
        "model.max_seq_len=16",
        "data.batch_size=32",
        "train.steps=400",
        "optim.warmup_steps=40",
        "train.eval_every=100",
        "train.log_every=20",
    ],  # fmt: skip
    "lrs": (1e-3, 3e-3),
    "task_lrs": (3e-3, 1e-2),
    "seeds": (0, 1, 2),
    "long": 4,  # evaluation windows: this many times the trained context
    "probe_batches": 8,
}
QUICK = {
    "text": [
        "model.n_layers=2",
        "model.d_model=32",
        "model.n_heads=2",
        "model.max_seq_len=32",
        "data.batch_size=4",
        "train.steps=4",
        "optim.warmup_steps=1",
        "train.eval_every=2",
        "train.eval_batches=1",
        "train.log_every=2",
    ],  # fmt: skip
    "task": [
        "model.n_layers=1",
        "model.d_model=32",
        "model.n_heads=2",
        "model.max_seq_len=16",
        "data.batch_size=8",
        "train.steps=4",
        "optim.warmup_steps=1",
        "train.eval_every=2",
        "train.log_every=2",
    ],  # fmt: skip
    "lrs": (3e-3,),
    "task_lrs": (1e-2,),
    "seeds": (0,),
    "long": 2,
    "probe_batches": 1,
}
COMMON = ["train.mfu=false"]


def _settings():
    return {p: [f"model.position={p}"] for p in POSITIONS}


def _text_probe(data, long: int, n_batches: int):
    """measure(result, cfg): loss by position on long windows and the position probe's R^2."""

    def measure(result, cfg) -> dict:
        model = build_model(cfg.model)
        variables = {"params": result.state.params, **result.state.model_state}
        T = cfg.seq_len
        out = {"position_r2": _position_r2(model, variables, data.val, cfg, n_batches)}
        if cfg.model.position == "learned":  # no table rows beyond the trained context
            out["loss_by_position"] = None
            return out
        nll = jax.jit(lambda x, y: -token_log_probs(model.apply(variables, x).logits, y))
        losses = [np.asarray(nll(b["inputs"], b["targets"]))
                  for b in val_batches(data.val, batch_size=4, seq_len=long * T,
                                       max_batches=n_batches)]  # fmt: skip
        per_position = np.concatenate(losses).mean(0)
        out["loss_by_position"] = per_position.tolist()
        out["loss_trained_range"] = float(per_position[:T].mean())
        out["loss_beyond"] = float(per_position[T:].mean())
        return out

    return measure


def _position_r2(model, variables, tokens, cfg, n_batches: int) -> float:
    """R^2 of a ridge regression from final hidden states to the token index, fitted on half
    the validation rows and scored on the other half."""
    hidden = jax.jit(lambda x: model.apply(variables, x, return_hidden=True).hidden)
    h, idx = [], []
    for b in val_batches(tokens, batch_size=8, seq_len=cfg.seq_len, max_batches=n_batches):
        x = np.asarray(hidden(b["inputs"]), np.float64)
        h.append(x.reshape(-1, x.shape[-1]))
        idx.append(np.tile(np.arange(cfg.seq_len), x.shape[0]))
    h, idx = np.concatenate(h), np.concatenate(idx).astype(np.float64)
    half = len(h) // 2
    mean, std = h[:half].mean(0), h[:half].std(0) + 1e-6  # standardized on the fitting half
    h = np.concatenate([(h - mean) / std, np.ones((len(h), 1))], axis=1)
    a, b = h[:half], idx[:half]
    w = np.linalg.solve(a.T @ a + 1.0 * np.eye(a.shape[1]), a.T @ b)
    pred = h[half:] @ w
    resid = ((idx[half:] - pred) ** 2).sum()
    return float(1.0 - resid / ((idx[half:] - idx[half:].mean()) ** 2).sum())


def _task_accuracy(task: OrderTask, batches: int = 8):
    def measure(result, cfg) -> dict:
        model = build_model(cfg.model)
        variables = {"params": result.state.params, **result.state.model_state}
        predict = jax.jit(lambda x: jnp.argmax(model.apply(variables, x).logits, -1))
        right, whole = [], []
        for i in range(batches):
            b = task.batch_at(10**6 + i, 64)  # held out: steps no training run reaches
            hit = (np.asarray(predict(b["inputs"])) == b["targets"])[:, task.length :]
            right.append(hit.mean())
            whole.append(hit.all(-1).mean())
        return {"token_accuracy": float(np.mean(right)), "exact": float(np.mean(whole))}

    return measure


def main(argv: list[str] | None = None):
    args = experiment_parser(__doc__.splitlines()[0]).parse_args(argv)
    s = QUICK if args.quick else FULL
    data = prepare_data(None, "byte")
    text_base = with_vocab(apply_overrides(PRESETS["nano"], [*s["text"], *COMMON]), data.tokenizer)
    measure = _text_probe(data, s["long"], s["probe_batches"])
    search = tune(text_base, _settings(), "optim.lr", s["lrs"], data=data, measure=measure)
    tuned = {p: [*o, f"optim.lr={search.best[p]}"] for p, o in _settings().items()}
    text_trials = [
        *search.best_trials.values(),
        *run_trials(text_base, tuned, seeds=s["seeds"][1:], data=data, measure=measure),
    ]
    rows = summarize(text_trials, {
        "val_loss": lambda t: t.final_val,
        "position_r2": lambda t: t.extra["position_r2"],
        "loss_beyond": lambda t: t.extra.get("loss_beyond", float("nan")),
    })  # fmt: skip
    for row in rows:
        row["part"], row["lr"] = "text", search.best[row["setting"]]

    task_curves = {}
    for kind in KINDS:
        task = OrderTask(kind)
        base = apply_overrides(PRESETS["nano"], [*s["task"], *COMMON])
        B = base.data.batch_size
        run = dict(source=FromFunction(lambda step, task=task, B=B: task.batch_at(step, B)),
                   val=lambda task=task, B=B: [task.batch_at(10**6 + i, B) for i in range(4)],
                   tokenizer=ByteTokenizer(), measure=_task_accuracy(task))  # fmt: skip
        found = tune(base, _settings(), "optim.lr", s["task_lrs"], **run)
        tuned = {p: [*o, f"optim.lr={found.best[p]}"] for p, o in _settings().items()}
        trials = [*found.best_trials.values(),
                  *run_trials(base, tuned, seeds=s["seeds"][1:], **run)]  # fmt: skip
        task_rows = summarize(trials, {"token_accuracy": lambda t: t.extra["token_accuracy"],
                                       "exact": lambda t: t.extra["exact"]})  # fmt: skip
        for row in task_rows:
            row["part"], row["lr"] = kind, found.best[row["setting"]]
        rows += task_rows
        task_curves[kind] = {t.setting: t.val for t in found.best_trials.values()}
    metrics = {
        "text_shape": f"{text_base.model.n_layers}L d={text_base.model.d_model} "
        f"ctx={text_base.seq_len}, {text_base.train.steps} steps",
        "trained_context": text_base.seq_len,
        "loss_by_position_seed0": {
            p: t.extra.get("loss_by_position") for p, t in search.best_trials.items()
        },  # fmt: skip
        "tuning": [{"setting": t.setting, "val_loss": t.final_val} for t in search.trials],
        "task_val_curves": task_curves,
    }
    return write_results("positional_encodings", metrics | {"rows": rows}, rows=mean_columns(rows),
                         plots={"positional_encodings": _plot(metrics, rows)},
                         out_dir=args.out_dir, quick=args.quick)  # fmt: skip


def _plot(metrics, rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(14, 9), dpi=80)
    (loss_ax, long_ax), (probe_ax, task_ax) = axes
    text = [r for r in rows if r["part"] == "text"]
    names = [r["setting"] for r in text]
    spread_bars(loss_ax, text, "val_loss", "validation loss at the trained context", 0.0, 0.6)
    loss_ax.set_xticks(range(len(names)), names)
    loss_ax.set_ylabel("validation loss (nats/byte)")
    low = np.nanmin([r.get("val_loss_min", np.nan) for r in text])
    loss_ax.set_ylim(low - 0.1, None)
    loss_ax.set_title("text; each at its tuned lr, min-max over seeds")
    loss_ax.legend(fontsize=8)
    loss_ax.grid(axis="y", alpha=0.3)

    T = metrics["trained_context"]
    for p, curve in metrics["loss_by_position_seed0"].items():
        if curve:
            c = np.asarray(curve)
            k = max(1, len(c) // 32)  # smoothed over k positions
            long_ax.plot(
                np.arange(len(c) // k) * k, c[: len(c) // k * k].reshape(-1, k).mean(1), label=p
            )
    long_ax.axvline(T, color="k", linestyle=":", label="trained context")
    long_ax.set_xlabel("position in the window")
    long_ax.set_ylabel("loss (nats/byte)")
    long_ax.set_title("longer windows than trained (seed 0; learned: no rows there)")
    long_ax.legend(fontsize=8)
    long_ax.grid(alpha=0.3)

    spread_bars(
        probe_ax, text, "position_r2", "R^2 of a linear probe: hidden state -> index", 0.0, 0.6
    )
    probe_ax.set_xticks(range(len(names)), names)
    probe_ax.set_ylabel("R^2 on held-out tokens")
    probe_ax.set_title("does the model know where a token is?")
    probe_ax.legend(fontsize=8)
    probe_ax.grid(axis="y", alpha=0.3)

    for i, kind in enumerate(KINDS):
        mine = [r for r in rows if r["part"] == kind]
        spread_bars(task_ax, mine, "token_accuracy", kind, (i - 0.5) * 0.4, 0.4)
    task_ax.set_xticks(range(len(POSITIONS)), POSITIONS)
    task_ax.set_ylabel("output-token accuracy (held-out rows)")
    task_ax.set_title("order tasks (8 symbols of 16); min-max over seeds")
    task_ax.legend(fontsize=8)
    task_ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"positional encodings, text {metrics['text_shape']}")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
