"""Q23, Q24: RLHF. base -> SFT -> reward model -> PPO, SFT -> DPO, and GRPO on the gold reward
itself, against SFT alone, on the built-in preference task, measured by the hidden gold reward.

The task (llmjax.data.preference.builtin): prompts like "talk about rain", replies a few words
of a small vocabulary. The hidden gold reward, which stands in for human raters, gives +1 when
a reply ends with "yes" and +0.5 when it has 3 to 5 words; the demonstrations SFT learns from
show both only sometimes (a random demonstration scores 0.71 on average, the best reply 1.5).
Raters label pairs of demonstrations by the gold reward with Bradley-Terry noise.

Per seed (byte tokenizer, 2 layers, d=64, RoPE; every stage a run of the library's commands'
Python API, written under results/rlhf/runs/):
  base      the LM objective on plain pages of prompts and demonstrations
  SFT       `sft` on demonstrations (the unfiltered code distribution)
  SFT+best  `sft` from the base on only the chosen replies of the preference pairs: does
            supervised learning on preferred data capture the preference by itself?
  RM        `reward` from SFT on the pairs; its held-out pair accuracy
  PPO       `ppo` from SFT against the reward model (KL penalty to SFT)
  DPO       `dpo` from SFT on the same pairs (reference: SFT)
  GRPO      `grpo` from SFT with the gold reward as a verifiable reward (an upper reference:
            it optimises the true objective, which a human-rated task cannot)
Each policy answers held-out prompts (several samples each, temperature 1): mean gold
reward, win rate against SFT (per prompt and sample index, gold(policy) > gold(SFT), ties
count half) and KL(policy || SFT) per reply (the mean over samples of the summed log-ratio).
Each method picks its learning rate from the same grid by its own training signal on seed 0
(SFT: validation reply loss; RM: held-out accuracy; DPO: held-out preference accuracy; PPO:
the reward model's mean reward; GRPO: its reward), never by the gold reward, then runs every
seed with it.

    python -m experiments.rlhf [--quick]
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from llmjax.align.evaluate import sample_replies, win_rate
from llmjax.align.preference import fit_dpo, fit_reward, open_preference, preference_config
from llmjax.align.rewards import RewardModel
from llmjax.align.rl import fit_grpo, fit_ppo, rl_config
from llmjax.align.rollout import PromptSet
from llmjax.config import PRESETS, apply_overrides
from llmjax.data import ByteTokenizer
from llmjax.data.instruct import SimpleTemplate
from llmjax.data.preference import (
    GoldReward,
    PreferenceDataConfig,
    builtin_pairs,
    builtin_prompts,
    sample_reply,
)
from llmjax.finetune import SFTConfig, fit_sft, open_sft, sft_config
from llmjax.results import experiment_parser, spread, write_results
from llmjax.runs import load_run
from llmjax.train.fit import fit, with_vocab

FULL = {
    "seeds": 3, "base_docs": 20_000, "base_steps": 300, "demos": 3000, "pairs": 2000,
    "sft_steps": 200, "rm_steps": 300, "dpo_steps": 200, "rollouts": 40,
    "eval_prompts": 64, "samples": 4,
    "lrs": {"sft": (1e-3, 3e-3), "rm": (3e-4, 1e-3), "dpo": (3e-4, 1e-3),
            "ppo": (3e-4, 1e-3), "grpo": (3e-4, 1e-3)},
}  # fmt: skip
QUICK = {
    "seeds": 1, "base_docs": 500, "base_steps": 10, "demos": 200, "pairs": 200,
    "sft_steps": 6, "rm_steps": 6, "dpo_steps": 4, "rollouts": 2,
    "eval_prompts": 8, "samples": 2,
    "lrs": {"sft": (3e-3,), "rm": (1e-3,), "dpo": (1e-3,), "ppo": (1e-3,), "grpo": (1e-3,)},
}  # fmt: skip
MODEL = ["model.d_model=64", "model.n_layers=2", "model.n_heads=4", "model.max_seq_len=96",
         "model.position=rope", "model.scan_layers=false", "train.mfu=false",
         "data.tokenizer=byte"]  # fmt: skip
# Every fine-tuning stage: AdamW, a short warmup, evaluation and a checkpoint at the end only.
STAGE = ["optim.warmup_steps=5", "train.checkpoint_every=100000", "train.keep_checkpoints=1"]
# PPO and GRPO rollouts: 4 optimizer steps per rollout (2 epochs x 2 minibatches).
MAX_NEW = 40  # reply tokens sampled (a reply of 7 words is about 35 bytes)
RL = [f"rl.max_new_tokens={MAX_NEW}", "rl.ppo_epochs=2", "rl.minibatches=2", "rl.kl_coef=0.05"]
PPO = ["rl.prompts_per_rollout=16", "rl.group_size=1"]
GRPO = ["rl.prompts_per_rollout=4", "rl.group_size=4"]
METHODS = ("SFT", "SFT+best", "PPO", "DPO", "GRPO")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = experiment_parser(__doc__.splitlines()[0]).parse_args(argv)
    s = QUICK if args.quick else FULL
    t_start = time.perf_counter()
    root = scratch_runs(args.out_dir, "rlhf")
    gold = GoldReward()
    chosen_lr: dict[str, float] = {}
    per_seed = []
    for seed in range(s["seeds"]):
        t0 = time.perf_counter()
        per_seed.append(_one_seed(seed, s, root / f"seed{seed}", gold, chosen_lr))
        per_seed[-1]["wall_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps({"seed": seed, **per_seed[-1]["summary"]}), flush=True)
    rows = _rows(per_seed)
    metrics = {
        "settings": {k: v for k, v in s.items() if k != "lrs"},
        "lr_grid": s["lrs"],
        "chosen_lr": chosen_lr,
        "seeds": per_seed,
        "methods": {r["method"]: r for r in rows},
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    return finish("rlhf", metrics, rows, _plot(rows, s), args, root)


def scratch_runs(out_dir: str, name: str) -> Path:
    """OUT/NAME/runs/, emptied: the experiment's own scratch runs, remade every time."""
    root = Path(out_dir) / name / "runs"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    return root


