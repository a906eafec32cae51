"""Q29/Q30: prompting vs fine-tuning the same base model on the same tasks.

Base: a small model pretrained on raw text only, pages of solved questions (one task, one
phrasing, one plain layout per page: "Q: ..\\nA: ..", "Input: ..\\nOutput: ..", ".. => ..";
some pages show the inputs without an instruction, so that reading the page's examples pays)
of the tasks below in phrasings 0-2; never the chat template, phrasing 3 or a test instance.
Prompting: k solved examples of the query's task, worded in the query's phrasing, in a layout
(two plain ones the base saw, and the chat template it did not), greedy decoding.
Fine-tuning: full fine-tuning (objective sft) on n examples in phrasings 0-2 in the chat
template, asked 0-shot in that template. Both answer the same held-out test instances, each in
all 4 phrasings, scored by exact match (llmjax.eval.score_answers).
Tuning, 3 candidates each, chosen on the first seed's validation questions (phrasings 0-2):
the layout per k for prompting, the learning rate per n for fine-tuning. Brittleness: the
spread of accuracy over the phrasings (and, for prompting, the layouts).

    python -m experiments.prompt_vs_finetune           # full: 19 min on 2 busy shared CPU cores
    python -m experiments.prompt_vs_finetune --quick   # tiny everything, 1 seed (~40 s)
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import jax
import numpy as np

from llmjax.config import PRESETS, apply_overrides
from llmjax.data import ByteTokenizer, TokenData
from llmjax.data.instruct import (
    LAYOUTS,
    ChatFormat,
    InstructBatches,
    TextFormat,
    demonstration_pages,
    encode_all,
    few_shot_ids,
    make_instances,
)
from llmjax.eval import score_answers
from llmjax.models import build_model
from llmjax.results import experiment_parser, write_results
from llmjax.train.fit import fit
from llmjax.train.trainer import Trainer

PHRASINGS = 4  # every built-in task has 4; the last is held out of all training and demos
SEEN = (0, 1, 2)
PAGE_LAYOUTS = ("qa", "io", "arrow")  # what the base's pretraining pages use


@dataclass(frozen=True)
class Sizes:
    tasks: tuple[str, ...]
    pretrain_per_task: int  # instances on the base's pages
    pretrain_steps: int
    d_model: int
    n_layers: int
    context: int
    batch: int
    ks: tuple[int, ...]
    ns: tuple[int, ...]
    seeds: tuple[int, ...]
    test_per_task: int  # each asked in all 4 phrasings
    val_per_task: int  # each in one of phrasings 0-2
    ft_epochs: float  # fine-tuning runs this many epochs of its n examples, within:
    ft_steps: tuple[int, int]  # (least, most) steps
    ft_batch: int  # rows of ft_context tokens, conversations packed
    ft_context: int
    lrs: tuple[float, ...]  # candidates; a validation tie goes to the first (so do layouts)
    bare_share: float = 0.3  # pretraining pages without instructions (see demonstration_pages)
    layouts: tuple[str, ...] = ("qa", "arrow", "chat")
    max_new_tokens: int = 28  # the longest answer (copy, 23 characters) and its end
    eval_batch: int = 80
    pad_multiple: int = 64  # prompt-length buckets: one compiled program per bucket


QUICK = Sizes(
    tasks=("copy", "upper"), pretrain_per_task=150, pretrain_steps=12, d_model=32, n_layers=2,
    context=128, batch=8, ks=(0, 2), ns=(8, 32), seeds=(0,), test_per_task=3, val_per_task=2,
    ft_epochs=1, ft_steps=(2, 4), ft_batch=4, ft_context=128, lrs=(3e-3,),
    layouts=("qa", "chat"), max_new_tokens=12, eval_batch=32, pad_multiple=128,
)  # fmt: skip
# The tasks a 3-layer d=64 model learns within 1000 steps on these CPUs (count, copy, upper,
# some lookup; next to nothing of reverse, sorting or arithmetic in that budget).
FULL = Sizes(
    tasks=("copy", "upper", "lookup", "count"), pretrain_per_task=6000, pretrain_steps=1000,
    d_model=64, n_layers=3, context=256, batch=8, ks=(0, 1, 2, 4, 8), ns=(8, 32, 128, 512),
    seeds=(0, 1, 2), test_per_task=8, val_per_task=16, ft_epochs=3, ft_steps=(20, 120),
    ft_batch=8, ft_context=128, lrs=(1e-3, 3e-4, 3e-3), eval_batch=96,
)  # fmt: skip


@dataclass
class Questions:
    """Validation then test questions (one list), and where the test ones start."""

    asked: list
    n_val: int

    @property
    def test(self) -> list:
        return self.asked[self.n_val :]


def main(argv: list[str] | None = None):
    args = experiment_parser(__doc__.splitlines()[0]).parse_args(argv)
    s = QUICK if args.quick else FULL
    t0 = time.perf_counter()
    tok = ByteTokenizer()
    test = make_instances(1000, s.test_per_task, s.tasks)
    val = make_instances(2000, s.val_per_task, s.tasks, exclude={x.key for x in test})
    held = {x.key for x in (*test, *val)}  # kept out of pretraining, demos and fine-tuning
    questions = Questions(
        [x.phrased(SEEN[i % len(SEEN)]) for i, x in enumerate(val)]
        + [x.phrased(p) for x in test for p in range(PHRASINGS)],
        len(val),
    )
    base, base_info = _pretrain(s, tok, held)
    wall = {"pretrain": time.perf_counter() - t0}
    model = build_model(base.config.model)
    raw = _prompting(s, tok, model, base.state.params, questions, held)
    wall["prompting"] = time.perf_counter() - t0 - sum(wall.values())
    raw += _finetuning(s, tok, model, base, questions, held)
    wall["fine_tuning"] = time.perf_counter() - t0 - sum(wall.values())

    candidates = {"prompting": list(s.layouts), "fine-tuning": [_lr(lr) for lr in s.lrs]}
    chosen = {
        (m, x): _choose(raw, m, x, candidates[m], s.seeds[0])
        for m, xs in (("prompting", s.ks), ("fine-tuning", s.ns))
        for x in xs
    }
    rows = _summarize(raw, chosen, s.seeds[0])
    metrics = _findings(rows, s)
    metrics |= {
        "base": base_info,
        "sizes": dataclasses.asdict(s),
        "tuning": {"prompting": f"layout from {list(s.layouts)} per k",
                   "fine-tuning": f"lr from {list(s.lrs)} per n (AdamW, constant after "
                                  f"warmup, {s.ft_epochs:g} epochs within {list(s.ft_steps)} "
                                  f"steps of {s.ft_batch} rows of {s.ft_context} tokens)",
                   "chosen on": f"{questions.n_val} validation questions (phrasings 0-2), "
                                f"seed {s.seeds[0]}"},
        "test_questions": len(questions.test),
        "wall_s": {**wall, "total": time.perf_counter() - t0},
        "per_seed": raw,
    }  # fmt: skip
    return write_results("prompt_vs_finetune", metrics, rows=rows,
                         plots={"prompt_vs_finetune": _plot(rows, metrics)},
                         out_dir=args.out_dir, quick=args.quick)  # fmt: skip


def _pretrain(s: Sizes, tok, held):
    """The base model, trained on raw demonstration pages, and what it saw."""
    instances = make_instances(1, s.pretrain_per_task, s.tasks, exclude=held, distinct=False)
    layouts = [LAYOUTS[n] for n in PAGE_LAYOUTS]
    pages = demonstration_pages(
        instances, seed=0, layouts=layouts, phrasings=SEEN, bare_share=s.bare_share
    )
    ids = tok.encode(pages).astype(np.uint16)
    cut = int(0.95 * len(ids))
    cfg = apply_overrides(PRESETS["nano"], [
        f"model.max_seq_len={s.context}", f"model.d_model={s.d_model}",
        f"model.n_layers={s.n_layers}", "model.position=rope", f"data.batch_size={s.batch}",
        f"train.steps={s.pretrain_steps}", f"train.eval_every={s.pretrain_steps}",
        "train.eval_batches=4", "train.mfu=false", "optim.name=muon", "optim.lr=1e-2",
        f"optim.warmup_steps={max(1, s.pretrain_steps // 10)}",
    ])  # fmt: skip
    base = fit(cfg, data=TokenData(tok, ids[:cut], ids[cut:], "pages"), progress=False)
    info = {
        "saw": (f"{len(ids):,} bytes of demonstration pages (1-10 solved questions of one task, "
                f"one phrasing, one layout each; {s.bare_share:.0%} of pages the inputs alone, "
                f"no instruction): tasks {list(s.tasks)}, phrasings {list(SEEN)}, layouts "
                f"{list(PAGE_LAYOUTS)}; no chat template, no phrasing 3, no test or "
                f"validation instance"),
        "params": int(sum(np.size(x) for x in jax.tree.leaves(base.state.params))),
        "shape": f"{s.n_layers}L d={s.d_model} ctx={s.context} rope, byte tokens",
        "steps": s.pretrain_steps,
        "tokens_seen": s.pretrain_steps * s.batch * s.context,
        "val_loss": base.final_eval.get("loss"),
    }  # fmt: skip
    return base, info


def _formats(tok, names):
    return {n: ChatFormat(tok) if n == "chat" else TextFormat(LAYOUTS[n], tok) for n in names}


def _demos(pool, example, k):
    """The first k pool instances of the example's task, worded in its phrasing."""
    same = [x for x in pool if x.task == example.task][:k]
    return [x.phrased(example.phrasing).conversation() for x in same]


