"""Q31/Q32: what training costs. Step time and memory against model width and sequence length,
next to the FLOP formula C = 6N + 12 L T n_heads head_dim per token (llmjax.scaling).

Sweep 1 widens the model at a fixed context: cost follows 6N. Sweep 2 keeps the model and the
tokens per batch fixed and lengthens the sequences (fewer of them): 6N per token stays put, so
everything that grows is attention, whose T x T scores make FLOPs per token grow linearly in T
(quadratically per sequence) and the stored probabilities grow with T too.

    python -m experiments.training_cost
    python -m experiments.training_cost --quick
"""

from __future__ import annotations

import dataclasses

from llmjax import scaling
from llmjax.config import PRESETS, apply_overrides
from llmjax.results import experiment_parser, write_results
from llmjax.train.bench import compile_step, time_round_robin

# The unrolled layer loop, so that XLA's cost analysis counts every layer (it counts the body
# of a scan's while loop once).
COMMON = ["model.n_layers=2", "model.scan_layers=false", "train.mfu=false", "model.vocab_size=256"]
# tokens per step; widths swept at sequence length width_seq; lengths swept at width seq_width.
FULL = dict(
    tokens=8192,
    widths=[64, 128, 256, 384],
    width_seq=128,
    seqs=[64, 256, 1024, 2048],
    seq_width=128,
)
QUICK = dict(tokens=512, widths=[32, 64], width_seq=32, seqs=[32, 256], seq_width=32)


def _config(width: int, seq: int, tokens: int):
    cfg = apply_overrides(PRESETS["nano"], COMMON)
    model = dataclasses.replace(
        cfg.model, d_model=width, n_heads=max(1, width // 32), max_seq_len=seq
    )
    data = dataclasses.replace(cfg.data, batch_size=tokens // seq)
    return dataclasses.replace(cfg, model=model, data=data)


def main(argv: list[str] | None = None):
    args = experiment_parser(__doc__.splitlines()[0]).parse_args(argv)
    plan = QUICK if args.quick else FULL
    peak = scaling.measured_matmul_peak()  # before the sweeps, on an idle process
    sweeps = [("width", (w, plan["width_seq"])) for w in plan["widths"]]
    sweeps += [("seq", (plan["seq_width"], t)) for t in plan["seqs"]]
    # A shape in both sweeps is compiled and timed once.
    steps = {shape: compile_step(_config(*shape, plan["tokens"])) for _, shape in sweeps}
    time_round_robin(steps, rounds=2)

    rows = []
    for sweep, shape in sweeps:
        step = steps[shape]
        cfg = step.cfg
        tokens = cfg.data.batch_size * cfg.seq_len
        dense = 6 * scaling.matmul_params(cfg.model) * tokens
        attention = 3 * scaling.attention_flops_per_token(cfg.model, cfg.seq_len) * tokens
        rows.append(
            {
                "sweep": sweep,
                "d_model": cfg.model.d_model,
                "seq_len": cfg.seq_len,
                "batch": cfg.data.batch_size,
                "non_embedding_params": scaling.param_counts(cfg.model).non_embedding,
                "GFLOP_6N": dense / 1e9,
                "GFLOP_attention": attention / 1e9,
                "attention_share": attention / (dense + attention),
                "GFLOP_xla": step.xla_flops / 1e9,
                "formula_vs_xla": (dense + attention) / step.xla_flops,
                "step_s": step.step_s,
                "achieved_GFLOP_s": (dense + attention) / step.step_s / 1e9,
                "mfu": scaling.mfu((dense + attention) / tokens, tokens / step.step_s, peak),
                "temp_MB": step.memory["temp"] / 1e6,
            }
        )
    metrics = {
        "tokens_per_step": plan["tokens"],
        "formula": "6N + 12 L T n_heads head_dim FLOPs per token (no causal halving)",
        "cpu_matmul_peak_GFLOP_s": peak / 1e9,
        "max_formula_vs_xla_error": max(abs(r["formula_vs_xla"] - 1) for r in rows),
    }
    return write_results(
        "training_cost", metrics, rows=rows, plots={"training_cost": _plot(rows)},
        out_dir=args.out_dir, quick=args.quick,
    )  # fmt: skip


def _plot(rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4), dpi=110)
    width = [r for r in rows if r["sweep"] == "width"]
    seq = [r for r in rows if r["sweep"] == "seq"]
    ax = axes[0]
    ax.plot([r["GFLOP_6N"] + r["GFLOP_attention"] for r in width], [r["step_s"] for r in width],
            "o-", label="width sweep")  # fmt: skip
    ax.plot([r["GFLOP_6N"] + r["GFLOP_attention"] for r in seq], [r["step_s"] for r in seq],
            "s-", label="sequence sweep")  # fmt: skip
    ax.set_xlabel("formula GFLOP per step")
    ax.set_ylabel("measured step time (s)")
    ax.set_title("time follows the FLOP formula")
    ax.legend()
    ax = axes[1]
    t = [r["seq_len"] for r in seq]
    ax.bar([str(x) for x in t], [r["GFLOP_6N"] for r in seq], label="6N (dense)")
    ax.bar([str(x) for x in t], [r["GFLOP_attention"] for r in seq],
           bottom=[r["GFLOP_6N"] for r in seq], label="attention (12 L T n_h d_h)")  # fmt: skip
    ax.set_xlabel(
        f"sequence length (tokens per step fixed at {seq[0]['seq_len'] * seq[0]['batch']})"
    )
    ax.set_ylabel("GFLOP per step")
    ax.set_title("attention's share grows with T")
    ax.legend()
    ax = axes[2]
    ax.plot(t, [r["temp_MB"] for r in seq], "o-", color="tab:red")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length")
    ax.set_ylabel("compiled temp memory (MB)")
    ax.set_title("T x T attention scores in memory")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
