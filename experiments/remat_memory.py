"""Q18: what gradient checkpointing buys. Compiled temp memory and step time per remat policy.

python -m experiments.remat_memory            # the medium shape: 6L, d=384, ctx 256, batch 64
python -m experiments.remat_memory --quick    # a tiny shape, seconds
"""

from __future__ import annotations

from llmjax.config import PRESETS, apply_overrides
from llmjax.models import REMAT_POLICIES
from llmjax.results import bar_pair, experiment_parser, write_results
from llmjax.train.bench import compile_step, time_round_robin

QUICK = ["model.n_layers=2", "model.n_heads=2", "model.d_model=64", "model.max_seq_len=64",
         "data.batch_size=8"]  # fmt: skip


def main(argv: list[str] | None = None):
    args = experiment_parser(__doc__.splitlines()[0]).parse_args(argv)
    base = apply_overrides(PRESETS["medium"], ["train.mfu=false", *(QUICK if args.quick else [])])
    policies = [p for p in REMAT_POLICIES.names() if p != "auto"]  # auto is one of them
    steps = {}
    for policy in policies:
        cfg = apply_overrides(base, [f"model.remat={policy}", "model.scan_layers=true"])
        steps[policy] = compile_step(cfg)
        print(f"compiled {policy}: temp {steps[policy].memory['temp'] / 1e6:.1f} MB")
    time_round_robin(steps, rounds=1 if args.quick else 3)

    none = steps["none"]
    rows = [
        {
            "policy": name,
            "temp_MB": s.memory["temp"] / 1e6,
            "args_MB": s.memory["argument"] / 1e6,
            "step_s": s.step_s,
            "temp_vs_none": none.memory["temp"] / s.memory["temp"],
            "time_vs_none": s.step_s / none.step_s,
            "compile_s": s.compile_s,
        }
        for name, s in steps.items()
    ]
    m = base.model
    metrics = {
        "shape": f"{m.n_layers}L d={m.d_model} ctx={base.seq_len} batch={base.data.batch_size}",
        "full_temp_reduction": none.memory["temp"] / steps["full"].memory["temp"],
        "full_time_ratio": steps["full"].step_s / none.step_s,
        "step_times_s": {name: s.times for name, s in steps.items()},
    }
    plot = bar_pair(
        rows,
        "policy",
        ("temp_MB", "compiled temp memory (MB)"),
        ("step_s", "step time (s, fastest of the timed steps)"),
        f"remat policies, {metrics['shape']}",
    )
    return write_results(
        "remat_memory",
        metrics,
        rows=rows,
        plots={"remat_memory": plot},
        out_dir=args.out_dir,
        quick=args.quick,
    )


if __name__ == "__main__":
    main()
