"""Q11: instruction tuning. A small pretrained base before and after SFT, prompt-masked against
all-token loss, and full fine-tuning against LoRA at ranks 1, 4 and 16.

The base (byte tokenizer, 2 layers, d=64) is pretrained here on plain text of all ten built-in
tasks in all four phrasings, one "instruction\\nanswer\\n\\n" document after another: it has
seen every task, but never the chat template's role markers nor an end-of-reply token. SFT
trains on chat-formatted conversations of the "train" split (8 tasks, 3 phrasings each; lookup
and subtract held out: one task the small base partly learns from raw text, one it does not)
with AdamW; LoRA (alpha 16, no dropout) adapts every attention and MLP kernel.

Accuracy is exact match of the whole reply, end marker included, by teacher forcing
(llmjax.eval.instruct): every reply token is the model's top-1 prediction given the true prefix,
which is exactly when greedy decoding writes the reply and stops (ties have measure zero).
"answer" leaves the end marker out (greedy decoding starts with the answer). Scored on (a) new
instances of the training tasks and phrasings, (b) the held-out phrasing of each training
task, (c) the held-out tasks; no scored prompt occurs in pretraining or SFT data, and every
set is scored with reply-only masks. Each method picks its lr from the same grid by the reply
loss on a validation split of the training tasks (seed 0), then trains with more seeds
(batch order and adapter init; the base is fixed). Step time: the methods' compiled steps,
timed in turns through the training loop.

    python -m experiments.instruction_tuning [--quick]
"""

from __future__ import annotations

import time

import jax
import numpy as np

from llmjax.config import PRESETS, apply_overrides
from llmjax.data import ByteTokenizer
from llmjax.data.instruct import InstructBatches, encode_all, make_tasks
from llmjax.data.sources import TextWindows
from llmjax.eval.instruct import ReplyScorer
from llmjax.models import build_model
from llmjax.models.lora import merge_adapters, with_fresh_adapters
from llmjax.results import experiment_parser, write_results
from llmjax.train.bench import measure_step, state_memory, time_round_robin
from llmjax.train.fit import with_vocab
from llmjax.train.trainer import Trainer

METHODS = {  # name: (LoRA rank, 0 for full fine-tuning; train_on)
    "full": (0, "responses"),
    "full, all tokens": (0, "all"),
    "LoRA r=1": (1, "responses"),
    "LoRA r=4": (4, "responses"),
    "LoRA r=16": (16, "responses"),
}
HELDOUT = ("lookup", "subtract")
SETS = {"a": "train", "b": "heldout_phrasing", "c": "heldout_task"}  # scored: letter -> split
FULL = {
    "model": ["model.d_model=64", "model.n_layers=2"], "pretrain_docs": 30_000,
    "pretrain_steps": 700, "pretrain_batch": 16, "sft_examples": 2000, "sft_steps": 100,
    "sft_batch": 8, "lrs": (1e-3, 3e-3, 1e-2, 3e-2), "seeds": 3, "eval_examples": 300,
    "time_rounds": 10, "methods": tuple(METHODS),
}  # fmt: skip
QUICK = {
    "model": ["model.d_model=32", "model.n_layers=1"], "pretrain_docs": 2000,
    "pretrain_steps": 30, "pretrain_batch": 8, "sft_examples": 200, "sft_steps": 12,
    "sft_batch": 8, "lrs": (3e-3,), "seeds": 1, "eval_examples": 40, "time_rounds": 2,
    "methods": ("full", "full, all tokens", "LoRA r=4"),  # each rank is a step to compile
}  # fmt: skip
# Unscanned layers: XLA:CPU compiles two layers unrolled in about half the time of a scan.
COMMON = ["model.max_seq_len=128", "model.position=rope", "model.scan_layers=false",
          "train.mfu=false", "optim.warmup_steps=10"]  # fmt: skip
# Muon learns the tasks' raw text several times faster than AdamW at this size.
PRETRAIN = ["optim.name=muon", "optim.lr=1e-2", "optim.momentum=0.95"]


