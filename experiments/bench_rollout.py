"""Rollout throughput: a whole PPO rollout (sampling, which also reads the policy's values,
the reference's teacher-forced pass, rewards, GAE) against sampling alone with
generate_tokens, at the same batch, prompts, length and key.

    python -m experiments.bench_rollout --preset nano --batch 32 --new-tokens 44
    python -m experiments.bench_rollout --quick                  # test-tiny, a few seconds

The model is a fresh init of the preset with a value head (byte vocabulary); the prompts are
the built-in arithmetic questions as plain text. Each is warmed up once (compiles), then run
`--repeats` times alternately; the times are medians. tokens/s counts the completion tokens
generated (rows stop at EOS). The target: a rollout at most 1.5x the time of sampling alone.
The rollout's log-probs and values (the decoder's) are checked against a teacher-forced pass
of the policy afterwards (largest differences reported).

Prints one JSON object and writes results/bench_rollout/metrics.json.
"""

from __future__ import annotations

import dataclasses
import json
import time

import jax
import numpy as np

from llmjax.align.advantages import KLController
from llmjax.align.rewards import arith_prompts, count_reward
from llmjax.align.rollout import PromptSet, make_rollout, sequence_stats
from llmjax.config import apply_overrides, get_preset
from llmjax.data import ByteTokenizer
from llmjax.decode.samplers import SamplingConfig
from llmjax.decode.tokens import generate_tokens
from llmjax.models import build_model, init_model
from llmjax.results import experiment_parser, write_results

TARGET_RATIO = 1.5
QUICK = {"preset": "test-tiny", "batch": 8, "new_tokens": 8, "repeats": 2}


def parse_args(argv=None):
    parser = experiment_parser(__doc__.splitlines()[0])
    parser.add_argument("--preset", default="nano")
    parser.add_argument("--batch", type=int, default=32, help="completions per rollout")
    parser.add_argument("--new-tokens", type=int, default=44, help="rl.max_new_tokens")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    tokenizer = ByteTokenizer()
    cfg = apply_overrides(
        get_preset(args.preset),
        [
            "model.value_head=true",
            f"model.vocab_size={tokenizer.vocab_size}",
            f"rl.prompts_per_rollout={args.batch}",
            "rl.group_size=1",
            f"rl.max_new_tokens={args.new_tokens}",
        ],
    )
    model = build_model(cfg.model)
    params, _ = init_model(cfg.model, jax.random.key(0))
    ref_cfg = dataclasses.replace(cfg.model, value_head=False)
    ref_params = {k: v for k, v in params.items() if k != "value_head"}
    prompts = PromptSet.build(arith_prompts(max(args.batch, 8)), tokenizer, None)
    prompts.check_fits(args.new_tokens, cfg.seq_len)
    rows = prompts.select(0, args.batch, 0)
    reward = count_reward("7")

    def sample():
        out = generate_tokens(
            model,
            {"params": params},
            [prompts.ids[i] for i in rows],
            max_new_tokens=args.new_tokens,
            key=jax.random.fold_in(jax.random.key(0), 0),
            sampling=SamplingConfig(temperature=cfg.rl.temperature, top_k=cfg.rl.top_k),
            stop_ids=prompts.stop_ids,
        )
        return int(out.lengths.sum())

    def rollout():
        r = make_rollout(
            rl=cfg.rl,
            kind="ppo",
            model=model,
            params=params,
            ref_model=build_model(ref_cfg),
            ref_params=ref_params,
            prompts=prompts,
            tokenizer=tokenizer,
            reward_fn=reward,
            index=0,
            seed=0,
            seq_len=cfg.seq_len,
            kl=KLController(cfg.rl.kl_coef),
        )
        return int(r.batch["mask"].sum()), r

    tokens, _ = rollout()  # compiles
    sample()
    times = {"generate": [], "rollout": []}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        n_gen = sample()
        times["generate"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        tokens, last = rollout()
        times["rollout"].append(time.perf_counter() - t0)
    gen_s, roll_s = (float(np.median(times[k])) for k in ("generate", "rollout"))
    b = last.batch
    tf_logp, tf_values = sequence_stats(model, params, b["inputs"], b["targets"], values=True)
    real = b["mask"] > 0
    metrics = {
        "preset": args.preset,
        "batch": args.batch,
        "new_tokens": args.new_tokens,
        "device": jax.devices()[0].platform,
        "generate_s": gen_s,
        "rollout_s": roll_s,
        "generate_tokens_per_s": n_gen / gen_s,
        "rollout_tokens_per_s": tokens / roll_s,
        "rollout_over_generate": roll_s / gen_s,
        "target_ratio_max": TARGET_RATIO,
        "within_target": roll_s / gen_s <= TARGET_RATIO,
        "decoder_vs_teacher_forced_logp_max_abs": float(
            np.abs(tf_logp[real] - b["old_logp"][real]).max()
        ),
        "decoder_vs_teacher_forced_value_max_abs": float(
            np.abs(tf_values[real] - b["old_values"][real]).max()
        ),
    }
    write_results("bench_rollout", metrics, out_dir=args.out_dir, quick=args.quick)
    print(json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    main()
