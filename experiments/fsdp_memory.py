"""What sharding saves: per-device memory of params + optimizer state, and of a train step,
on a mesh of 8 simulated CPU devices.

FSDP splits params, gradients and AdamW's two moments on the embed dimension, so each of n
devices keeps about 1/n of them; pure data parallelism keeps a whole copy on every device;
tensor parallelism splits heads, MLP width and vocabulary. The state is created directly
sharded and its bytes are read off each device's shards; the step's temp memory is XLA's
compiled memory_analysis() per device (activations are split over data x fsdp on the batch).

    python -m experiments.fsdp_memory            # the medium shape: 6L, d=384, ctx 256, batch 64
    python -m experiments.fsdp_memory --quick
"""

import os
import sys

if "jax" not in sys.modules:  # run as a script: 8 CPU devices (the tests set this themselves)
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import jax  # noqa: E402

from llmjax import sharding  # noqa: E402
from llmjax.config import PRESETS, apply_overrides  # noqa: E402
from llmjax.results import bar_pair, experiment_parser, write_results  # noqa: E402
from llmjax.train.bench import compile_step  # noqa: E402

# 128 divides every tensor axis swept, so all meshes hold the same (padded) vocabulary.
COMMON = ["train.mfu=false", "model.vocab_multiple=128"]
QUICK = ["model.n_layers=2", "model.n_heads=4", "model.d_model=64", "model.max_seq_len=64",
         "data.batch_size=16"]  # fmt: skip
MESHES = ["", "data=8", "fsdp=8", "data=2,fsdp=4", "fsdp=4,tensor=2", "data=2,fsdp=2,tensor=2"]
QUICK_MESHES = ["", "data=8", "fsdp=8", "data=2,fsdp=2,tensor=2"]


def main(argv: list[str] | None = None):
    args = experiment_parser(__doc__.splitlines()[0]).parse_args(argv)
    if jax.device_count() != 8:
        raise SystemExit(
            f"this experiment needs 8 devices, found {jax.device_count()}; run it in a fresh "
            f"process (python -m experiments.fsdp_memory) so it can simulate 8 CPU devices"
        )
    base = apply_overrides(PRESETS["medium"], [*COMMON, *(QUICK if args.quick else [])])
    rows = []
    for mesh in QUICK_MESHES if args.quick else MESHES:
        step = compile_step(apply_overrides(base, [f"parallel.mesh={mesh}"]))
        state = (step.state.params, step.state.opt_state)
        per_device, total = sharding.shard_bytes(state)
        rows.append(
            {
                "mesh": mesh or "one device",
                "state_MB_per_device": per_device / 1e6,
                "state_MB_total": total / 1e6,
                "temp_MB_per_device": step.memory["temp"] / 1e6,
                "compile_s": step.compile_s,
            }
        )
        del step, state  # free this mesh's state before the next
        print(f"{rows[-1]['mesh']}: {per_device / 1e6:.1f} MB of params + optimizer state")
    one = rows[0]["state_MB_per_device"]
    for row in rows:
        row["state_fraction_of_one_device"] = row["state_MB_per_device"] / one
    m = base.model
    by_mesh = {r["mesh"]: r for r in rows}
    metrics = {
        "shape": f"{m.n_layers}L d={m.d_model} ctx={base.seq_len} batch={base.data.batch_size}",
        "devices": jax.device_count(),
        "fsdp8_state_fraction": by_mesh["fsdp=8"]["state_fraction_of_one_device"],
        "data8_state_fraction": by_mesh["data=8"]["state_fraction_of_one_device"],
    }
    plot = bar_pair(
        rows,
        "mesh",
        ("state_MB_per_device", "params + optimizer state per device (MB)"),
        ("temp_MB_per_device", "compiled train-step temp memory per device (MB)"),
        f"sharding on 8 devices, {metrics['shape']}",
    )
    return write_results(
        "fsdp_memory",
        metrics,
        rows=rows,
        plots={"fsdp_memory": plot},
        out_dir=args.out_dir,
        quick=args.quick,
    )


if __name__ == "__main__":
    main()