def main(argv: list[str] | None = None):
    args = experiment_parser(__doc__.splitlines()[0]).parse_args(argv)
    s = QUICK if args.quick else FULL
    t_start = time.perf_counter()
    tok = ByteTokenizer()
    cfg = with_vocab(apply_overrides(PRESETS["nano"], [*s["model"], *COMMON]), tok)
    data = _data(s, tok, cfg.seq_len)
    base, pretrain = _pretrain(cfg, data.pop("text"), s)
    scorer = ReplyScorer.for_model(build_model(cfg.model), batch_size=16, seq_len=cfg.seq_len)

    def score(params, sets=("val", *SETS)) -> dict:
        out = {}
        for name in sets:
            encoded, tasks = data["scored"][name]
            scores = scorer(params, encoded)
            out[name] = {**scores.rates(), "by_task": scores.by_group(tasks)}
        return out

    before = score(base)
    steps = {}  # (rank, lr) -> CompiledStep: one compiled train step serves every seed
    sft = [
        "train.objective=sft",
        f"train.steps={s['sft_steps']}",
        f"data.batch_size={s['sft_batch']}",
    ]
    for rank in sorted({METHODS[m][0] for m in s["methods"]}):
        for lr in s["lrs"]:
            c = apply_overrides(cfg, [*sft, f"model.lora.rank={rank}", f"optim.lr={lr}"])
            trainer = Trainer(c)
            start = trainer.state_from(with_fresh_adapters(base, c.model, 0))
            steps[rank, lr] = measure_step(trainer, start, data["train"]["responses"].batch(0))

    def finetune(method: str, lr: float, seed: int) -> tuple[dict, dict]:
        rank, train_on = METHODS[method]
        trainer = steps[rank, lr].trainer
        state = trainer.state_from(with_fresh_adapters(base, trainer.cfg.model, seed))
        source = InstructBatches(data["train"][train_on].encoded, s["sft_batch"], cfg.seq_len, seed)
        state, metrics = trainer.train(source, state=state)
        params, _ = merge_adapters(jax.device_get(state.params), trainer.cfg.model)
        run = {"method": method, "lr": lr, "seed": seed, **score(params, ("val",))}
        run["train_loss"] = float(np.mean([m["loss"] for m in metrics[-10:]]))
        val, wall = run["val"], time.perf_counter() - t_start
        print(f"{method} lr={lr:g} seed={seed}: val reply loss {val['reply_loss']:.3f}, "
              f"exact {val['exact']:.3f} ({wall:.0f} s)", flush=True)  # fmt: skip
        return run, params

    runs, best = [], {}
    for method in s["methods"]:  # the lr grid on seed 0, judged on the validation split
        grid = [finetune(method, lr, 0) for lr in s["lrs"]]
        # Lowest reply loss: exact match on the validation split is a few percent here, too
        # coarse (a handful of right replies) to rank the lrs.
        run, params = min(grid, key=lambda g: (g[0]["val"]["reply_loss"], -g[0]["val"]["exact"]))
        best[method] = run["lr"]
        chosen = [(run, params)] + [finetune(method, run["lr"], k) for k in range(1, s["seeds"])]
        for run, params in chosen:
            run |= score(params, SETS)
        runs += [g[0] for g in grid if g[0]["lr"] != best[method]] + [c[0] for c in chosen]

    timed = {m: steps[METHODS[m][0], lr] for m, lr in best.items()}
    time_round_robin({id(v): v for v in timed.values()}, s["time_rounds"])
    rows = [_row("base (before SFT)", [before], None, None)]
    for method, lr in best.items():
        chosen = [r for r in runs if r["method"] == method and r["lr"] == lr]
        rows.append(_row(method, chosen, lr, timed[method]))
    metrics = {
        "settings": s,
        "heldout_tasks": HELDOUT,
        "pretraining": pretrain,
        "data": data["stats"],
        "lr_grid_val": {  # seed 0: (reply loss, exact match) on the validation split
            m: {
                f"{r['lr']:g}": (r["val"]["reply_loss"], r["val"]["exact"])
                for r in runs
                if r["method"] == m and not r["seed"]
            }
            for m in s["methods"]
        },
        "by_task_exact": {"base (before SFT)": _by_task([before])}
        | {
            m: _by_task([r for r in runs if r["method"] == m and r["lr"] == lr])
            for m, lr in best.items()
        },
        "base_by_task_answer": {
            k: {t: v["answer"] for t, v in before[k]["by_task"].items()} for k in SETS
        },
        "runs": runs,
        "wall_s": time.perf_counter() - t_start,
    }
    return write_results("instruction_tuning", metrics, rows=rows,
                         plots={"instruction_tuning": _plot(rows, metrics)},
                         out_dir=args.out_dir, quick=args.quick)  # fmt: skip


