"""Mixture-of-experts train step against the dense step with the same active parameters.

    python -m experiments.bench_moe                        # nano-moe (8 experts, top-2) vs nano
    python -m experiments.bench_moe --rounds 3 --steps 5   # fewer timed steps
    python -m experiments.bench_moe --set model.moe.kernel=blocks   # the padded-blocks layout
    python -m experiments.bench_moe --quick                # test-tiny shapes, 2 steps a side

The MoE side is the `nano-moe` preset: nano's shape with 8 experts of half nano's MLP width,
top-2, so a token passes through as many MLP weights as in dense `nano` (plus the 8 x 128
router per layer): same active parameters, 4x the MLP parameters in total. Both train steps
are compiled ahead of time and timed alternately (dense, MoE, dense, MoE, ...: `--rounds`
rounds of `--steps` steps each) on random tokens of a 65-id vocabulary; times are medians of
the steps. The target: MoE at most 1.5x the dense step's time. Prints one JSON object and
writes results/bench_moe/metrics.json.
"""

from __future__ import annotations

import json

import jax

from llmjax import scaling
from llmjax.config import apply_overrides, get_preset
from llmjax.layers import grouped
from llmjax.results import experiment_parser, write_results
from llmjax.train.bench import compile_step, time_round_robin

TARGET_RATIO = 1.5
QUICK = {"rounds": 1, "steps": 2}
# The same shapes at test-tiny's size: d=32, dense d_ff 64 against 4 experts of 32, top-2.
QUICK_DENSE = ["model.d_model=32", "model.n_heads=4", "model.n_layers=2", "model.d_ff=64",
               "data.batch_size=4", "model.max_seq_len=32"]  # fmt: skip
QUICK_MOE = [*QUICK_DENSE, "model.moe.n_experts=4", "model.moe.d_expert=32",
             "model.moe.block_size=16"]  # fmt: skip


def parse_args(argv=None):
    parser = experiment_parser(__doc__.splitlines()[0])
    parser.add_argument("--dense", default="nano", help="dense preset (default: nano)")
    parser.add_argument("--moe", default="nano-moe", help="MoE preset (default: nano-moe)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round and side")
    parser.add_argument("--vocab", type=int, default=65, help="vocabulary size (default: 65)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override (MoE side)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds and --steps must be >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    common = [f"model.vocab_size={args.vocab}", "train.mfu=false"]
    dense = apply_overrides(get_preset(args.dense), [*common, *(QUICK_DENSE * args.quick)])
    moe = apply_overrides(get_preset(args.moe), [*common, *(QUICK_MOE * args.quick), *args.set])
    steps = {"dense": compile_step(dense), "moe": compile_step(moe)}
    for step in steps.values():
        step.run(args.steps)  # warm-up
    for step in steps.values():
        step.clear()
    time_round_robin({k: _Steps(s, args.steps) for k, s in steps.items()}, args.rounds, warmup=0)

    tokens = dense.data.batch_size * dense.seq_len
    sides = {}
    for name, step in steps.items():
        cfg = step.cfg.model
        counts = scaling.param_counts(cfg)
        sides[name] = {
            "active_matmul_params": scaling.matmul_params(cfg),
            "total_params": counts.total,
            "compile_s": round(step.compile_s, 2),
            "ms_per_step": round(step.median_s * 1e3, 2),
            "ms_per_step_best": round(step.step_s * 1e3, 2),
            "cpu_ms_per_step": round(step.median_cpu_s * 1e3, 2),
            "tokens_per_s": round(tokens / step.median_s, 1),
            "xla_gflop_per_step": round(step.xla_flops / 1e9, 3),
            "model_gflop_per_step": round(
                scaling.train_flops_per_token(cfg, step.cfg.seq_len) * tokens / 1e9, 3
            ),
            "loss_first_last": [
                round(step.metrics[0]["loss"], 4),
                round(step.metrics[-1]["loss"], 4),
            ],  # fmt: skip
        }
    ratio = sides["moe"]["ms_per_step"] / sides["dense"]["ms_per_step"]
    result = {
        "dense": args.dense,
        "moe": args.moe,
        "overrides": args.set,
        "n_experts": moe.model.moe.n_experts,
        "top_k": moe.model.moe.top_k,
        "kernel": moe.model.moe.kernel,
        "grouped_layout": _layout(moe.model.moe.kernel),
        "batch_size": dense.data.batch_size,
        "seq_len": dense.seq_len,
        "backend": jax.default_backend(),
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        **{f"{name}_{k}": v for name, side in sides.items() for k, v in side.items()},
        "moe_over_dense_time": round(ratio, 3),
        "moe_over_dense_cpu_time": round(
            sides["moe"]["cpu_ms_per_step"] / sides["dense"]["cpu_ms_per_step"], 3
        ),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO,
    }
    print(json.dumps(result))
    write_results("bench_moe", result, out_dir=args.out_dir, quick=args.quick)
    return result


def _layout(kernel: str) -> str:
    """The grouped-matmul layout the MoE step ran (what `auto` resolved to here)."""
    if kernel != "auto":
        return kernel
    return "blocks" if grouped.kernel_unavailable() else "cpu"


class _Steps:
    """A CompiledStep whose `run()` runs `n` steps: one round of the round robin."""

    def __init__(self, step, n: int):
        self.step, self.n = step, n

    def run(self) -> None:
        self.step.run(self.n)

    def clear(self) -> None:
        self.step.clear()


if __name__ == "__main__":
    main()
