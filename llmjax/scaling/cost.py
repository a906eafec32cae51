"""Cost accounting: parameter counts, training FLOPs per token, accelerator peaks, and MFU.

Training FLOPs per token are 3 x the forward FLOPs: a matmul with a weight of size N costs 2N
FLOPs forward and 4N backward (gradients of the input and of the weight). The forward count is
each model family's own (`matmul_params` and `forward_flops_per_token` of its class, see
llmjax.models.family): 2 x the matmul weights a token passes through, plus what grows with the
context. The transformer's (PaLM's 6N + 12 L T n_heads head_dim, and what it leaves out) is
explained in llmjax.models.transformer.

MFU = achieved model FLOP/s (C * tokens/s) / peak FLOP/s. Recomputation by remat is not model
work and is not counted (that would be hardware FLOPs utilization).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llmjax.models import family_of, init_variables

if TYPE_CHECKING:
    from llmjax.config import ModelConfig

log = logging.getLogger(__name__)

# Dense (no sparsity) bfloat16 matmul peak per chip, FLOP/s, from the vendors' datasheets:
# NVIDIA H100/H200 SXM 989.4 TFLOP/s (H100 PCIe 756), A100 312; Google Cloud TPU v4 275,
# v5e 197, v5p 459, v6e (Trillium) 918. Matched against `device.device_kind`, first hit wins
# (so "tpu v5 lite" is tried before "tpu v5").
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756e12),
    ("h100", 989.4e12),
    ("h200", 989.4e12),
    ("a100", 312e12),
    ("tpu v4", 275e12),
    ("tpu v5 lite", 197e12),
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),
    ("tpu v6 lite", 918e12),
    ("tpu v6e", 918e12),
)

# Peak FLOP/s per chip (per process on CPU) to use instead of the table or a measurement.
ENV_PEAK = "LLMJAX_PEAK_FLOPS"


# ----------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class ParamCounts:
    """Parameters of a model: lookup tables (token, learned positions) and the rest."""

    total: int
    embedding: int
    non_embedding: int


def param_counts(cfg: "ModelConfig") -> ParamCounts:
    """Exact counts from the model's parameter shapes (nothing is allocated)."""
    boxed = jax.eval_shape(lambda k: init_variables(cfg, k), jax.random.key(0))
    shapes = nn.meta.unbox(boxed)["params"]
    sizes = {
        jax.tree_util.keystr(path): int(np.prod(leaf.shape))
        for path, leaf in jax.tree_util.tree_leaves_with_path(shapes)
    }
    total = sum(sizes.values())
    embedding = sum(n for path, n in sizes.items() if path.endswith("['embedding']"))
    return ParamCounts(total=total, embedding=embedding, non_embedding=total - embedding)


def matmul_params(cfg: "ModelConfig") -> int:
    """Weights a token is multiplied with (for a transformer: per-layer projections and MLP,
    plus the logits), as cfg's model family counts them."""
    return family_of(cfg).matmul_params(cfg)


# ----------------------------------------------------------------------------- FLOPs


def attention_flops_per_token(
    cfg: "ModelConfig", seq_len: int, *, causal_halving: bool = False
) -> float:
    """Forward FLOPs per token beyond the weight matmuls: the part that grows with the context
    (a transformer's T x T attention matmuls, 4 * L * T * n_heads * head_dim; 0 for a model
    without attention). The counts are integers well below 2**53, so the difference is exact."""
    forward = forward_flops_per_token(cfg, seq_len, causal_halving=causal_halving)
    return forward - 2.0 * matmul_params(cfg)


def forward_flops_per_token(
    cfg: "ModelConfig", seq_len: int, *, causal_halving: bool = False
) -> float:
    """2 * matmul_params plus the context-dependent FLOPs, as cfg's model family counts them."""
    return family_of(cfg).forward_flops_per_token(cfg, seq_len, causal_halving=causal_halving)


def train_flops_per_token(
    cfg: "ModelConfig", seq_len: int, *, causal_halving: bool = False
) -> float:
    """3 x the forward FLOPs (for a transformer 6 N + 12 L T n_heads head_dim): forward and
    backward, no remat recomputation."""
    return 3.0 * forward_flops_per_token(cfg, seq_len, causal_halving=causal_halving)


# ----------------------------------------------------------------------------- peaks and MFU


def table_peak(device_kind: str) -> float | None:
    """The datasheet bf16 peak of one chip, or None if the table lacks it."""
    kind = device_kind.lower()
    for key, peak in PEAK_BF16_FLOPS:
        if key in kind:
            return peak
    return None