def _data(s: dict, tok: ByteTokenizer, seq_len: int) -> dict:
    """Pretraining text, SFT encodings (per train_on) and the scored sets: no scored prompt
    is in the pretraining text or the SFT data, nor in another scored set."""
    n = s["pretrain_docs"] // len(SETS)
    docs = [e for split in SETS.values() for e in make_tasks(10, n, split, heldout_tasks=HELDOUT)]
    order = np.random.default_rng(0).permutation(len(docs))
    text = "".join(f"{docs[i].prompt}\n{docs[i].answer}\n\n" for i in order)
    train = make_tasks(0, s["sft_examples"], "train", heldout_tasks=HELDOUT)
    seen = {e.prompt for e in docs} | {e.prompt for e in train}
    stats = {"pretrain_docs": len(docs), "pretrain_bytes": len(text)}
    encodings = {}
    for train_on in ("responses", "all"):
        encoded, enc = encode_all(
            [e.conversation() for e in train], tok, seq_len, train_on=train_on
        )
        encodings[train_on] = InstructBatches(encoded, s["sft_batch"], seq_len, 0)
        stats[f"sft_{train_on}"] = enc.as_dict()
    scored = {}
    for i, (name, split) in enumerate({"val": "train", **SETS}.items()):
        drawn = make_tasks(1 + i, 2 * s["eval_examples"], split, heldout_tasks=HELDOUT)
        examples = [e for e in drawn if e.prompt not in seen][: s["eval_examples"]]
        encoded, _ = encode_all([e.conversation() for e in examples], tok, seq_len)
        scored[name] = (encoded, [e.task for e in examples])
        seen |= {e.prompt for e in examples}
        stats[f"{name}_examples"] = len(examples)
    return {"text": text, "train": encodings, "scored": scored, "stats": stats}


def _pretrain(cfg, text: str, s: dict) -> tuple[dict, dict]:
    """The base's params after next-token training on the raw task text."""
    c = apply_overrides(
        cfg,
        [*PRETRAIN, f"train.steps={s['pretrain_steps']}", f"data.batch_size={s['pretrain_batch']}"],
    )
    ids = ByteTokenizer().encode(text)
    t0 = time.perf_counter()
    state, metrics = Trainer(c).train(TextWindows(ids, c.data.batch_size, c.seq_len, 0))
    losses = [m["loss"] for m in metrics]
    return jax.device_get(state.params), {
        "saw": "plain text of all ten tasks in all four phrasings: instruction, newline, answer",
        "steps": len(losses),
        "tokens": len(losses) * c.data.batch_size * c.seq_len,
        "corpus_tokens": len(ids),
        "final_loss": float(np.mean(losses[-20:])),
        "wall_s": time.perf_counter() - t0,
    }


