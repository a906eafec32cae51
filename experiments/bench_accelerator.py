"""One prepared accelerator benchmark: training MFU and decoding speed of `llama-1b` in bfloat16.

    python -m experiments.bench_accelerator               # llama-1b, seq 2048 (GPU/TPU: ~5 min)
    python -m experiments.bench_accelerator --quick       # llama-tiny, seq 128, on CPU
    python -m experiments.bench_accelerator --budget-s 200 --batches 8,16

Training: bfloat16 compute with float32 parameters and AdamW state (`model.dtype=bfloat16`,
`model.param_dtype=float32`), random tokens of the full vocabulary. First the batch: each of
`--batches` (ascending) with `auto` attention and `dots` remat until one does not fit; the
largest that fits is then timed with every `--attention` x `--remat` pair (`auto`: cuDNN flash
through `jax.nn.dot_product_attention` on GPU, splash on TPU). Each pair: compile, `--warmup`
steps, then the median of `--steps` timed steps: ms/step, tokens/s, MFU (the model's FLOPs,
6N + attention, over the bf16 peak of the chip's datasheet: 989.4 TFLOP/s for an H200, without
remat's recomputation), XLA's compiled memory for the step, and the device's peak bytes in use
when it reports them. A pair that does not fit is reported with the out-of-memory message
(what XLA asked for and what to change), not raised.

Decoding: the same model with bfloat16 weights, greedy, `--prompt` tokens then `--new` tokens
per row, at each of `--decode-batches`: tokens/s of the decode steps (prefill timed apart),
against the memory-bandwidth limit: each step reads every weight once and the KV cache
written so far, so tokens/s <= batch * bandwidth / (weight bytes + mean cache bytes). The
bandwidth is the datasheet's (H200 4.8 TB/s, H100 SXM 3.35, A100 80GB 2.04; TPU v5e 0.82,
v5p 2.76, v6e 1.64), none on CPU.

Stops starting new measurements after `--budget-s` seconds (those left are listed as skipped).
Prints one JSON object (device, jax version, every row) and writes results/bench_accelerator/
(metrics.json and a figure).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import Any

import numpy as np

# Datasheet HBM bandwidth per chip, bytes/s, matched against device_kind (first hit wins).
BANDWIDTH: tuple[tuple[str, float], ...] = (
    ("h200", 4.8e12),
    ("h100 pcie", 2.0e12),
    ("h100", 3.35e12),
    ("a100", 2.039e12),
    ("tpu v5 lite", 819e9),
    ("tpu v5e", 819e9),
    ("tpu v5p", 2.765e12),
    ("tpu v5", 2.765e12),
    ("tpu v6 lite", 1.64e12),
    ("tpu v6e", 1.64e12),
)
TARGETS = {"train_mfu_min": 0.50, "decode_bandwidth_fraction_min_at_32": 0.70}
FULL = dict(preset="llama-1b", seq=2048, batches="4,8,16,32", decode_batches="1,32",
            prompt=128, new=256, steps=10, warmup=2, budget_s=270.0)  # fmt: skip
QUICK = dict(preset="llama-tiny", seq=128, batches="2,4", decode_batches="1,4",
             prompt=16, new=16, steps=2, warmup=1, budget_s=120.0)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from llmjax.results import experiment_parser

    parser = experiment_parser(__doc__.splitlines()[0])
    for name, default in FULL.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=type(default), default=None, help=f"default {default}")
    parser.add_argument("--attention", default="auto,flash", help="attention kinds to time")
    parser.add_argument("--remat", default="none,dots,full", help="remat policies to time")
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    try:
        args.batches = sorted(int(b) for b in args.batches.split(","))
        args.decode_batches = [int(b) for b in args.decode_batches.split(",")]
    except ValueError:
        parser.error("--batches and --decode-batches are comma-separated integers, e.g. 4,8,16")
    if min(args.batches + args.decode_batches) < 1 or args.steps < 1 or args.seq < 2:
        parser.error("batches, --steps and --seq must be positive")
    args.attention = args.attention.split(",")
    args.remat = args.remat.split(",")
    return args


def device_info() -> dict[str, Any]:
    import jax

    device = jax.devices()[0]
    return {"backend": jax.default_backend(), "device_kind": device.device_kind,
            "device_count": jax.device_count(), "jax": jax.__version__}  # fmt: skip


def table_bandwidth(device_kind: str) -> float | None:
    kind = device_kind.lower()
    return next((bw for key, bw in BANDWIDTH if key in kind), None)


def peak_bytes() -> int | None:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def train_config(args, batch: int, attention: str, remat: str):
    from llmjax.config import apply_overrides, get_preset

    return apply_overrides(get_preset(args.preset), [
        f"data.batch_size={batch}", f"model.max_seq_len={args.seq}",
        "model.dtype=bfloat16", "model.param_dtype=float32", f"model.attention={attention}",
        f"model.remat={remat}", "train.mfu=false", "train.grad_accum=1",
    ])  # fmt: skip


def time_train(args, batch: int, attention: str, remat: str, peak: float | None) -> dict:
    """One (batch, attention, remat) training measurement, or its out-of-memory message."""
    import jax

    from llmjax.cli.errors import OutOfMemory, explain_out_of_memory, train_memory
    from llmjax.scaling import mfu, train_flops_per_token
    from llmjax.train.bench import compile_step

    cfg = train_config(args, batch, attention, remat)
    row: dict[str, Any] = {"part": "train", "batch": batch, "attention": attention, "remat": remat}
    try:
        with explain_out_of_memory(lambda: train_memory(cfg)):
            step = compile_step(cfg)
            step.run(args.warmup)
            step.clear()
            step.run(args.steps)
    except OutOfMemory as e:
        return {**row, "fits": False, "error": str(e)}
    finally:
        jax.clear_caches()
    tokens = batch * cfg.seq_len
    flops = train_flops_per_token(cfg.model, cfg.seq_len)
    tokens_per_s = tokens / step.median_s
    memory = step.memory
    return {**row, "fits": True, "compile_s": round(step.compile_s, 1),
            "ms_per_step": round(step.median_s * 1e3, 2),
            "tokens_per_s": round(tokens_per_s, 1),
            "model_tflops": round(flops * tokens_per_s / 1e12, 3),
            "mfu": None if peak is None else round(mfu(flops, tokens_per_s, peak), 4),
            "step_memory_gib": round(sum(memory.get(k, 0) for k in ("temp", "argument",
                                     "output")) / 2**30, 3),
            "loss_last": round(step.metrics[-1]["loss"], 4)}  # fmt: skip


def decode_bytes(cfg, batch: int, prompt: int, new: int) -> tuple[float, float]:
    """(bytes of bfloat16 weights, mean bytes of the bfloat16 KV cache read per step)."""
    from llmjax.scaling import param_counts

    weights = 2.0 * param_counts(cfg).total
    mean_len = prompt + new / 2
    cache = 2.0 * 2 * cfg.n_layers * cfg.kv_heads * cfg.dim_head * mean_len * batch
    return weights, cache


def time_decode(args, batches: list[int], bandwidth: float | None) -> list[dict]:
    """Greedy decoding speed at each batch, against the bandwidth limit."""
    import jax

    from llmjax.config import get_preset
    from llmjax.decode import generate_tokens
    from llmjax.decode.samplers import SamplingConfig
    from llmjax.models import build_model, init_model

    cfg = dataclasses.replace(
        get_preset(args.preset).model, max_seq_len=args.prompt + args.new,
        dtype="bfloat16", param_dtype="bfloat16",
    )  # fmt: skip
    model = build_model(cfg)
    params, _ = init_model(cfg, jax.random.key(0))
    variables = {"params": params}
    rng = np.random.default_rng(0)
    rows = []
    for batch in batches:
        prompts = [rng.integers(0, cfg.vocab_size, args.prompt) for _ in range(batch)]
        kw = dict(key=jax.random.key(0), sampling=SamplingConfig(temperature=0))
        timings = {}
        for new in (1, args.new):  # prefill + one token, then the whole call: the steps apart
            generate_tokens(model, variables, prompts, max_new_tokens=new, **kw)  # compile
            t0 = time.perf_counter()
            generate_tokens(model, variables, prompts, max_new_tokens=new, **kw)
            timings[new] = time.perf_counter() - t0
        step_s = max(timings[args.new] - timings[1], 1e-9) / (args.new - 1)
        weights, cache = decode_bytes(cfg, batch, args.prompt, args.new)
        limit = None if bandwidth is None else batch * bandwidth / (weights + cache)
        rows.append({"part": "decode", "batch": batch, "prompt": args.prompt, "new": args.new,
                     "prefill_s": round(timings[1], 4), "ms_per_step": round(step_s * 1e3, 3),
                     "tokens_per_s": round(batch / step_s, 1),
                     "weights_gb": round(weights / 1e9, 3), "cache_gb": round(cache / 1e9, 3),
                     "bandwidth_limit_tokens_per_s": None if limit is None else round(limit, 1),
                     "bandwidth_fraction": None if limit is None
                     else round(batch / step_s / limit, 4)})  # fmt: skip
    return rows


def plot(report: dict):
    """Training tokens/s and MFU per (attention, remat); decode tokens/s against the limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_d) = plt.subplots(1, 2, figsize=(11, 4))
    train = [r for r in report["rows"] if r["part"] == "train" and r["fits"]]
    labels = [f"{r['attention']}\n{r['remat']}\nbatch {r['batch']}" for r in train]
    bars = ax_t.bar(range(len(train)), [r["tokens_per_s"] for r in train], color="tab:blue")
    for bar, r in zip(bars, train, strict=True):
        if r["mfu"] is not None:
            ax_t.annotate(f"MFU {r['mfu']:.0%}", (bar.get_x() + bar.get_width() / 2,
                          bar.get_height()), ha="center", va="bottom", fontsize=7)  # fmt: skip
    ax_t.set_xticks(range(len(train)), labels, fontsize=7)
    ax_t.set_ylabel("training throughput (tokens/s)")
    ax_t.set_title(f"{report['preset']} train step, seq {report['seq_len']}, bf16")
    decode = [r for r in report["rows"] if r["part"] == "decode"]
    x = [r["batch"] for r in decode]
    ax_d.plot(x, [r["tokens_per_s"] for r in decode], "o-", label="measured")
    limits = [r["bandwidth_limit_tokens_per_s"] for r in decode]
    if decode and None not in limits:
        ax_d.plot(x, limits, "k--", label="memory-bandwidth limit")
    if decode:
        ax_d.set_xscale("log", base=2)
        ax_d.set_yscale("log")
    ax_d.set_xlabel("decode batch (rows)")
    ax_d.set_ylabel("decode throughput (tokens/s)")
    ax_d.set_title("greedy decoding with the KV cache")
    ax_d.legend(fontsize=8)
    fig.suptitle(f"{report['device_kind']} ({report['backend']}), jax {report['jax']}")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from llmjax.results import write_results
    from llmjax.runtime import enable_compilation_cache
    from llmjax.scaling import peak_flops

    enable_compilation_cache()
    start = time.perf_counter()
    info = device_info()
    peak = peak_flops()
    bandwidth = table_bandwidth(info["device_kind"])

    def out_of_time() -> bool:
        return time.perf_counter() - start > args.budget_s

    rows, skipped = [], []
    best_batch = None
    for batch in args.batches:  # the largest batch that fits, with auto + dots
        if out_of_time():
            skipped.append(f"train batch {batch}")
            continue
        row = time_train(args, batch, "auto", "dots", peak)
        rows.append(row)
        if not row["fits"]:
            break
        best_batch = batch
    if best_batch is not None:
        for attention in args.attention:
            for remat in args.remat:
                if (attention, remat) == ("auto", "dots"):
                    continue
                if out_of_time():
                    skipped.append(f"train {attention}/{remat}")
                    continue
                rows.append(time_train(args, best_batch, attention, remat, peak))
    decode_rows = [] if out_of_time() else time_decode(args, args.decode_batches, bandwidth)
    if not decode_rows:
        skipped.append("decode")
    rows += decode_rows
    fitted = [r for r in rows if r["part"] == "train" and r["fits"]]
    best = max(fitted, key=lambda r: r["tokens_per_s"], default=None)
    at_32 = [r for r in decode_rows if r["batch"] == 32 and r["bandwidth_fraction"] is not None]
    report = {
        **info, "preset": args.preset, "seq_len": args.seq,
        "precision": "bfloat16 compute, float32 params and AdamW state (decode: bfloat16 weights)",
        # The chip's bf16 datasheet peak; on CPU a float32 matmul timed on this machine.
        "peak_tflops": None if peak is None else round(peak / 1e12, 3),
        "bandwidth_tb_s": None if bandwidth is None else bandwidth / 1e12,
        "best_batch": best_batch, "best_train": best,
        "device_peak_gib": None if peak_bytes() is None else round(peak_bytes() / 2**30, 2),
        "rows": rows, "skipped": skipped, "seconds": round(time.perf_counter() - start, 1),
        "targets": TARGETS,
        "mfu_target_met": None if best is None or best["mfu"] is None
        else best["mfu"] >= TARGETS["train_mfu_min"],
        "decode_target_met": None if not at_32 else at_32[0]["bandwidth_fraction"]
        >= TARGETS["decode_bandwidth_fraction_min_at_32"],
    }  # fmt: skip
    print(json.dumps(report))
    write_results("bench_accelerator", report, rows=rows, plots={"bench_accelerator":
                  lambda: plot(report)}, out_dir=args.out_dir, quick=args.quick)  # fmt: skip
    return report


if __name__ == "__main__":
    main()