def _ask(s: Sizes, tok, model, params, fmt, prompts, questions: Questions):
    """Greedy answers to the prompts of every question, scored by exact match."""
    return score_answers(
        model, params, tok, prompts, [e.answer for e in questions.asked],
        max_new_tokens=s.max_new_tokens, stop_ids=fmt.stop_ids, stop_texts=fmt.stop_texts,
        batch_size=s.eval_batch, pad_multiple=s.pad_multiple,
    )  # fmt: skip


def _prompting(s: Sizes, tok, model, params, questions: Questions, held) -> list[dict]:
    """k-shot prompting of the base: a row per (layout, k, seed); seeds draw the demos."""
    budget = s.context - s.max_new_tokens  # as many demonstrations as fit with the answer
    pools = {seed: make_instances(100 + seed, max(s.ks), s.tasks, exclude=held) for seed in s.seeds}
    rows = []
    for name, fmt in _formats(tok, s.layouts).items():
        for k in s.ks:
            for seed in s.seeds if k else s.seeds[:1]:  # 0-shot has nothing to draw
                built = [few_shot_ids(fmt, _demos(pools[seed], e, k), e.conversation(),
                                      max_len=budget) for e in questions.asked]  # fmt: skip
                answers = _ask(s, tok, model, params, fmt, [ids for ids, _ in built], questions)
                used = np.mean([u for _, u in built[questions.n_val :]])
                rows.append(_row("prompting", k, name, seed, answers, used, questions))
    return rows