def _row(method: str, runs: list[dict], lr: float | None, step) -> dict:
    """Means and spreads (std over seeds) of the scores on (a), (b), (c); the method's cost."""
    row = {"method": method, "lr": lr, "seeds": len(runs)}
    for letter in SETS:
        values = [r[letter]["exact"] for r in runs]
        row |= {f"exact_{letter}": float(np.mean(values)), f"std_{letter}": float(np.std(values))}
    for letter in SETS:
        row[f"answer_{letter}"] = float(np.mean([r[letter]["answer"] for r in runs]))
    row["reply_loss_a"] = float(np.mean([r["a"]["reply_loss"] for r in runs]))
    row["reply_loss_a_std"] = float(np.std([r["a"]["reply_loss"] for r in runs]))
    if step is not None:
        memory = state_memory(step.trainer, step.state)
        row |= {
            "trained_params": memory["trained_params"],
            "params_KB": memory["params_bytes"] / 1e3,
            "opt_state_KB": memory["opt_state_bytes"] / 1e3,
            "xla_temp_KB": step.memory["temp"] / 1e3,
            "ms_per_step": 1e3 * step.median_s,
        }
    return row


def _by_task(runs: list[dict]) -> dict[str, float]:
    """Exact match per task (mean over the runs) on each scored set: "task (set letter)"."""
    return {
        f"{task} ({letter})": float(np.mean([r[letter]["by_task"][task]["exact"] for r in runs]))
        for letter in SETS
        for task in runs[0][letter]["by_task"]
    }


def _plot(rows: list[dict], metrics: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc, tasks, cost) = plt.subplots(1, 3, figsize=(19, 4.8), dpi=90)
    x = np.arange(len(rows))
    labels = {"a": "(a) new instances", "b": "(b) held-out phrasing", "c": "(c) held-out tasks"}
    for i, (letter, label) in enumerate(labels.items()):
        acc.bar(x + (i - 1) * 0.27, [r[f"exact_{letter}"] for r in rows], 0.27, label=label,
                yerr=[r[f"std_{letter}"] for r in rows], capsize=3)  # fmt: skip
    acc.set_xticks(x, [r["method"] for r in rows], rotation=20, ha="right")
    acc.set_ylabel("exact match of the whole reply (share)")
    acc.set_ylim(0, 1.4 * max(r[f"exact_{k}"] + r[f"std_{k}"] for r in rows for k in SETS) + 1e-3)
    acc.legend(title=f"mean ± std over {metrics['settings']['seeds']} seed(s)", ncols=3, fontsize=8)
    acc.grid(axis="y", alpha=0.3)
    acc.set_title("greedy exact match (teacher-forced)")

    per_task = metrics["by_task_exact"]
    names = [n for n in per_task["base (before SFT)"] if not n.endswith("(b)")]
    y = np.arange(len(names))
    shown = ["base (before SFT)", *[r["method"] for r in rows[1:]]]
    for i, method in enumerate(shown):
        tasks.barh(y + i / (len(shown) + 1), [per_task[method][n] for n in names],
                   1 / (len(shown) + 1), label=method)  # fmt: skip
    tasks.set_yticks(y + 0.4, names, fontsize=8)
    tasks.invert_yaxis()
    tasks.set_xlabel("exact match (share, mean over seeds)")
    tasks.legend(fontsize=7)
    tasks.set_title("per task: training tasks on (a), held-out tasks on (c)")

    tuned = rows[1:]
    xs = [r["trained_params"] for r in tuned]
    ys = [r["reply_loss_a"] for r in tuned]
    cost.errorbar(xs, ys, yerr=[r["reply_loss_a_std"] for r in tuned], fmt="o", capsize=3)
    for r, px, py in zip(tuned, xs, ys, strict=True):
        note = (
            f"{r['method']}: {r['ms_per_step']:.0f} ms/step, opt. state {r['opt_state_KB']:.0f} KB"
        )
        right = px > np.sqrt(min(xs) * max(xs))  # labels kept inside the axes
        side = {"xytext": (-6, 0), "ha": "right"} if right else {"xytext": (6, 0), "ha": "left"}
        cost.annotate(note, (px, py), fontsize=7, textcoords="offset points", va="center", **side)
    cost.set_xscale("log")
    cost.set_xlabel("trained params (log scale)")
    cost.set_ylabel("(a) reply loss (nats per reply token)")
    cost.grid(alpha=0.3)
    cost.set_title("reply loss against trained params (lower is better)")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
