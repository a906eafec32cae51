"""DPO's train step against an SFT step on as many sequences: the policy's forward and backward
on B pairs (2B sequences) plus the frozen reference's forward, against next-token training on
2B sequences of the same length.

    python -m experiments.bench_dpo --preset medium --steps 3     # nanoGPT's GPU shape
    python -m experiments.bench_dpo --quick                       # test-tiny, 2 steps

Both start from the same fresh params (byte vocabulary, 259 ids) and train on one fixed random
batch: SFT on data.batch_size = 2B rows of seq_len tokens (loss on every token), DPO on B
pairs whose rows are the same 2B sequences with the mask on their second half (the reply), the
reference being a frozen copy of the starting params. The compiled steps are warmed up, then
timed alternately (SFT, DPO, SFT, ...) through the training loop; ms/step is the median of
the timed steps' wall time and cpu_ms/step of their process CPU time. The aim: a DPO step at
most 2.2x an SFT step (one extra forward pass, which costs about a third of a forward and
backward, plus the pair bookkeeping).

Prints one JSON object and writes results/bench_dpo/ (metrics.json, bench_dpo.png).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import jax
import numpy as np

from llmjax.config import ConfigError, apply_overrides, get_preset
from llmjax.results import experiment_parser, write_results
from llmjax.train.bench import CompiledStep, measure_step, synthetic_batch, time_round_robin
from llmjax.train.frozen import Frozen
from llmjax.train.trainer import Trainer

TARGETS = {"step_time_ratio_max": 2.2}
QUICK = {"preset": "test-tiny", "steps": 2, "warmup": 1, "pairs": 2}


def parse_args(argv: list[str] | None = None):
    parser = experiment_parser(__doc__.splitlines()[0])
    parser.add_argument("--preset", default="medium", help="config preset (default: medium)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps of each (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps of each first")
    parser.add_argument(
        "--pairs",
        type=int,
        default=None,
        help="pairs per DPO step, B (default: half the preset's batch size); SFT gets 2B rows",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    if args.steps < 1 or args.warmup < 0 or (args.pairs is not None and args.pairs < 1):
        parser.error("--steps and --pairs must be >= 1 and --warmup >= 0")
    return args


def pair_batch(sft_batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The 2B rows of an SFT batch as B pairs, the mask on each row's second half."""
    inputs, targets = sft_batch["inputs"], sft_batch["targets"]
    b, t = inputs.shape[0] // 2, inputs.shape[1]
    mask = np.zeros((b, t), np.float32)
    mask[:, t // 2 :] = 1.0
    return {
        "chosen_inputs": inputs[:b],
        "chosen_targets": targets[:b],
        "chosen_mask": mask,
        "rejected_inputs": inputs[b:],
        "rejected_targets": targets[b:],
        "rejected_mask": mask.copy(),
    }


def _timing(step: CompiledStep) -> dict[str, Any]:
    return {
        "compile_s": round(step.compile_s, 2),
        "ms_per_step": round(step.median_s * 1e3, 2),
        "ms_per_step_best": round(step.step_s * 1e3, 2),
        "step_ms": [round(t * 1e3, 2) for t in step.times],
        "cpu_ms_per_step": round(step.median_cpu_s * 1e3, 2),
        "temp_memory_bytes": step.memory["temp"],
        "xla_flops": step.xla_flops,
        "loss_first_last": [round(step.metrics[0]["loss"], 4), round(step.metrics[-1]["loss"], 4)],
    }


def _plot(figures: dict[str, dict[str, Any]], shape: str, steps: int) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    names = list(figures)
    x = np.arange(len(names))
    ax.bar(x - 0.2, [figures[n]["ms_per_step"] for n in names], 0.4, label="wall")
    ax.bar(x + 0.2, [figures[n]["cpu_ms_per_step"] for n in names], 0.4, label="CPU")
    ax.set_xticks(x, names)
    ax.set_ylabel(f"ms per train step (median of {steps}, alternated)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"DPO vs SFT on as many sequences, {shape}")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    try:
        base = apply_overrides(
            get_preset(args.preset), ["model.vocab_size=259", "train.mfu=false", *args.set]
        )
        pairs = args.pairs or max(base.data.batch_size // 2, 1)
        sft_cfg = apply_overrides(base, [f"data.batch_size={2 * pairs}", "train.objective=lm"])
        dpo_cfg = apply_overrides(base, [f"data.batch_size={pairs}", "train.objective=dpo"])
    except ConfigError as e:
        sys.exit(f"bench_dpo: {e}")

    sft_trainer = Trainer(sft_cfg)
    sft_state = sft_trainer.init_state()
    batch = synthetic_batch(sft_cfg)
    # The reference is a frozen copy of the starting params (as a DPO run's is).
    reference = jax.tree.map(np.asarray, jax.device_get(sft_state.params))
    dpo_trainer = Trainer(dpo_cfg, frozen={"reference": Frozen(reference)})
    # Committed to the device as a run's restored params are (uncommitted params would make
    # the second step compile again, for the committed state the first one returns).
    dpo_state = dpo_trainer.state_from(jax.device_put(reference, jax.devices()[0]), {})
    steps = {
        "sft": measure_step(sft_trainer, sft_state, batch),
        "dpo": measure_step(dpo_trainer, dpo_state, pair_batch(batch)),
    }
    time_round_robin(steps, rounds=args.steps, warmup=args.warmup)
    figures = {name: _timing(step) for name, step in steps.items()}
    ratio = figures["dpo"]["ms_per_step"] / figures["sft"]["ms_per_step"]
    ratios = {
        "step_time": round(ratio, 3),
        "step_time_best": round(
            figures["dpo"]["ms_per_step_best"] / figures["sft"]["ms_per_step_best"], 3
        ),
        "step_cpu_time": round(
            figures["dpo"]["cpu_ms_per_step"] / figures["sft"]["cpu_ms_per_step"], 3
        ),
        "xla_flops": round(figures["dpo"]["xla_flops"] / figures["sft"]["xla_flops"], 3),
    }
    m = base.model
    shape = f"{m.n_layers}L d={m.d_model} ctx={base.seq_len}"
    result = {
        "preset": args.preset,
        "overrides": args.set,
        "shape": shape,
        "pairs": pairs,
        "sft_rows": 2 * pairs,
        "seq_len": base.seq_len,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "timed_steps": args.steps,
        "sft": figures["sft"],
        "dpo": figures["dpo"],
        "ratios": ratios,
        "targets": TARGETS,
        "meets_targets": {"step_time": ratio <= TARGETS["step_time_ratio_max"]},
    }
    rows = [
        {"method": name, **{k: v for k, v in f.items() if k != "step_ms"}}
        for name, f in figures.items()
    ]
    out = write_results(
        "bench_dpo",
        result,
        rows=rows,
        plots={"bench_dpo": _plot(figures, shape, args.steps)},
        out_dir=args.out_dir,
        quick=args.quick,
    )
    result["results_dir"] = str(out)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
