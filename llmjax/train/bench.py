"""Measuring train steps: XLA's memory and FLOP accounting of the compiled step, and its
wall-clock time through the training loop."""

from __future__ import annotations

import itertools
import re
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np

from llmjax.config import Config
from llmjax.train.trainer import Trainer

HostBatch = dict[str, np.ndarray]


def synthetic_batch(cfg: Config, seed: int = 0) -> HostBatch:
    """Uniformly random token windows of the config's batch shape (timing needs no text)."""
    rng = np.random.default_rng(seed)
    window = rng.integers(0, cfg.model.vocab_size, (cfg.data.batch_size, cfg.seq_len + 1))
    window = window.astype(np.int32)
    return {"inputs": window[:, :-1], "targets": window[:, 1:]}


@dataclass
class CompiledStep:
    """A config's Trainer with its train step compiled ahead of time, XLA's analyses of that
    program, and the state it trains. Steps run through the training loop (`Trainer.run`,
    synchronously, each timed from dispatch to results on the host)."""

    cfg: Config
    trainer: Trainer
    state: Any
    batch: HostBatch  # the host batch it was compiled with (and, by default, trains on)
    compile_s: float
    # XLA's memory_analysis(): temp, argument, output and alias bytes, per device on a mesh.
    memory: dict[str, int]
    xla_flops: float  # XLA's cost_analysis() FLOPs (per device on a mesh)
    done: int = 0  # steps run so far
    times: list[float] = field(default_factory=list)
    # Process CPU seconds (all threads) per step, averaged over each `run` call: unlike wall
    # time, barely moved by other jobs taking turns on a shared machine's cores.
    cpu_times: list[float] = field(default_factory=list)
    metrics: list[dict[str, float]] = field(default_factory=list)
    compiled: Any = None  # the compiled executable (its text names each op and its shape)

    def run(self, steps: int = 1, batches: Iterable[HostBatch] | None = None) -> None:
        """`steps` more timed steps on `batches` (default: the compiled-with batch)."""
        source = itertools.repeat(self.batch) if batches is None else batches
        start = self.done
        cpu_start = time.process_time()
        self.state, metrics = self.trainer.train(
            source, state=self.state, start=start, end=start + steps, sync=True
        )
        cpu_s = time.process_time() - cpu_start
        self.done += len(metrics)
        self.times += [m["step_s"] for m in metrics]
        self.cpu_times += [cpu_s / max(len(metrics), 1)] * len(metrics)
        self.metrics += metrics

    def clear(self) -> None:
        """Forgets the timings and metrics so far (after warm-up steps)."""
        self.times.clear()
        self.cpu_times.clear()
        self.metrics.clear()

    @property
    def step_s(self) -> float:
        """The fastest timed step: the least disturbed by other work on the machine."""
        return min(self.times)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times)

    @property
    def median_cpu_s(self) -> float:
        return statistics.median(self.cpu_times)


def compile_step(cfg: Config, batch: HostBatch | None = None) -> CompiledStep:
    """Compiles cfg's train step (parallel.mode none or mesh) and reads XLA's analyses."""
    trainer = Trainer(cfg)
    host = synthetic_batch(cfg) if batch is None else batch
    return measure_step(trainer, trainer.init_state(), host)


def measure_step(trainer: Trainer, state: Any, batch: HostBatch) -> CompiledStep:
    """Compiles `trainer`'s train step for `state` and host `batch` and reads XLA's analyses;
    the CompiledStep trains `state` (a fine-tuning start, or a fresh one)."""
    cfg = trainer.cfg
    if trainer.parallel.axis_name is not None:
        raise ValueError(
            f"measure_step takes parallel.mode none or mesh, not {cfg.parallel.kind!r}: "
            f"pmap's compiled step returns one copy of the metrics per device"
        )
    start = time.perf_counter()
    # Compiled for what the loop will pass, so that its calls find this program ready.
    compiled = trainer.compile_train_step(state, batch)
    compile_s = time.perf_counter() - start
    stats = compiled.memory_analysis()
    memory = {
        name: int(getattr(stats, f"{name}_size_in_bytes"))
        for name in ("temp", "argument", "output", "alias")
    }
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops = float(cost.get("flops", float("nan")))
    return CompiledStep(cfg, trainer, state, batch, compile_s, memory, flops, compiled=compiled)


