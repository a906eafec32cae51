"""LoRA against full fine-tuning: optimizer state, trained params, step time and compiled memory
of a preset's train step, and how full SFT batches of the built-in tasks are, packed or not.

    python -m experiments.bench_lora --preset medium --steps 3     # nanoGPT's GPU shape
    python -m experiments.bench_lora --quick                       # test-tiny, 2 steps

Both steps train on the same random token batch (byte vocabulary, 259 ids) from a fresh init;
LoRA puts rank-`--rank` adapters on every attention and MLP kernel (model.lora.targets'
default), so only they train and only they have AdamW moments. The two compiled steps are
warmed up, then timed alternately (full, LoRA, full, LoRA, ...), so that a busy spell on a
shared machine slows both alike; ms/step is the median of the timed steps' wall time, and
cpu_ms/step the median of their process CPU time (all threads), which other jobs on the cores
move far less. Memory is XLA's memory_analysis() of each compiled step; state bytes count the
arrays of the train state.

Packing: `--examples` conversations of make_tasks' train split, byte tokenizer, llmjax's
template, rows of `--sft-seq-len` tokens in batches of the preset's size; the share of a
batch's token slots that hold a conversation (not padding), first-fit packed and one
conversation per row.

Prints one JSON object and writes results/bench_lora/ (metrics.json, bench_lora.png).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import jax
import numpy as np

from llmjax.config import ConfigError, apply_overrides, get_preset
from llmjax.data import ByteTokenizer
from llmjax.data.instruct import InstructBatches, encode_all, make_rows, make_tasks
from llmjax.models.lora import lora_targets
from llmjax.results import experiment_parser, write_results
from llmjax.train.bench import CompiledStep, compile_step, state_memory, time_round_robin

# What the measurement aims at (stated in the JSON): LoRA's AdamW state at most 5% of full
# fine-tuning's, its step no slower, and packed batches at least 90% real tokens.
TARGETS = {"opt_state_ratio_max": 0.05, "step_time_ratio_max": 1.0, "packed_share_min": 0.9}
QUICK = {"preset": "test-tiny", "steps": 2, "warmup": 1, "examples": 256}


def parse_args(argv: list[str] | None = None):
    parser = experiment_parser(__doc__.splitlines()[0])
    parser.add_argument("--preset", default="medium", help="config preset (default: medium)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps of each (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps of each first")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (default: 8)")
    parser.add_argument(
        "--examples", type=int, default=4096, help="conversations for the packing figures"
    )
    parser.add_argument(
        "--sft-seq-len", type=int, default=256, help="row length for packing (default: 256)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    if args.steps < 1 or args.warmup < 0 or args.rank < 1:
        parser.error("--steps and --rank must be >= 1 and --warmup >= 0")
    if args.examples < 1 or args.sft_seq_len < 2:
        parser.error("--examples must be >= 1 and --sft-seq-len >= 2")
    return args


def _state_figures(step: CompiledStep) -> dict[str, Any]:
    """What the fresh state holds (read before any step donates it)."""
    params = sum(int(x.size) for x in jax.tree.leaves(step.state.params))
    return {"params": params, **state_memory(step.trainer, step.state)}


def _timing(step: CompiledStep) -> dict[str, Any]:
    tokens = step.cfg.data.batch_size * step.cfg.seq_len
    return {
        "compile_s": round(step.compile_s, 2),
        "ms_per_step": round(step.median_s * 1e3, 2),
        "ms_per_step_best": round(step.step_s * 1e3, 2),
        "step_ms": [round(t * 1e3, 2) for t in step.times],
        "cpu_ms_per_step": round(step.median_cpu_s * 1e3, 2),
        "step_cpu_ms": [round(t * 1e3, 2) for t in step.cpu_times],
        "tokens_per_s": round(tokens / step.median_s, 1),
        "temp_memory_bytes": step.memory["temp"],
        "argument_memory_bytes": step.memory["argument"],
        "loss_first_last": [round(step.metrics[0]["loss"], 4), round(step.metrics[-1]["loss"], 4)],
    }


def packing(examples: int, seq_len: int, batch_size: int, seed: int = 0) -> dict[str, Any]:
    """Real-token shares of SFT rows of the built-in train tasks, packed and one per row."""
    conversations = [e.conversation() for e in make_tasks(seed, examples, "train")]
    encoded, stats = encode_all(conversations, ByteTokenizer(), seq_len)
    out: dict[str, Any] = {
        "examples": examples,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "tokens_per_conversation": round(stats.tokens / max(stats.conversations, 1), 1),
        "truncated": stats.truncated,
    }
    for name, packed in (("packed", True), ("unpacked", False)):
        _, whole = make_rows(encoded, seq_len, packed=packed)
        source = InstructBatches(encoded, batch_size, seq_len, seed, packed=packed)
        full_batches = max(len(source.epoch_plan(0)) // batch_size, 1)
        shares = [float((source.batch(s)["segments"] > 0).mean()) for s in range(full_batches)]
        out[name] = {
            "rows": whole["rows"],
            "real_token_share": round(whole["real_token_share"], 4),
            "batches": full_batches,
            "batch_share_mean": round(float(np.mean(shares)), 4),
            "batch_share_min": round(float(np.min(shares)), 4),
            "conversations_per_row": round(stats.conversations / whole["rows"], 2),
        }
    return out


def _plot(rows: list[dict[str, Any]], pack: dict[str, Any], shape: str, steps: int) -> Any:
    """AdamW state, step time (wall and CPU) per method, and real-token shares of SFT batches."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (state_ax, time_ax, pack_ax) = plt.subplots(1, 3, figsize=(14, 4), dpi=110)
    names = [r["method"] for r in rows]
    state_ax.bar(names, [r["opt_state_MB"] for r in rows], color="tab:blue")
    state_ax.set_ylabel("AdamW state (MB)")
    x = np.arange(len(rows))
    time_ax.bar(x - 0.2, [r["ms_per_step"] / 1e3 for r in rows], 0.4, label="wall")
    time_ax.bar(x + 0.2, [r["cpu_ms_per_step"] / 1e3 for r in rows], 0.4, label="CPU (all threads)")
    time_ax.set_xticks(x, names)
    time_ax.set_ylabel(f"s per train step (median of {steps}, alternated)")
    tallest = max(max(r["ms_per_step"], r["cpu_ms_per_step"]) for r in rows) / 1e3
    time_ax.set_ylim(0, tallest * 1.3)  # room for the legend above the bars
    time_ax.legend(loc="upper center", ncol=2)
    shares = [pack[k]["batch_share_mean"] for k in ("packed", "unpacked")]
    pack_ax.bar(["packed", "one per row"], shares, color="tab:green")
    pack_ax.set_ylim(0, 1)
    pack_ax.set_ylabel(f"real tokens per SFT batch (rows of {pack['seq_len']})")
    for ax in (state_ax, time_ax, pack_ax):
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"full fine-tuning vs LoRA, {shape}")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    try:
        base = apply_overrides(
            get_preset(args.preset), ["model.vocab_size=259", "train.mfu=false", *args.set]
        )
        lora_cfg = apply_overrides(base, [f"model.lora.rank={args.rank}"])
        adapted = lora_targets(lora_cfg.model)
    except ConfigError as e:
        sys.exit(f"bench_lora: {e}")
    if base.model.lora.rank:
        sys.exit("bench_lora: the full fine-tuning side must have no adapters; drop model.lora.*")

    steps = {"full": compile_step(base), "lora": compile_step(lora_cfg)}
    figures = {name: _state_figures(step) for name, step in steps.items()}
    time_round_robin(steps, rounds=args.steps, warmup=args.warmup)
    for name, step in steps.items():
        figures[name].update(_timing(step))
    full, lora = figures["full"], figures["lora"]
    ratios = {
        "opt_state": round(lora["opt_state_bytes"] / full["opt_state_bytes"], 4),
        "trained_params": round(lora["trained_params"] / full["trained_params"], 4),
        "params_bytes": round(lora["params_bytes"] / full["params_bytes"], 4),
        "step_time": round(lora["ms_per_step"] / full["ms_per_step"], 3),
        "step_time_best": round(lora["ms_per_step_best"] / full["ms_per_step_best"], 3),
        "step_cpu_time": round(lora["cpu_ms_per_step"] / full["cpu_ms_per_step"], 3),
        "temp_memory": round(lora["temp_memory_bytes"] / full["temp_memory_bytes"], 3),
    }
    pack = packing(args.examples, args.sft_seq_len, base.data.batch_size)
    m = base.model
    result = {
        "preset": args.preset,
        "overrides": args.set,
        "shape": f"{m.n_layers}L d={m.d_model} ctx={base.seq_len} batch={base.data.batch_size}",
        "batch_size": base.data.batch_size,
        "seq_len": base.seq_len,
        "vocab_size": m.vocab_size,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "timed_steps": args.steps,
        "lora": {
            "rank": args.rank,
            "alpha": lora_cfg.model.lora.alpha,
            "targets": lora_cfg.model.lora.targets,
            "adapted_kernels": [t.path for t in adapted],
        },
        "full_finetune": full,
        "lora_finetune": lora,
        "ratios": ratios,
        "sft_packing": pack,
        "targets": TARGETS,
        "meets_targets": {
            "opt_state": ratios["opt_state"] <= TARGETS["opt_state_ratio_max"],
            "step_time": ratios["step_time"] <= TARGETS["step_time_ratio_max"],
            "packing": pack["packed"]["batch_share_mean"] >= TARGETS["packed_share_min"],
        },
    }
    rows = [
        {
            "method": name,
            "trained_params": f["trained_params"],
            "params_MB": f["params_bytes"] / 2**20,
            "opt_state_MB": f["opt_state_bytes"] / 2**20,
            "temp_MB": f["temp_memory_bytes"] / 2**20,
            "ms_per_step": f["ms_per_step"],
            "cpu_ms_per_step": f["cpu_ms_per_step"],
        }
        for name, f in (("full fine-tuning", full), (f"LoRA r={args.rank}", lora))
    ]
    plot = _plot(rows, pack, result["shape"], args.steps)
    out = write_results(
        "bench_lora",
        result,
        rows=rows,
        plots={"bench_lora": plot},
        out_dir=args.out_dir,
        quick=args.quick,
    )
    result["results_dir"] = str(out)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
