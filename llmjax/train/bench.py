"""Measuring compiled train steps: XLA's memory and FLOP accounting, and wall-clock time."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from llmjax.config import Config
from llmjax.train.setup import build_training

HostBatch = dict[str, np.ndarray]


def synthetic_batch(cfg: Config, seed: int = 0) -> HostBatch:
    """Uniformly random token windows of the config's batch shape (timing needs no text)."""
    rng = np.random.default_rng(seed)
    window = rng.integers(0, cfg.model.vocab_size, (cfg.data.batch_size, cfg.seq_len + 1))
    window = window.astype(np.int32)
    return {"inputs": window[:, :-1], "targets": window[:, 1:]}


@dataclass
class CompiledStep:
    """A train step compiled ahead of time as its parallel mode runs it, with state and batch."""

    cfg: Config
    compiled: Any
    state: Any
    batch: dict[str, Any]
    place: Callable[[HostBatch], dict[str, Any]]  # host batch -> device arrays for `compiled`
    compile_s: float
    # XLA's memory_analysis(): temp, argument, output and alias bytes, per device on a mesh.
    memory: dict[str, int]
    xla_flops: float  # XLA's cost_analysis() FLOPs (per device on a mesh)
    times: list[float] = field(default_factory=list)
    metrics: list[dict[str, float]] = field(default_factory=list)

    def run(self, batch: HostBatch | None = None) -> float:
        """One timed step (dispatch to results ready) on a host `batch` (default: the
        compiled-with one, already on the devices); the state advances."""
        placed = self.batch if batch is None else self.place(batch)
        start = time.perf_counter()
        self.state, metrics = self.compiled(self.state, placed)
        metrics = jax.device_get(metrics)
        elapsed = time.perf_counter() - start
        self.times.append(elapsed)
        self.metrics.append({k: float(v) for k, v in metrics.items()})
        return elapsed

    @property
    def step_s(self) -> float:
        """The fastest timed step: the least disturbed by other work on the machine."""
        return min(self.times)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times)


def compile_step(cfg: Config, batch: HostBatch | None = None) -> CompiledStep:
    """Compiles cfg's train step (parallel.mode none or mesh) and reads XLA's analyses."""
    training = build_training(cfg)
    if training.parallel.axis_name is not None:
        raise ValueError(
            f"compile_step measures parallel.mode none or mesh, not {cfg.parallel.kind!r}: "
            f"pmap's compiled step returns one copy of the metrics per device"
        )
    state = training.init_state()

    def place(host: HostBatch) -> dict[str, Any]:
        placed = training.parallel.put(host, host["inputs"].shape)
        return {k: jax.device_put(v) if isinstance(v, np.ndarray) else v for k, v in placed.items()}

    placed = place(synthetic_batch(cfg) if batch is None else batch)
    start = time.perf_counter()
    compiled = training.train_step().lower(state, placed).compile()
    compile_s = time.perf_counter() - start
    stats = compiled.memory_analysis()
    memory = {
        name: int(getattr(stats, f"{name}_size_in_bytes"))
        for name in ("temp", "argument", "output", "alias")
    }
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops = float(cost.get("flops", float("nan")))
    return CompiledStep(cfg, compiled, state, placed, place, compile_s, memory, flops)


def time_round_robin(steps: Mapping[Any, CompiledStep], rounds: int, warmup: int = 1) -> None:
    """Times every step `rounds` times, interleaved, so that a slow spell on a shared machine
    hits all of them alike rather than whichever ran then."""
    for _ in range(warmup):
        for step in steps.values():
            step.run()
    for step in steps.values():
        step.times.clear()
        step.metrics.clear()
    for _ in range(rounds):
        for step in steps.values():
            step.run()
