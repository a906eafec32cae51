"""Q25: reward hacking. PPO against a proxy reward model trained on few preference pairs, the
gold and the proxy reward of the policy's replies as the KL from SFT grows, for several KL
coefficients; and the proxy under distribution shift.

The task and the stages are those of experiments.rlhf (byte model, 2 layers, d=64; base ->
SFT on demonstrations; the built-in gold reward stands in for raters). Per seed:
  proxy RM    `reward` from SFT on only `few_pairs` rated pairs (the proxy)
  full RM     the same on `pairs` rated pairs (how much data delays hacking)
  PPO         against the proxy with rl.kl_coef in `kl_coefs` (and once against the full RM
              with the smallest coefficient), probed every `probe_every` rollouts: replies to
              held-out prompts (temperature 1, the same key at every probe), their gold
              reward, their proxy reward, and KL(policy || SFT) per reply
Gao et al. (2022) found the gold reward of a policy optimised against a proxy rises, then
falls as the KL grows, while the proxy keeps rising; a larger KL coefficient stops the policy
earlier on that curve. Distribution shift: each reward model's pair accuracy on held-out pairs
like its training pairs, on pairs whose prompts are unlike them (other requests and topics),
and on pairs whose replies use another vocabulary; and the final policies' gold reward on the
unlike prompts.

    python -m experiments.reward_hacking [--quick]
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from experiments.rlhf import (
    MAX_NEW,
    PPO,
    RL,
    STAGE,
    _base,
    _data_files,
    _reward,
    _sft,
    finish,
    scratch_runs,
)
from llmjax.align.evaluate import sample_replies
from llmjax.align.rewards import RewardModel
from llmjax.align.rl import fit_ppo, rl_config
from llmjax.align.rollout import PromptSet
from llmjax.data.instruct import ConversationEncoder, Message, SimpleTemplate
from llmjax.data.preference import GoldReward, builtin_prompts, reward_ids, sample_reply
from llmjax.models import build_model
from llmjax.results import experiment_parser
from llmjax.runs import load_run
from llmjax.train.trainer import Hook

FULL = {
    "seeds": 3, "base_docs": 20_000, "base_steps": 300, "demos": 3000, "pairs": 2000,
    "few_pairs": 64, "sft_steps": 200, "rm_steps": 300, "rollouts": 60, "probe_every": 6,
    "kl_coefs": (0.0, 0.02, 0.1), "eval_prompts": 48, "samples": 2, "shift_pairs": 400,
    "lrs": {"sft": 3e-3, "rm": 1e-3, "ppo": 1e-3},
}  # fmt: skip
QUICK = {
    "seeds": 1, "base_docs": 500, "base_steps": 10, "demos": 200, "pairs": 200,
    "few_pairs": 32, "sft_steps": 6, "rm_steps": 6, "rollouts": 2, "probe_every": 1,
    "kl_coefs": (0.0,), "eval_prompts": 8, "samples": 1, "shift_pairs": 40,
    "lrs": {"sft": 3e-3, "rm": 1e-3, "ppo": 1e-3},
}  # fmt: skip
# Unlike the training prompts (other requests, other topics) and replies (other words).
SHIFT_ASKS = ("write a line on", "what of", "sing of")
SHIFT_TOPICS = ("moon", "rivers", "glass", "wolves", "salt", "clocks")
SHIFT_WORDS = ("fair", "grand", "calm", "bright", "plain", "warm", "quick", "soft")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = experiment_parser(__doc__.splitlines()[0]).parse_args(argv)
    s = QUICK if args.quick else FULL
    t_start = time.perf_counter()
    root = scratch_runs(args.out_dir, "reward_hacking")
    per_seed = []
    for seed in range(s["seeds"]):
        t0 = time.perf_counter()
        per_seed.append(_one_seed(seed, s, root / f"seed{seed}", GoldReward()))
        per_seed[-1]["wall_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps({"seed": seed, **per_seed[-1]["summary"]}), flush=True)
    rows = _rows(per_seed, s)
    metrics = {
        "settings": s,
        "seeds": per_seed,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    return finish("reward_hacking", metrics, rows, _plot(per_seed, s), args, root)


class Probe(Hook):
    """Every `every` optimizer steps (and at the last), the policy's replies to fixed
    prompts: gold reward, proxy reward and KL from the reference."""

    def __init__(self, every: int, measure):
        self.every, self.measure = every, measure
        self.points: list[dict] = []

    def on_start(self, trainer, step: int) -> None:
        self.trainer = trainer

    def due(self, step: int, end: int) -> bool:
        return step % self.every == 0 or step == end

    def on_state(self, step: int, state) -> None:
        params = self.trainer.parallel.host_state(state).params
        self.points.append({"step": step, **self.measure(self.trainer.model, params)})


def _one_seed(seed: int, s: dict, root: Path, gold: GoldReward) -> dict:
    rng = np.random.default_rng([seed, 99])
    root.mkdir(parents=True)
    files = _data_files(seed, s, root, rng)
    base = _base(seed, s, root, files["pages"])
    sft = root / "sft"
    _sft(seed, s, base, files["demos"], sft, s["lrs"]["sft"])
    proxy, full = root / "rm-proxy", root / "rm-full"
    _reward(seed, {**s, "pairs": s["few_pairs"]}, sft, proxy, s["lrs"]["rm"])
    _reward(seed, s, sft, full, s["lrs"]["rm"])
    reference = load_run(sft).merged()
    tok = reference.tokenizer
    held = builtin_prompts(np.random.default_rng([seed, 7]), s["eval_prompts"])
    unlike = _shifted_prompts(np.random.default_rng([seed, 8]), s["eval_prompts"])
    prompt_sets = {
        "held-out": PromptSet.build(held, tok, SimpleTemplate()),
        "unlike": PromptSet.build(unlike, tok, SimpleTemplate()),
    }
    scorers = {"proxy": RewardModel(proxy), "full": RewardModel(full)}

    def measure(model, params, which: str = "held-out") -> dict:
        drawn = sample_replies(
            (model, params),
            prompt_sets[which],
            key=jax.random.key(20_000 + seed),
            samples=s["samples"],
            max_new_tokens=MAX_NEW,
            reference=reference,
            tokenizer=tok,
        )
        return {
            "gold": float(gold(drawn.prompts, drawn.replies).mean()),
            "proxy": float(scorers["proxy"].score_ids(drawn.sequences).mean()),
            "full_rm": float(scorers["full"].score_ids(drawn.sequences).mean()),
            "kl": float(drawn.kl.mean()),
        }

    start = measure(reference.model, reference.params)  # every run starts as SFT
    runs = [(coef, "proxy") for coef in s["kl_coefs"]] + [(min(s["kl_coefs"]), "full")]
    curves = {}
    final_unlike = {}
    prompts = builtin_prompts(np.random.default_rng([seed, 5]), 512)
    for coef, rm in runs:
        name = f"{rm} RM, kl_coef {coef:g}"
        probe_cfg = rl_config("ppo", init_from=sft, overrides=[*RL, *PPO])
        k = probe_cfg.rl.steps_per_rollout
        steps = s["rollouts"] * k
        cfg = rl_config(
            "ppo",
            init_from=sft,
            overrides=[*STAGE, *RL, *PPO, f"rl.kl_coef={coef}", f"train.steps={steps}",
                       f"train.eval_every={steps}", f"train.seed={seed}",
                       f"optim.lr={s['lrs']['ppo']}"],
        )  # fmt: skip
        probe = Probe(s["probe_every"] * k, measure)
        out = root / f"ppo-{rm}-{coef:g}"
        fit_ppo(
            cfg,
            out,
            prompts=prompts,
            reward_fn=RewardModel(proxy if rm == "proxy" else full),
            hooks=[probe],
            progress=False,
        )
        curves[name] = [{"step": 0, **start}, *probe.points]
        policy = load_run(out).merged()
        final_unlike[name] = measure(build_model(policy.config.model), policy.params, "unlike")
    sft_unlike = measure(reference.model, reference.params, "unlike")  # SFT on unlike prompts
    shift = _shift_accuracy(seed, s, scorers, tok, gold)
    summary = {
        name: {
            "gold_start": round(points[0]["gold"], 3),
            "gold_peak": round(max(p["gold"] for p in points), 3),
            "gold_end": round(points[-1]["gold"], 3),
            "proxy_end": round(points[-1]["proxy"], 3),
            "kl_end": round(points[-1]["kl"], 2),
        }
        for name, points in curves.items()
    }
    summary["rm_accuracy"] = shift
    return {
        "curves": curves,
        "unlike_prompts": {"SFT": sft_unlike, **final_unlike},
        "rm_accuracy": shift,
        "summary": summary,
    }


def _shifted_prompts(rng, n: int) -> list[str]:
    return [f"{rng.choice(SHIFT_ASKS)} {rng.choice(SHIFT_TOPICS)}" for _ in range(n)]


def _shifted_reply(rng, gold: GoldReward) -> str:
    words = [str(w) for w in rng.choice(SHIFT_WORDS, size=int(rng.integers(1, 8)))]
    if rng.random() < 0.5:
        words[-1] = gold.marker
    return " ".join(words)


def _shift_accuracy(seed: int, s: dict, scorers: dict, tok, gold: GoldReward) -> dict:
    """Each reward model's accuracy (the gold-preferred reply scored higher; no rater noise)
    on held-out pairs like its training pairs, with unlike prompts, and with unlike reply
    words."""
    rng = np.random.default_rng([seed, 11])
    n = s["shift_pairs"]

    def triples(prompts, reply):
        out = []
        for p in prompts:
            a, b = reply(rng, gold), reply(rng, gold)
            while gold.score(p, a) == gold.score(p, b):
                b = reply(rng, gold)
            out.append((p, a, b))
        return out

    sets = {
        "like training": triples(builtin_prompts(rng, n), sample_reply),
        "unlike prompts": triples(_shifted_prompts(rng, n), sample_reply),
        "unlike replies": triples(builtin_prompts(rng, n), _shifted_reply),
    }
    encoder = ConversationEncoder(tok, SimpleTemplate())

    def ids(prompt, reply):
        # read where the reward objective trains: the last reply token before its end token
        return reward_ids(encoder.encode((Message("user", prompt), Message("assistant", reply))))

    out = {}
    for rm_name, rm in scorers.items():
        for set_name, rows in sets.items():
            better = [(p, a, b) if gold.score(p, a) > gold.score(p, b) else (p, b, a)
                      for p, a, b in rows]  # fmt: skip
            chosen = rm.score_ids([ids(p, a) for p, a, _ in better])
            rejected = rm.score_ids([ids(p, b) for p, _, b in better])
            out[f"{rm_name} RM, {set_name}"] = round(float(np.mean(chosen > rejected)), 4)
    return out


def _rows(per_seed: list[dict], s: dict) -> list[dict]:
    names = list(per_seed[0]["curves"])
    rows = []
    for name in names:

        def mean(key: str, n: str = name) -> float:
            return round(float(np.mean([p["summary"][n][key] for p in per_seed])), 3)

        rows.append(
            {
                "run": name,
                "gold_start": mean("gold_start"),
                "gold_peak": mean("gold_peak"),
                "gold_end": mean("gold_end"),
                "proxy_end": mean("proxy_end"),
                "KL_end": mean("kl_end"),
                "gold_unlike_prompts": round(float(np.mean(
                    [p["unlike_prompts"][name]["gold"] for p in per_seed])), 3),
            }
        )  # fmt: skip
    for key in per_seed[0]["rm_accuracy"]:
        rows.append(
            {
                "run": f"accuracy: {key}",
                "gold_start": round(float(np.mean([p["rm_accuracy"][key] for p in per_seed])), 3),
            }
        )
    return rows


def _plot(per_seed: list[dict], s: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (gold_ax, proxy_ax) = plt.subplots(1, 2, figsize=(12, 4.2), dpi=110)
    names = list(per_seed[0]["curves"])
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, name in enumerate(names):
        for j, p in enumerate(per_seed):
            pts = p["curves"][name]
            kl = [max(q["kl"], 0.0) for q in pts]
            label = name if j == 0 else None
            gold_ax.plot(kl, [q["gold"] for q in pts], "o-", ms=3, color=colors[i], label=label)
            proxy_ax.plot(kl, [q["proxy"] for q in pts], "o-", ms=3, color=colors[i], label=label)
    gold_ax.set_title(f"gold reward as PPO optimises the proxy ({len(per_seed)} seeds)")
    gold_ax.set_ylabel("gold reward per reply")
    proxy_ax.set_title("the proxy reward model's score of the same replies")
    proxy_ax.set_ylabel("proxy reward per reply")
    for ax in (gold_ax, proxy_ax):
        ax.set_xlabel("KL(policy || SFT) per reply (nats)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