def _finetuning(s: Sizes, tok, model, base, questions: Questions, held) -> list[dict]:
    """Full fine-tuning on n chat examples: the lr per n is chosen on the first seed's
    validation accuracy, then the other seeds train with it. The schedule is constant after
    warmup, so one compiled trainer per lr serves every run length."""
    chat = ChatFormat(tok)
    prompts = [few_shot_ids(chat, [], e.conversation())[0] for e in questions.asked]
    trainers, rows = {}, []

    def run(n: int, lr: float, seed: int) -> None:
        if lr not in trainers:
            trainers[lr] = Trainer(apply_overrides(base.config, [
                "train.objective=sft", f"data.batch_size={s.ft_batch}", "optim.name=adamw",
                f"optim.lr={lr}", "optim.schedule=constant", "optim.warmup_steps=5",
            ]))  # fmt: skip
        trainer = trainers[lr]
        pool = make_instances(200 + seed, -(-n // len(s.tasks)), s.tasks, exclude=held)
        rng = np.random.default_rng(seed)
        picked = [pool[i] for i in rng.permutation(len(pool))[:n]]
        convs = [x.phrased(int(rng.choice(SEEN))).conversation() for x in picked]
        encoded, _ = encode_all(convs, tok, s.ft_context)
        source = InstructBatches(encoded, batch_size=s.ft_batch, seq_len=s.ft_context, seed=seed)
        epoch_steps = len(source.epoch_plan(0)) / s.ft_batch
        steps = int(np.clip(math.ceil(s.ft_epochs * epoch_steps), *s.ft_steps))
        state = trainer.run(trainer.state_from(base.state.params), source, start=0, end=steps)
        params = trainer.parallel.host_state(state).params
        answers = _ask(s, tok, model, params, chat, prompts, questions)
        rows.append(_row("fine-tuning", n, _lr(lr), seed, answers, 0, questions) | {
            "steps": steps})  # fmt: skip

    for n in s.ns:
        for lr in s.lrs:
            run(n, lr, s.seeds[0])
        best = _choose(rows, "fine-tuning", n, [_lr(lr) for lr in s.lrs], s.seeds[0])
        for seed in s.seeds[1:]:
            run(n, s.lrs[[_lr(lr) for lr in s.lrs].index(best)], seed)
    return rows


def _lr(lr: float) -> str:
    return f"lr={lr:g}"


def _choose(raw: list[dict], method: str, x: int, candidates: list[str], seed: int) -> str:
    """The candidate with the best validation accuracy on `seed` (the first on ties)."""
    val = {r["choice"]: r["val_acc"] for r in raw
           if (r["method"], r["examples"], r["seed"]) == (method, x, seed)}  # fmt: skip
    return max((c for c in candidates if c in val), key=lambda c: val[c])


def _row(method, x, choice, seed, answers, used, questions: Questions) -> dict:
    test = answers.correct[questions.n_val :].reshape(-1, PHRASINGS)  # [question, phrasing]
    # The first test question of each task, in phrasing 0: what the model actually wrote.
    first: dict[str, int] = {}
    for i, e in enumerate(questions.asked[questions.n_val :], questions.n_val):
        if e.phrasing == 0:
            first.setdefault(e.task, i)
    samples = [{"question": questions.asked[i].prompt, "answer": questions.asked[i].answer,
                "reply": answers.texts[i]} for i in first.values()]  # fmt: skip
    tasks = np.asarray([e.task for e in questions.test])
    right = answers.correct[questions.n_val :]
    by_task = {t: float(right[tasks == t].mean()) for t in dict.fromkeys(tasks.tolist())}
    return {
        "method": method, "examples": x, "choice": choice, "seed": seed,
        "val_acc": float(answers.correct[: questions.n_val].mean()),
        "test_acc": float(test.mean()), "by_phrasing": test.mean(0).tolist(),
        "by_task": by_task, "demos_used": float(used), "samples": samples,
    }  # fmt: skip


def _summarize(raw: list[dict], chosen: dict[tuple, str], tuning_seed: int) -> list[dict]:
    """One row per (method, examples, choice): mean and spread over seeds, per phrasing;
    `chosen` marks the tuned choice of each (method, examples), made on `tuning_seed`."""
    groups: dict[tuple, list[dict]] = {}
    for r in raw:
        groups.setdefault((r["method"], r["examples"], r["choice"]), []).append(r)
    rows = []
    for (method, x, choice), rs in groups.items():
        acc = np.asarray([r["test_acc"] for r in rs])
        phrasing = np.mean([r["by_phrasing"] for r in rs], axis=0)
        rows.append({
            "method": method, "examples": x, "choice": choice, "seeds": len(rs),
            "tune_val": next(r["val_acc"] for r in rs if r["seed"] == tuning_seed),
            "test_acc": float(acc.mean()), "test_std": float(acc.std()),
            "test_min": float(acc.min()), "test_max": float(acc.max()),
            **{f"p{i}": float(v) for i, v in enumerate(phrasing)},
            "phrasing_std": float(phrasing.std()),
            "phrasing_range": float(phrasing.max() - phrasing.min()),
            "demos_used": float(np.mean([r["demos_used"] for r in rs])),
            **{f"acc_{t}": float(np.mean([r["by_task"][t] for r in rs])) for t in rs[0]["by_task"]},
        })  # fmt: skip
    for r in rows:
        r["chosen"] = chosen[(r["method"], r["examples"])] == r["choice"]
    return sorted(rows, key=lambda r: (r["method"] != "prompting", r["examples"], r["choice"]))


def _findings(rows: list[dict], s: Sizes) -> dict:
    chosen = {(r["method"], r["examples"]): r for r in rows if r["chosen"]}
    prompting = [chosen[("prompting", k)] for k in s.ks]
    tuning = [chosen[("fine-tuning", n)] for n in s.ns]
    best_p = max(prompting, key=lambda r: r["test_acc"])
    best_f = max(tuning, key=lambda r: r["test_acc"])

    def templates(k, layouts):  # accuracy of every (layout, phrasing) at k
        group = [r for r in rows if r["method"] == "prompting" and r["examples"] == k]
        return [r[f"p{i}"] for r in group if r["choice"] in layouts for i in range(PHRASINGS)]

    plain = [n for n in s.layouts if n != "chat"]
    return {
        "prompting_curve": {r["examples"]: _point(r) for r in prompting},
        "finetuning_curve": {r["examples"]: _point(r) for r in tuning},
        "best_prompting": {"k": best_p["examples"], **_point(best_p)},
        "best_finetuning": {"n": best_f["examples"], **_point(best_f)},
        # Brittleness of prompting beyond the phrasing: over (layout, phrasing) templates.
        "prompting_spread_plain_layouts": {k: _spread(templates(k, plain)) for k in s.ks},
        "prompting_spread_all_layouts": {k: _spread(templates(k, s.layouts)) for k in s.ks},
    }


def _point(r: dict) -> dict:
    return {"choice": r["choice"], "acc": r["test_acc"], "seed_std": r["test_std"],
            "phrasing_std": r["phrasing_std"], "phrasing_range": r["phrasing_range"],
            "by_phrasing": [r[f"p{i}"] for i in range(PHRASINGS)],
            "by_task": {k[4:]: v for k, v in r.items() if k.startswith("acc_")}}  # fmt: skip


def _spread(values) -> dict:
    v = np.asarray(values, float)
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
            "max": float(v.max())}  # fmt: skip


def _plot(rows: list[dict], metrics: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curve, spread) = plt.subplots(1, 2, figsize=(13, 4.6), dpi=80)
    styles = {
        "prompting": ("tab:blue", "o-", "k-shot prompting, layout tuned"),
        "fine-tuning": ("tab:orange", "s-", "fine-tuning, lr tuned"),
    }
    for method, (color, style, what) in styles.items():
        group = [r for r in rows if r["method"] == method and r["chosen"]]
        x = np.asarray([r["examples"] for r in group], float)
        acc = np.asarray([r["test_acc"] for r in group])
        err = [acc - [r["test_min"] for r in group], [r["test_max"] for r in group] - acc]
        curve.errorbar(x, acc, yerr=err, fmt=style, color=color, capsize=3,
                       label=f"{what} (bars: seed min-max)")  # fmt: skip
        low = [min(r[f"p{i}"] for i in range(PHRASINGS)) for r in group]
        high = [max(r[f"p{i}"] for i in range(PHRASINGS)) for r in group]
        curve.fill_between(x, low, high, color=color, alpha=0.15)
        for r in group:  # fewer demonstrations than asked for fit the context
            if method == "prompting" and r["demos_used"] < r["examples"] - 0.1:
                curve.annotate(f"{r['demos_used']:.1f} fit", (r["examples"], r["test_acc"]),
                               textcoords="offset points", xytext=(4, -12), fontsize=7)  # fmt: skip
    markers = {"qa": "x", "arrow": "+", "io": "1", "chat": "v"}
    for name, marker in markers.items():
        other = [r for r in rows if r["method"] == "prompting" and r["choice"] == name]
        if other:
            curve.scatter([r["examples"] for r in other], [r["test_acc"] for r in other],
                          marker=marker, color="tab:blue", alpha=0.6, s=25,
                          label=f"prompting, layout {name}")  # fmt: skip
    curve.set_xscale("symlog", linthresh=1)
    curve.set_xlabel("examples used: k in the prompt (prompting) / n trained on (fine-tuning)")
    curve.set_ylabel("exact-match accuracy, held-out test")
    curve.set_ylim(-0.02, 1.02)
    curve.set_title("accuracy vs examples (band: worst to best phrasing)", fontsize=10)
    curve.legend(fontsize=7, loc="upper right")
    curve.grid(alpha=0.3)

    chosen = [r for r in rows if r["chosen"]]
    labels = [("prompt k=" if r["method"] == "prompting" else "tune n=") + str(r["examples"])
              for r in chosen]  # fmt: skip
    values = np.asarray([[r[f"p{i}"] for i in range(PHRASINGS)] for r in chosen])
    for i in range(PHRASINGS):
        held = " (held out)" if i == PHRASINGS - 1 else ""
        spread.scatter(np.arange(len(chosen)), values[:, i], s=22, label=f"phrasing {i}{held}")
    spread.vlines(np.arange(len(chosen)), values.min(1), values.max(1), color="gray", alpha=0.5)
    spread.set_xticks(np.arange(len(chosen)), labels, rotation=45, ha="right", fontsize=8)
    spread.set_ylabel("exact-match accuracy, held-out test")
    spread.set_ylim(-0.02, 1.02)
    spread.set_title("brittleness: accuracy per instruction phrasing (tuned settings)",
                     fontsize=10)  # fmt: skip
    spread.legend(fontsize=7)
    spread.grid(alpha=0.3)
    base = metrics["base"]
    fig.suptitle(f"Prompting vs fine-tuning one base model ({base['shape']}, {base['params']:,} "
                 f"params, {base['tokens_seen']:,} pretraining tokens); "
                 f"{metrics['test_questions']} test questions")  # fmt: skip
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
