"""Q28: perplexity, task accuracy and generation quality on one family of checkpoints, and where
they disagree.

One byte transformer (nano shape, context 128) trains on text of solved built-in tasks ("Q:
<instruction>\\nA: <answer>" lines: reverse, sort, count, copy, add, ... in several phrasings),
keeping checkpoints along the way. Each checkpoint is measured three ways by llmjax.eval:

  perplexity   bits per byte of held-out solved questions (rolling windows)
  accuracy     exact match of greedy answers to held-out questions (generation task), and
               multiple choice: the true answer against three other answers of the same task
               by log-likelihood (acc and length-normalised acc_norm)
  generation   replies sampled at temperature 1: the share that is a well-formed answer line
               (ends with a newline within 24 bytes) and the share that is right

Rank correlations (Spearman) across checkpoints say whether the measures order the checkpoints
alike; the per-task table says where a lower perplexity comes with no better answers.

    python -m experiments.evaluation_metrics          # 18.7 min on this 2-core CPU (shared with
                                                      # another experiment)
    python -m experiments.evaluation_metrics --quick

One training run (one seed): the measures are compared across its checkpoints, on the same
held-out questions at every checkpoint, so what varies is the model alone. Half of the held-out
questions use phrasings never trained on; their text dominates the bits per byte. What would
change the conclusion: held-out text in the training phrasings only (its perplexity would track
the training loss more closely), more seeds (whether the rise of bits per byte at step 400 is
this run's), more checkpoints for the rank correlations (6 here).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from llmjax import fit
from llmjax.config import PRESETS, apply_overrides
from llmjax.data import ByteTokenizer
from llmjax.data.instruct import make_tasks
from llmjax.data.instruct.tasks import exact_match
from llmjax.eval import EvalLM
from llmjax.eval.tasks import Task, run_task
from llmjax.results import experiment_parser, write_results
from llmjax.train.fit import with_vocab

FULL = {"train_examples": 40_000, "heldout": 300, "steps": 2400,
        "checkpoints": (100, 200, 400, 800, 1600, 2400), "samples": 300}  # fmt: skip
QUICK = {"train_examples": 400, "heldout": 12, "steps": 4, "checkpoints": (2, 4), "samples": 8}
CONTEXT = 128


def _line(ex) -> str:
    return f"Q: {ex.prompt}\nA: {ex.answer}\n"


def _tasks(held, rng) -> dict[str, Task]:
    by_task: dict[str, list] = {}
    for ex in held:
        by_task.setdefault(ex.task, []).append(ex)
    gen, mc = [], []
    for ex in held:
        others = [o.answer for o in by_task[ex.task] if o.answer != ex.answer]
        context = f"Q: {ex.prompt}\nA:"
        gen.append({"context": context, "target": ex.answer, "task": ex.task})
        if len(set(others)) >= 3:
            wrong = list(rng.choice(sorted(set(others)), size=3, replace=False))
            choices = [" " + ex.answer, *(" " + w for w in wrong)]
            order = rng.permutation(4)
            mc.append({"context": context, "choices": [choices[i] for i in order],
                       "gold": int(np.flatnonzero(order == 0)[0]), "task": ex.task})  # fmt: skip
    return {
        "generate": Task("answers", "generate", tuple(gen)),
        "choice": Task("choice", "multiple_choice", tuple(mc)),
    }


def _spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(a) > 2 else float("nan")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = experiment_parser(__doc__.splitlines()[0]).parse_args(argv)
    s = QUICK if args.quick else FULL
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    train = make_tasks(0, s["train_examples"], "train")
    held = make_tasks(1, s["heldout"], "heldout_phrasing") + make_tasks(2, s["heldout"], "train")
    held_text = "".join(_line(ex) for ex in held)
    tasks = _tasks(held, rng)
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "tasks.txt"
        corpus.write_text("".join(_line(ex) for ex in train))
        cfg = apply_overrides(with_vocab(PRESETS["nano"], ByteTokenizer()), [
            f"data.path={corpus}", f"model.max_seq_len={CONTEXT}", "data.batch_size=16",
            f"train.steps={s['steps']}", f"train.eval_every={s['steps']}", "train.eval_batches=2",
            "train.mfu=false", "optim.name=muon", "optim.lr=1e-2", "optim.momentum=0.95",
            "optim.warmup_steps=20", f"train.checkpoint_every={math.gcd(*s['checkpoints'])}",
            "train.keep_checkpoints=1000"])  # fmt: skip
        run = Path(tmp) / "run"
        fit(cfg, run, progress=False)  # one run; a checkpoint at every chosen step
        for step in s["checkpoints"]:
            lm = EvalLM.from_run(run, step=step, batch_size=64)
            bpb = lm.rolling_loglikelihood([held_text], window=CONTEXT, stride=CONTEXT // 2)
            gen = run_task(lm, tasks["generate"], max_new_tokens=24)
            mc = run_task(lm, tasks["choice"])
            sampled = _sampled(lm, tasks["generate"], s["samples"], step)
            per_task = {}
            for name in sorted({i["task"] for i in tasks["generate"].items}):
                rows = [k for k, i in enumerate(tasks["generate"].items) if i["task"] == name]
                per_task[name] = float(np.mean([exact_match(gen["replies"][k],
                                                            tasks["generate"].items[k]["target"])
                                                for k in rows]))  # fmt: skip
            points.append({"step": step, "bits_per_byte": bpb.report["bits_per_byte"],
                           "exact_match": gen["exact_match"], "choice_acc": mc["acc"],
                           "choice_acc_norm": mc["acc_norm"], **sampled,
                           "exact_match_by_task": per_task})  # fmt: skip
            print(json.dumps({k: v for k, v in points[-1].items() if k != "exact_match_by_task"}),
                  flush=True)  # fmt: skip
    cols = ("bits_per_byte", "exact_match", "choice_acc", "sample_well_formed", "sample_right")
    neg_bpb = [-p["bits_per_byte"] for p in points]  # higher is better for every column
    corr = {c: _spearman(neg_bpb, [p[c] for p in points]) for c in cols[1:]}
    metrics = {"settings": s, "checkpoints": points, "spearman_with_minus_bpb": corr,
               "wall_s": round(time.perf_counter() - t0, 1)}  # fmt: skip
    rows = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in p.items()
             if k != "exact_match_by_task"} for p in points]  # fmt: skip
    out = write_results("evaluation_metrics", metrics, rows=rows,
                        plots={"evaluation_metrics": _plot(points)}, out_dir=args.out_dir,
                        quick=args.quick)  # fmt: skip
    metrics["results_dir"] = str(out)
    return metrics


def _sampled(lm: EvalLM, task: Task, n: int, step: int) -> dict:
    """Temperature-1 replies: the share well formed (an answer line) and the share right."""
    import jax

    from llmjax.decode.samplers import SamplingConfig
    from llmjax.decode.tokens import generate_tokens

    items = task.items[:n]
    prompts = [lm.encode(i["context"]) for i in items]
    sampling = SamplingConfig(temperature=1.0)
    out = generate_tokens(lm.model, lm.variables, prompts, max_new_tokens=24,
                          key=jax.random.key(step), sampling=sampling)  # fmt: skip
    well = right = 0
    for b, item in enumerate(items):
        text = lm.tokenizer.decode(out.tokens[b, : out.lengths[b]])
        if "\n" in text:
            well += 1
            right += exact_match(text.split("\n")[0], item["target"])
    return {"sample_well_formed": well / len(items), "sample_right": right / len(items)}


def _plot(points: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.3), dpi=100)
    steps = [p["step"] for p in points]
    a.semilogx(steps, [p["bits_per_byte"] for p in points], "o-", color="black")
    a.set_xlabel("training step")
    a.set_ylabel("held-out bits per byte", color="black")
    a.set_title("perplexity and the accuracy measures per checkpoint")
    twin = a.twinx()
    shown = (
        ("exact_match", "tab:blue"),
        ("choice_acc", "tab:orange"),
        ("sample_right", "tab:green"),
        ("sample_well_formed", "tab:gray"),
    )
    for key, color in shown:
        twin.semilogx(steps, [p[key] for p in points], "s--", color=color, label=key)
    twin.set_ylabel("share")
    twin.legend(fontsize=8, loc="center right")
    names = sorted(points[0]["exact_match_by_task"])
    for name in names:
        b.semilogx(steps, [p["exact_match_by_task"][name] for p in points], "o-", ms=3,
                   label=name)  # fmt: skip
    b.set_xlabel("training step")
    b.set_ylabel("exact match (greedy)")
    b.set_title("exact match by task")
    b.legend(fontsize=7, ncol=2)
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