def measure_matmul_peak(
    n: int = 2048,
    *,
    repeats: int = 5,
    min_seconds: float = 0.1,
    dtype: str = "float32",
    device: jax.Device | None = None,
) -> float:
    """FLOP/s of a jitted n x n @ n x n matmul on `device` (default: the first), measured now.

    After a compile and a warm-up call, `repeats` windows each run the matmul back to back for
    at least `min_seconds`; the best window counts, being the one least disturbed by other work
    on a shared machine. 2 n^3 FLOPs per call. Divide by 1e9 for GFLOP/s.
    """
    device = jax.devices()[0] if device is None else device
    a = jax.device_put(jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype)), device)
    matmul = jax.jit(jnp.dot)
    matmul(a, a).block_until_ready()  # compile
    matmul(a, a).block_until_ready()  # warm caches and thread pools
    best = 0.0
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            matmul(a, a).block_until_ready()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        best = max(best, 2.0 * n**3 * calls / elapsed)
    return best


PEAK_CACHE_FILE = "matmul_peak.json"


def _machine_key() -> str:
    """What a CPU's measured peak depends on: processor, usable cores, XLA:CPU devices, jaxlib."""
    import platform

    import jaxlib

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model
            )
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}|cores={cores}|devices={jax.local_device_count()}|jaxlib={jaxlib.__version__}"


@functools.cache
def measured_matmul_peak() -> float:
    """`measure_matmul_peak()` of the default device, for MFU: measured once per machine and
    kept in <llmjax cache dir>/matmul_peak.json (keyed by processor, cores, device count and
    jaxlib), so that runs share one denominator and skip the ~2 s measurement. Delete the file
    to measure again; $LLMJAX_PEAK_FLOPS overrides it (see peak_flops)."""
    import json

    from llmjax.data.cache import atomic_replace, resolve_cache_dir

    path = resolve_cache_dir() / PEAK_CACHE_FILE
    key = _machine_key()
    known: dict = {}
    if path.is_file():
        try:
            known = json.loads(path.read_text())
            return float(known[key]["flops_per_s"])
        except KeyError:
            pass
        except (ValueError, TypeError, OSError) as e:
            log.warning("ignoring unreadable %s (%s); measuring the matmul peak again", path, e)
            known = {}
    peak = measure_matmul_peak()
    known[key] = {"flops_per_s": peak, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        atomic_replace(path, lambda f: f.write(json.dumps(known, indent=1).encode()))
    except OSError as e:  # a read-only home still gets its MFU, measured per process
        log.warning("could not keep the measured matmul peak in %s: %s", path, e)
    return peak


def peak_flops(devices: Sequence[jax.Device] | None = None, *, fresh: bool = False) -> float | None:
    """Peak FLOP/s of all `devices` together (default: all of the run's devices).

    Accelerators: the datasheet peak per chip times the chips. CPU: simulated devices share the
    host's cores, so the peak is one timed matmul per process times the processes: the one
    kept for this machine (`measured_matmul_peak`), or with `fresh` one timed now.
    $LLMJAX_PEAK_FLOPS overrides the per-chip (CPU: per-process) peak and skips the
    measurement. None when the accelerator is not in the table.
    """
    devices = list(jax.devices() if devices is None else devices)
    first = devices[0]
    units = len({d.process_index for d in devices}) if first.platform == "cpu" else len(devices)
    override = os.environ.get(ENV_PEAK)
    if override:
        return float(override) * units
    if first.platform == "cpu":
        return (measure_matmul_peak() if fresh else measured_matmul_peak()) * units
    peak = table_peak(first.device_kind)
    if peak is None:
        log.warning("no peak FLOP/s known for %r; set %s to log MFU", first.device_kind, ENV_PEAK)
        return None
    return peak * units


def mfu(flops_per_token: float, tokens_per_s: float, peak: float | None) -> float:
    """Model FLOPs utilization: the share of the peak the model's own FLOPs reach."""
    if not peak:
        return float("nan")
    return flops_per_token * tokens_per_s / peak


__all__ = [
    "ENV_PEAK",
    "PEAK_BF16_FLOPS",
    "PEAK_CACHE_FILE",
    "ParamCounts",
    "attention_flops_per_token",
    "forward_flops_per_token",
    "matmul_params",
    "measure_matmul_peak",
    "measured_matmul_peak",
    "mfu",
    "param_counts",
    "peak_flops",
    "table_peak",
    "train_flops_per_token",
]