def state_memory(trainer: Trainer, state: Any) -> dict[str, int]:
    """How many params the optimizer updates, and the bytes of all params and of the
    optimizer state (a mask that trains some params gives the others no optimizer state)."""
    params = jax.tree.leaves(state.params)
    mask = trainer.training.trainable
    trained = params if mask is None else [
        x for x, keep in zip(params, jax.tree.leaves(mask), strict=True) if keep
    ]  # fmt: skip
    return {
        "trained_params": int(sum(x.size for x in trained)),
        "params_bytes": int(sum(x.nbytes for x in params)),
        "opt_state_bytes": int(sum(x.nbytes for x in jax.tree.leaves(state.opt_state))),
    }


def time_round_robin(steps: Mapping[Any, CompiledStep], rounds: int, warmup: int = 1) -> None:
    """Times every step `rounds` times, interleaved, so that a slow spell on a shared machine
    hits all of them alike rather than whichever ran then."""
    for _ in range(warmup):
        for step in steps.values():
            step.run()
    for step in steps.values():
        step.clear()
    for _ in range(rounds):
        for step in steps.values():
            step.run()


def profile_ops(step: CompiledStep, runs: int, top: int = 15, by: str = "kind") -> dict[str, Any]:
    """Runs `step` `runs` times under the JAX profiler and sums each XLA op's time per step.

    Ops are grouped by kind (`by="kind"`: an op's name without its ".N" suffix: `ynn_fusion`,
    `dot`, `multiply_tanh_fusion`, `all-reduce` ...) or by the shape of their result
    (`by="shape"`: `f32[64,6,256,256]` gathers every op that writes an attention-logits-sized
    array, whatever its kind; `tuple` for ops with several results). On a CPU, op events
    exist only if the process started with --xla_cpu_enable_xprof_traceme=true in XLA_FLAGS;
    without it the result is empty. Time on several threads or devices adds up, so the total
    may exceed the step's wall time.
    """
    if by not in ("kind", "shape"):
        raise ValueError(f"profile_ops groups by 'kind' or 'shape', not {by!r}")
    with tempfile.TemporaryDirectory(prefix="llmjax-profile-") as folder:
        with jax.profiler.trace(folder):
            step.run(runs)
        traces = sorted(Path(folder).rglob("*.xplane.pb"))
        data = jax.profiler.ProfileData.from_file(str(traces[-1])) if traces else None
    shapes = op_shapes(step.compiled.as_text()) if by == "shape" else {}
    per_kind: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    for name, duration_ns in _op_events(data):
        kind = shapes.get(name, "other") if by == "shape" else re.sub(r"\.\d+$", "", name)
        per_kind[kind] += duration_ns
        calls[kind] += 1
    total = sum(per_kind.values())
    ops = [
        {
            ("op" if by == "kind" else "shape"): kind,
            "ms_per_step": round(ns / runs / 1e6, 3),
            "share": round(ns / total, 4),
            "calls_per_step": round(calls[kind] / runs, 1),
        }
        for kind, ns in per_kind.most_common(top)
    ]
    return {"op_ms_per_step": round(total / runs / 1e6, 2), "ops": ops}


def op_shapes(hlo_text: str) -> dict[str, str]:
    """Each instruction's name in a compiled HLO module -> its result's shape without the
    layout (`f32[64,256,384]`), or `tuple`."""
    shapes = {}
    for name, shape in re.findall(
        r"^\s*(?:ROOT )?%?([\w.\-]+) = (\(|[a-z]\w*\[[\d,]*\])", hlo_text, re.M
    ):
        shapes.setdefault(name, "tuple" if shape == "(" else shape)
    return shapes


def _op_events(data: Any) -> Iterator[tuple[str, int]]:
    """(name, duration) of every XLA op: the "XLA Ops" lines of accelerator planes, else the
    events on XLA:CPU's worker threads (minus the executor's own enclosing events)."""
    if data is None:
        return
    devices = [p for p in data.planes if p.name.startswith("/device:")]
    for plane in devices or [p for p in data.planes if p.name.startswith("/host:CPU")]:
        for line in plane.lines:
            if devices and line.name != "XLA Ops":
                continue
            if not devices and not line.name.startswith("tf_XLA"):
                continue
            for event in line.events:
                if "ThunkExecutor" not in event.name:
                    yield event.name, event.duration_ns