def finish(name: str, metrics: dict, rows: list[dict], figure, args, root: Path) -> dict:
    """Writes the results and figure, removes the scratch runs of a full run (a --quick run
    keeps them to look at), and returns the metrics with the results directory."""
    out = write_results(
        name, metrics, rows=rows, plots={name: figure}, out_dir=args.out_dir, quick=args.quick
    )
    if not args.quick:
        shutil.rmtree(root, ignore_errors=True)
    metrics["results_dir"] = str(out)
    return metrics


# ----------------------------------------------------------------------------- one seed


def _one_seed(seed: int, s: dict, root: Path, gold: GoldReward, lr: dict) -> dict:
    rng = np.random.default_rng([seed, 99])
    root.mkdir(parents=True)
    files = _data_files(seed, s, root, rng)
    base = _base(seed, s, root, files["pages"])
    stages: dict[str, dict] = {}

    def tuned(name: str, make, pick) -> tuple[Path, dict]:
        """The stage trained at each lr of the grid on seed 0 (keeping the best by `pick`),
        then at the chosen lr on later seeds."""
        grid = s["lrs"][name] if name not in lr else (lr[name],)
        best = None
        for value in grid:
            out = root / f"{name}-lr{value:g}"
            result = make(out, value)
            score = pick(result)
            if best is None or score > best[2]:
                best = (out, result, score, value)
        lr.setdefault(name, best[3])
        stages[name] = {"lr": best[3], "selection_score": round(float(best[2]), 4)}
        return best[0], best[1]

    sft, sft_result = tuned(
        "sft",
        lambda out, v: _sft(seed, s, base, files["demos"], out, v),
        lambda r: -r.final_eval["loss"],
    )
    stages["sft"]["val_loss"] = round(sft_result.final_eval["loss"], 4)
    best_sft = root / "sft-best"
    _sft(seed, s, base, files["chosen"], best_sft, lr["sft"])
    rm, rm_result = tuned(
        "rm",
        lambda out, v: _reward(seed, s, sft, out, v),
        lambda r: r.final_eval["accuracy"],
    )
    stages["rm"]["heldout_accuracy"] = round(rm_result.final_eval["accuracy"], 4)
    dpo, dpo_result = tuned(
        "dpo",
        lambda out, v: _dpo(seed, s, sft, out, v),
        lambda r: r.final_eval["accuracy"],
    )
    stages["dpo"]["heldout_accuracy"] = round(dpo_result.final_eval["accuracy"], 4)
    prompts = builtin_prompts(np.random.default_rng([seed, 5]), 512)
    ppo, _ = tuned(
        "ppo",
        lambda out, v: _rl("ppo", seed, s, sft, out, v, prompts, RewardModel(rm)),
        lambda r: _last_reward(r),
    )
    grpo, _ = tuned(
        "grpo",
        lambda out, v: _rl("grpo", seed, s, sft, out, v, prompts, gold),
        lambda r: _last_reward(r),
    )
    eval_prompts = builtin_prompts(np.random.default_rng([seed, 7]), s["eval_prompts"])
    runs = {"SFT": sft, "SFT+best": best_sft, "PPO": ppo, "DPO": dpo, "GRPO": grpo}
    scores, drawn = _evaluate(runs, sft, eval_prompts, s["samples"], seed, gold)
    stages["rm"]["agrees_with_gold_on_sft_vs_ppo"] = _rm_agreement(rm, drawn, gold)
    summary = {
        m: {k: scores[m][k] for k in ("gold", "win_rate", "kl")} for m in METHODS if m in scores
    }
    summary["rm_accuracy"] = stages["rm"]["heldout_accuracy"]
    return {"stages": stages, "scores": scores, "summary": summary}


