"""Q26, Q27: hallucination and calibration on a knowledge base whose every fact's training
frequency is known (llmjax.data.knowledge).

A byte transformer (nano shape, context 96) trains on text stating the facts of invented people,
each fact 0, 1 or 2..16 times in varied phrasings, mixed with question-answer lines about half
of the people (the "drill" half: how to answer) and with grounded questions (the fact stated in
the prompt). Questions about the other half measure knowledge the model can only have from the
statements:

  answers      greedy reply to "Q: ...\\nA:": right, fluent and wrong (a valid value of that
               attribute, not the true one: a hallucination), or not a value at all; by how many
               times the fact was stated
  calibration  the model's probability of each candidate value (log-likelihood over the
               attribute's values, normalised): confidence of its top choice against accuracy,
               reliability diagram and expected calibration error
  abstention   answering only above a confidence threshold: accuracy against coverage
  grounding    the same questions with the fact stated in the prompt
  monofacts    Kalai & Vempala (2024): a calibrated model hallucinates on arbitrary facts at
               least at about the rate of facts seen exactly once in training (the Good-Turing
               estimate of the unseen mass); the monofact share is varied across runs and the
               hallucination rate on the held-out half is set beside it

    python -m experiments.hallucination          # 9 runs: 60 min on this 2-core CPU (shared
                                                 # with another experiment)
    python -m experiments.hallucination --quick

What would change the conclusions: a larger model or longer training (facts stated 2-3 times
are still often wrong, and the model never learns to read a fact given in the prompt, so the
grounding result is about this size); a calibrated model (the lower bound of Kalai & Vempala
holds for calibrated models; these are overconfident, ECE 0.10-0.20); other value sets (an
answer is chosen from 8-12 values, so guessing is right 8-12% of the time).
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
from llmjax.data import ByteTokenizer
from llmjax.data.knowledge import KnowledgeBase, fact_counts, training_text
from llmjax.eval import EvalLM
from llmjax.eval.calibration import reliability, selective
from llmjax.results import experiment_parser, spread, write_results
from llmjax.train.fit import with_vocab

FULL = {"people": 240, "monofact_rates": (0.1, 0.3, 0.5), "unseen_rate": 0.1, "seeds": 3,
        "steps": 1200, "drill_repeats": 3}  # fmt: skip
QUICK = {"people": 16, "monofact_rates": (0.3,), "unseen_rate": 0.1, "seeds": 1, "steps": 6,
         "drill_repeats": 1}  # fmt: skip
CONTEXT = 96
BUCKETS = ((0, 0), (1, 1), (2, 3), (4, 7), (8, 16))


def _bucket(c: int) -> str:
    for lo, hi in BUCKETS:
        if lo <= c <= hi:
            return str(lo) if lo == hi else f"{lo}-{hi}"
    return f">{BUCKETS[-1][1]}"


def _corpus(kb: KnowledgeBase, counts: np.ndarray, drill: set[str], s: dict, rng) -> str:
    """Statements, plus answered questions (plain and grounded) about the drill people."""
    lines = training_text(kb, counts, rng).splitlines()
    for q in kb.questions():
        if q.fact.person in drill:
            lines += [q.prompt + q.answer] * s["drill_repeats"]
            lines += [q.fact.statement(int(rng.integers(3))) + "\n" + q.prompt + q.answer]
    order = rng.permutation(len(lines))
    return "\n\n".join(lines[i] for i in order) + "\n"


def _train(text_path: Path, s: dict, seed: int, out: Path) -> EvalLM:
    cfg = apply_overrides(with_vocab(PRESETS["nano"], ByteTokenizer()), [
        f"data.path={text_path}", f"model.max_seq_len={CONTEXT}", "data.batch_size=16",
        "data.val_fraction=0.02", f"train.steps={s['steps']}", f"train.eval_every={s['steps']}",
        "train.eval_batches=2", "train.mfu=false", f"train.seed={seed}", "optim.name=muon",
        "optim.lr=1e-2", "optim.momentum=0.95", "optim.warmup_steps=20",
        f"train.checkpoint_every={s['steps']}"])  # fmt: skip
    fit(cfg, out, progress=False)
    return EvalLM.from_run(out, batch_size=64)


def _measure(lm: EvalLM, kb: KnowledgeBase, counts: np.ndarray, drill: set[str]) -> dict:
    held = [(q, int(c)) for q, c in zip(kb.questions(), counts, strict=True)
            if q.fact.person not in drill]  # fmt: skip
    replies = lm.generate_until([q.prompt for q, _ in held], until=["\n"], max_new_tokens=12)
    grounded = lm.generate_until([q.fact.statement(0) + "\n" + q.prompt for q, _ in held],
                                 until=["\n"], max_new_tokens=12)  # fmt: skip
    # the model's distribution over each attribute's values
    pairs = [(q.prompt, " " + v) for q, _ in held for v in kb.values[q.fact.attribute]]
    scored = iter(lm.loglikelihood(pairs))
    conf, right_choice, kinds, g_right = [], [], [], []
    for (q, _), reply, g in zip(held, replies, grounded, strict=True):
        values = kb.values[q.fact.attribute]
        ll = np.asarray([next(scored).logprob for _ in values])
        p = np.exp(ll - ll.max())
        p /= p.sum()
        conf.append(float(p.max()))
        right_choice.append(values[int(np.argmax(p))] == q.fact.value)
        said = reply.strip()
        kinds.append("right" if said == q.fact.value else
                     "hallucinated" if said in values else "no value")  # fmt: skip
        g_right.append(g.strip() == q.fact.value)
    kinds_a = np.asarray(kinds)
    c_held = np.asarray([c for _, c in held])
    by_bucket = {}
    for lo, hi in BUCKETS:
        m = (c_held >= lo) & (c_held <= hi)
        if m.any():
            by_bucket[_bucket(lo)] = {
                "questions": int(m.sum()),
                "right": float((kinds_a[m] == "right").mean()),
                "hallucinated": float((kinds_a[m] == "hallucinated").mean()),
                "no_value": float((kinds_a[m] == "no value").mean()),
                "grounded_right": float(np.mean(np.asarray(g_right)[m])),
                "confidence": float(np.mean(np.asarray(conf)[m])),
            }  # fmt: skip
    rel = reliability(conf, right_choice, bins=10)
    sel = selective(conf, right_choice)
    answered = kinds_a != "no value"
    return {
        "questions": len(held),
        "by_count": by_bucket,
        "right": float((kinds_a == "right").mean()),
        "hallucination_rate": float((kinds_a == "hallucinated").mean()),
        "hallucination_rate_of_answers": float((kinds_a[answered] == "hallucinated").mean())
        if answered.any() else float("nan"),
        "grounded_right": float(np.mean(g_right)),
        "choice_accuracy": float(np.mean(right_choice)),
        "reliability": rel.to_dict(),
        "ece": rel.ece,
        "selective": {f"{c:g}": sel.accuracy_at(c) for c in (0.1, 0.25, 0.5, 0.75, 1.0)},
        "monofact_rate_held": float((c_held == 1).mean()),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = experiment_parser(__doc__.splitlines()[0]).parse_args(argv)
    s = QUICK if args.quick else FULL
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for rate in s["monofact_rates"]:
            for seed in range(s["seeds"]):
                kb = KnowledgeBase.generate(seed, s["people"])
                rng = np.random.default_rng([seed, int(rate * 1000)])
                counts = fact_counts(kb, rng, monofact_rate=rate, unseen_rate=s["unseen_rate"])
                people = sorted({f.person for f in kb.facts})
                drill = set(rng.permutation(people)[: len(people) // 2].tolist())
                path = Path(tmp) / f"kb-{rate}-{seed}.txt"
                path.write_text(_corpus(kb, counts, drill, s, rng))
                lm = _train(path, s, seed, Path(tmp) / f"run-{rate}-{seed}")
                m = _measure(lm, kb, counts, drill)
                m |= {"monofact_rate": rate, "seed": seed,
                      "train_monofact_share": float((counts == 1).mean())}  # fmt: skip
                results.append(m)
                keys = (
                    "monofact_rate",
                    "seed",
                    "right",
                    "hallucination_rate",
                    "ece",
                    "grounded_right",
                )
                print(json.dumps({k: m[k] for k in keys}), flush=True)
    rows = []
    for rate in s["monofact_rates"]:
        mine = [r for r in results if r["monofact_rate"] == rate]
        h, e = spread([r["hallucination_rate"] for r in mine]), spread([r["ece"] for r in mine])
        rows.append({
            "monofact rate": rate, "hallucination rate": round(h["mean"], 3),
            "h_min": round(h["min"], 3), "h_max": round(h["max"], 3),
            "right": round(float(np.mean([r["right"] for r in mine])), 3),
            "grounded right": round(float(np.mean([r["grounded_right"] for r in mine])), 3),
            "ECE": round(e["mean"], 3),
            "accuracy at 25% coverage": round(float(np.mean(
                [r["selective"]["0.25"] for r in mine])), 3),
        })  # fmt: skip
    metrics = {"settings": s, "runs": results, "wall_s": round(time.perf_counter() - t0, 1)}
    out = write_results("hallucination", metrics, rows=rows,
                        plots={"hallucination": _plot(results, s)}, out_dir=args.out_dir,
                        quick=args.quick)  # fmt: skip
    metrics["rows"], metrics["results_dir"] = rows, str(out)
    return metrics


def _plot(results: list[dict], s: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4.4), dpi=100)
    buckets = [_bucket(lo) for lo, _ in BUCKETS]
    x = np.arange(len(buckets))
    for key, color in (("right", "tab:green"), ("hallucinated", "tab:red"),
                       ("grounded_right", "tab:blue")):  # fmt: skip
        ys = [
            np.mean([r["by_count"][bk][key] for r in results if bk in r["by_count"]])
            if any(bk in r["by_count"] for r in results)
            else np.nan
            for bk in buckets
        ]
        a.plot(x, ys, "o-", color=color, label=key.replace("_", " "))
    a.set_xticks(x, buckets)
    a.set_xlabel("times the fact was stated in training")
    a.set_ylabel("share of held-out questions")
    a.set_title("answers by training frequency (all runs)")
    rel = results[0]["reliability"]
    centers = (np.asarray(rel["edges"][:-1]) + np.asarray(rel["edges"][1:])) / 2
    for r in results:
        # float: empty bins are NaN (written as "nan" in metrics.json, when redrawn from it)
        b.plot(centers, np.asarray(r["reliability"]["accuracy"], float), "o-", ms=3, alpha=0.6)
    b.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    b.set_xlabel("confidence of the top value")
    b.set_ylabel("accuracy in the bin")
    b.set_title("reliability diagram (one line per run)")
    rates = sorted({r["monofact_rate"] for r in results})
    for rate in rates:
        hs = [r["hallucination_rate"] for r in results if r["monofact_rate"] == rate]
        c.plot([rate] * len(hs), hs, "o", color="tab:red")
    c.plot([0, max(rates)], [0, max(rates)], "k--", lw=1, label="hallucination = monofact rate")
    c.set_xlabel("share of facts stated exactly once")
    c.set_ylabel("hallucination rate (held-out half)")
    c.set_title("Kalai & Vempala's lower bound")
    for ax in (a, b, c):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
