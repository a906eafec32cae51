"""Multi-process (multi-host) runs: starting jax.distributed, and each process's share of a batch.

Every process runs the same program. `initialize` joins them (from flags, LLMJAX_* variables,
or JAX's own detection on Cloud TPU, SLURM and Open MPI). Each process then draws only the
rows of the global batch its devices hold; which rows those are follows from the batch
sharding (`process_region`), and what they contain from (seed, step) alone, so a run's batches
do not depend on how many processes share it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax

log = logging.getLogger(__name__)

ENV_COORDINATOR = "LLMJAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "LLMJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "LLMJAX_PROCESS_ID"
ENV_DISTRIBUTED = "LLMJAX_DISTRIBUTED"  # "auto": let JAX detect the cluster


class DistributedError(ValueError):
    """Inconsistent multi-process settings."""


def distributed_args(
    *,
    auto: bool = False,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    env: Mapping[str, str] = os.environ,
) -> dict[str, Any] | None:
    """The keyword arguments for jax.distributed.initialize, or None for a one-process run.

    Flags win over the LLMJAX_* environment variables. `auto` (or LLMJAX_DISTRIBUTED=auto)
    with nothing else set calls initialize() without arguments: JAX then reads the cluster
    (Cloud TPU metadata, SLURM, Open MPI, ...).
    """
    coordinator = coordinator or env.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _env_int(env, ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(env, ENV_PROCESS_ID)
    auto = auto or env.get(ENV_DISTRIBUTED, "").lower() == "auto"
    explicit = {
        "coordinator_address": coordinator,
        "num_processes": num_processes,
        "process_id": process_id,
    }
    if all(v is None for v in explicit.values()):
        return {} if auto else None
    if coordinator is None or num_processes is None or process_id is None:
        missing = [k for k, v in explicit.items() if v is None]
        raise DistributedError(
            f"a multi-process run needs the coordinator address, process count and process id "
            f"together; missing: {', '.join(missing)} (flags --coordinator, --num-processes, "
            f"--process-id or {ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}); or "
            f"pass --distributed alone on a cluster JAX detects by itself"
        )
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise DistributedError(
            f"process id {process_id} is outside 0..{num_processes - 1} (num_processes="
            f"{num_processes})"
        )
    return explicit


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"{name}={value!r} is not an integer") from None


def initialize(**kwargs: Any) -> bool:
    """Calls jax.distributed.initialize when `distributed_args(**kwargs)` asks for it.

    Must run before anything touches a device. Returns whether it did.
    """
    args = distributed_args(**kwargs)
    if args is None:
        return False
    jax.distributed.initialize(**args)
    log.info(
        "process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def barrier(name: str) -> None:
    """Waits until every process reaches this point (nothing to wait for with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def is_primary() -> bool:
    """Process 0 writes the run's config, metrics and plots; every process checkpoints."""
    return jax.process_index() == 0


def process_region(
    index_map: Mapping[Any, tuple[slice, ...]],
    local_devices: Sequence[Any],
    shape: Sequence[int],
) -> tuple[slice, ...]:
    """The block of a global array held by `local_devices`, given each device's index slices.

    `index_map` is `sharding.devices_indices_map(shape)`. The block is the bounding box of the
    local devices' pieces; it must be exactly covered by them (a process holds one contiguous
    block), else the batch layout does not fit per-process loading.
    """
    region = []
    for dim, size in enumerate(shape):
        starts, stops = [], []
        for device in local_devices:
            s = index_map[device][dim]
            start, stop, _ = s.indices(size)
            starts.append(start)
            stops.append(stop)
        region.append(slice(min(starts), max(stops)))
    pieces = {
        tuple(index_map[d][dim].indices(size)[:2] for dim, size in enumerate(shape))
        for d in local_devices
    }
    covered = sum(_volume(p) for p in pieces)
    if covered != _volume(tuple((r.start, r.stop) for r in region)):
        raise DistributedError(
            f"this process's devices hold a non-contiguous part of the batch ({sorted(pieces)}); "
            f"order the mesh so that each process's devices are adjacent on the batch axes"
        )
    return tuple(region)


def _volume(bounds: tuple[tuple[int, int], ...]) -> int:
    n = 1
    for start, stop in bounds:
        n *= stop - start
    return n


def local_region(sharding: jax.sharding.Sharding, shape: Sequence[int]) -> tuple[slice, ...]:
    """This process's block of a global array of `shape` laid out by `sharding`."""
    devices = [d for d in sharding.device_set if d.process_index == jax.process_index()]
    return process_region(sharding.devices_indices_map(tuple(shape)), devices, shape)