def _data_files(seed: int, s: dict, root: Path, rng) -> dict[str, Path]:
    prompts = builtin_prompts(rng, s["base_docs"])
    pages = root / "pages.txt"
    pages.write_text("".join(f"{p}\n{sample_reply(rng)}\n\n" for p in prompts))
    demos = root / "demos.jsonl"
    demo_prompts = builtin_prompts(rng, s["demos"])
    demos.write_text(
        "".join(
            json.dumps({"prompt": p, "response": sample_reply(rng)}) + "\n" for p in demo_prompts
        )
    )
    # The chosen replies of the pairs the reward model and DPO learn from (data_seed = seed).
    chosen = root / "chosen.jsonl"
    pairs = builtin_pairs(seed, s["pairs"])
    chosen.write_text(
        "".join(
            json.dumps({"prompt": p.prompt[-1].content, "response": p.chosen[-1].content}) + "\n"
            for p in pairs
        )
    )
    return {"pages": pages, "demos": demos, "chosen": chosen}


def _base(seed: int, s: dict, root: Path, pages: Path) -> Path:
    cfg = apply_overrides(
        with_vocab(PRESETS["nano"], ByteTokenizer()),
        [
            *MODEL,
            *STAGE,
            f"data.path={pages}",
            "data.batch_size=16",
            f"train.steps={s['base_steps']}",
            f"train.eval_every={s['base_steps']}",
            f"train.seed={seed}",
            "optim.name=muon",
            "optim.lr=1e-2",
            "optim.momentum=0.95",
        ],
    )
    out = root / "base"
    fit(cfg, out, progress=False)
    return out


def _sft(seed, s, base, demos, out, lr):
    cfg = sft_config(
        init_from=base,
        overrides=[
            *STAGE,
            "data.batch_size=16",
            f"train.steps={s['sft_steps']}",
            f"train.eval_every={s['sft_steps']}",
            f"train.seed={seed}",
            f"optim.lr={lr}",
        ],
    )
    data = open_sft(cfg, SFTConfig(data=str(demos), data_seed=seed), template="simple")
    return fit_sft(cfg, out, data, progress=False)


def _pairs(seed: int, s: dict) -> PreferenceDataConfig:
    return PreferenceDataConfig(data="builtin", builtin_pairs=s["pairs"], data_seed=seed)


def _reward(seed, s, sft, out, lr):
    steps = s["rm_steps"]
    cfg = preference_config(
        "reward",
        init_from=sft,
        overrides=[*STAGE, "data.batch_size=16", f"train.steps={steps}",
                   f"train.eval_every={steps}", f"train.seed={seed}", f"optim.lr={lr}"],
    )  # fmt: skip
    return fit_reward(cfg, out, open_preference(cfg, _pairs(seed, s)), progress=False)


def _dpo(seed, s, sft, out, lr):
    steps = s["dpo_steps"]
    cfg = preference_config(
        "dpo",
        init_from=sft,
        overrides=[*STAGE, "data.batch_size=8", f"train.steps={steps}",
                   f"train.eval_every={steps}", f"train.seed={seed}", f"optim.lr={lr}",
                   "preference.beta=0.1"],
    )  # fmt: skip
    return fit_dpo(cfg, out, open_preference(cfg, _pairs(seed, s)), progress=False)


def _rl(kind, seed, s, sft, out, lr, prompts, reward_fn):
    group = PPO if kind == "ppo" else GRPO
    probe = rl_config(kind, init_from=sft, overrides=[*RL, *group])
    steps = s["rollouts"] * probe.rl.steps_per_rollout
    cfg = rl_config(
        kind,
        init_from=sft,
        overrides=[*STAGE, *RL, *group, f"train.steps={steps}", f"train.eval_every={steps}",
                   f"train.seed={seed}", f"optim.lr={lr}"],
    )  # fmt: skip
    fit_rl = fit_ppo if kind == "ppo" else fit_grpo
    return fit_rl(cfg, out, prompts=prompts, reward_fn=reward_fn, progress=False)


def _last_reward(result) -> float:
    """The mean reward of the run's last few rollouts (its training signal)."""
    rewards = [r["reward"] for r in result.history if "reward" in r]
    return float(np.mean(rewards[-5:])) if rewards else float("-inf")


