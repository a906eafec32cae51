"""Training speed: ms/step, tokens/s and MFU of a preset's train step on this machine.

    python -m experiments.bench_train --preset nano|medium [--steps N] [--set k=v ...]
    python -m experiments.bench_train --preset nano --cpu-devices 2 --set parallel.mesh=data=2

Prints one JSON object. The step is compiled ahead of time, warmed up, then timed `--steps`
times back to back (dispatch to results on the host, real optimizer updates on random tokens
of the char vocabulary, 65 ids, as nanoGPT's shakespeare_char). MFU divides the model's FLOP
rate (6 N + attention per token, `llmjax.scaling`, no remat recomputation) by the peak: on CPU a
float32 matmul timed now (printed as `matmul_peak_gflops`), elsewhere the datasheet table.

`--cpu-devices N` splits the CPU into N XLA devices (set before JAX starts) so a data-parallel
mesh runs the shards on separate cores; the peak is then still the whole process's.

`--profile N` then runs the step N more times under the JAX profiler and adds where the time
goes: each kind of XLA op's milliseconds per step and share (`profile` in the JSON), or with
`--profile-by shape` each result shape's (the attention's [B, H, T, T] arrays, the MLP's
[B*T, d_ff] ...), e.g.

    python -m experiments.bench_train --preset nano --profile 20 --top 10
    python -m experiments.bench_train --preset medium --steps 1 --profile 1 --profile-by shape
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# XLA:CPU records per-op events in a profile only with this flag, set before JAX starts.
CPU_OP_TRACE_FLAG = "--xla_cpu_enable_xprof_traceme=true"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="nano", help="config preset to time (default: nano)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps (default: 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
    parser.add_argument("--vocab", type=int, default=65, help="vocabulary size (default: 65)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    parser.add_argument(
        "--cpu-devices", type=int, default=None, help="split the CPU into this many devices"
    )
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="profile N more steps (default: off)"
    )
    parser.add_argument("--top", type=int, default=15, help="op groups to list with --profile")
    parser.add_argument(
        "--profile-by",
        choices=("kind", "shape"),
        default="kind",
        help="group the profiled ops by kind (dot, *_fusion ...) or by result shape",
    )
    args = parser.parse_args(argv)
    if args.profile < 0 or args.top < 1:
        parser.error("--profile must be >= 0 and --top >= 1")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.cpu_devices is not None and args.cpu_devices < 1:
        parser.error("--cpu-devices must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    flags = []
    if args.cpu_devices is not None:
        if "jax" in sys.modules:
            sys.exit(
                "bench_train: --cpu-devices must be set before JAX starts; "
                "run the module as its own process"
            )
        flags.append(f"--xla_force_host_platform_device_count={args.cpu_devices}")
    if args.profile and "jax" not in sys.modules:
        flags.append(CPU_OP_TRACE_FLAG)  # otherwise XLA:CPU records no per-op events
    if flags:
        os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *flags]).strip()

    import jax

    from llmjax.config import apply_overrides, get_preset
    from llmjax.scaling import mfu, peak_flops, train_flops_per_token
    from llmjax.train.bench import compile_step, profile_ops

    cfg = apply_overrides(get_preset(args.preset), [f"model.vocab_size={args.vocab}", *args.set])
    step = compile_step(cfg)
    step.run(args.warmup)
    step.times.clear()
    step.run(args.steps)

    tokens = cfg.data.batch_size * cfg.seq_len
    median = step.median_s
    tokens_per_s = tokens / median
    flops_per_token = train_flops_per_token(cfg.model, cfg.seq_len)
    peak = peak_flops(fresh=True)  # this minute's matmul, not the one kept for MFU logs
    result = {
        "preset": args.preset,
        "overrides": args.set,
        "batch_size": cfg.data.batch_size,
        "seq_len": cfg.seq_len,
        "devices": jax.device_count(),
        "backend": jax.default_backend(),
        "compile_s": round(step.compile_s, 2),
        "ms_per_step": round(median * 1e3, 2),
        "ms_per_step_best": round(step.step_s * 1e3, 2),
        "tokens_per_s": round(tokens_per_s, 1),
        "model_gflop_per_step": round(flops_per_token * tokens / 1e9, 3),
        "achieved_gflops": round(flops_per_token * tokens_per_s / 1e9, 2),
        "matmul_peak_gflops": None if peak is None else round(peak / 1e9, 2),
        "mfu": None if peak is None else round(mfu(flops_per_token, tokens_per_s, peak), 4),
        "temp_memory_mb": round(step.memory["temp"] / 2**20, 2),
        "loss_first_last": [round(step.metrics[0]["loss"], 4), round(step.metrics[-1]["loss"], 4)],
    }
    if args.profile:
        result["profile"] = profile_ops(step, args.profile, args.top, args.profile_by)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