# ----------------------------------------------------------------------------- evaluation


def _evaluate(runs: dict, reference: Path, prompts: list[str], samples: int, seed: int, gold):
    """Gold reward, win rate against SFT and KL(policy || SFT) of each run's sampled replies
    (every run sampled with the same key)."""
    ref = load_run(reference).merged()
    prompt_set = PromptSet.build(prompts, ref.tokenizer, SimpleTemplate())
    out: dict[str, dict] = {}
    drawn = {}
    for name, path in runs.items():
        drawn[name] = sample_replies(
            load_run(path).merged(),
            prompt_set,
            key=jax.random.key(10_000 + seed),
            samples=samples,
            max_new_tokens=MAX_NEW,
            reference=ref,
        )
    rewards = {name: gold(d.prompts, d.replies) for name, d in drawn.items()}
    for name, d in drawn.items():
        out[name] = {
            "gold": round(float(rewards[name].mean()), 4),
            "win_rate": round(win_rate(rewards[name], rewards["SFT"]), 4),
            "kl": round(float(d.kl.mean()), 4),
            "ends_with_marker": round(float(np.mean([_ends(r, gold) for r in d.replies])), 4),
            "in_band": round(float(np.mean([_in_band(r, gold) for r in d.replies])), 4),
            "reply_words": round(float(np.mean([len(r.split()) for r in d.replies])), 2),
            "stopped": round(float(d.stopped.mean()), 4),
            "examples": d.replies[:4],
        }
    return out, drawn


def _rm_agreement(rm: Path, drawn: dict, gold) -> float:
    """How often the reward model prefers, of SFT's and PPO's replies to a prompt (the same
    sample index), the one the gold reward prefers (pairs of equal gold left out)."""
    model = RewardModel(rm)
    sft, ppo = drawn["SFT"], drawn["PPO"]
    a, b = model.score_ids(sft.sequences), model.score_ids(ppo.sequences)
    ga, gb = gold(sft.prompts, sft.replies), gold(ppo.prompts, ppo.replies)
    differ = ga != gb
    if not differ.any():
        return float("nan")
    return round(float(np.mean((a > b)[differ] == (ga > gb)[differ])), 4)


def _ends(reply: str, gold) -> bool:
    words = reply.strip().split()
    return bool(words) and words[-1].lower() == gold.marker


def _in_band(reply: str, gold) -> bool:
    return gold.band[0] <= len(reply.split()) <= gold.band[1]


# ----------------------------------------------------------------------------- report


def _rows(per_seed: list[dict]) -> list[dict]:
    rows = []
    for method in METHODS:

        def cell(key: str, m: str = method) -> dict[str, float]:
            values = [p["scores"][m][key] for p in per_seed]
            return {**spread(values), "std": float(np.std(values))}

        gold, win, kl = cell("gold"), cell("win_rate"), cell("kl")
        rows.append(
            {
                "method": method,
                "gold": round(gold["mean"], 3),
                "gold_std": round(gold["std"], 3),
                "win_vs_SFT": round(win["mean"], 3),
                "win_std": round(win["std"], 3),
                "KL_vs_SFT": round(kl["mean"], 2),
                "ends_yes": round(float(np.mean([p["scores"][method]["ends_with_marker"]
                                                for p in per_seed])), 3),
                "in_band": round(float(np.mean([p["scores"][method]["in_band"]
                                               for p in per_seed])), 3),
            }
        )  # fmt: skip
    return rows


def _plot(rows: list[dict], s: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (gold_ax, kl_ax) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    names = [r["method"] for r in rows]
    x = np.arange(len(rows))
    gold_ax.bar(x, [r["gold"] for r in rows], yerr=[r["gold_std"] for r in rows], capsize=4)
    gold_ax.axhline(1.5, color="gray", ls="--", lw=1, label="best possible (1.5)")
    gold_ax.set_xticks(x, names)
    gold_ax.set_ylabel("gold reward per reply (mean over seeds, +- std)")
    gold_ax.set_title(f"gold reward of sampled replies ({s['seeds']} seeds)")
    gold_ax.legend(loc="upper left")
    for r in rows:
        kl_ax.scatter(r["KL_vs_SFT"], r["gold"], s=40, label=r["method"])
        kl_ax.errorbar(r["KL_vs_SFT"], r["gold"], yerr=r["gold_std"], fmt="none", alpha=0.5)
    kl_ax.set_xlabel("KL(policy || SFT) per reply (nats)")
    kl_ax.set_ylabel("gold reward per reply")
    kl_ax.set_title("gold reward against the KL spent")
    kl_ax.legend()
    for ax in (gold_ax, kl_ax):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
