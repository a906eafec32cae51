"""Cost of one attention layer's forward + backward: compiled temporary memory and wall time."""

import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from llmjax.attention import ATTENTION, Mask


@dataclass(frozen=True)
class CostPoint:
    """One measurement; seconds is None when the compiled temp memory exceeded the budget."""

    variant: str
    length: int
    temp_bytes: int
    seconds: float | None


def attention_cost(
    variant: str,
    length: int,
    *,
    batch: int = 1,
    heads: int = 4,
    head_dim: int = 64,
    window: int | None = None,
    repeats: int = 3,
    max_run_bytes: int | None = None,
    seed: int = 0,
) -> CostPoint:
    """Compiles grad(sum(attention(q, k, v))) under a causal mask (plus `window`) and measures it.

    temp_bytes is XLA's `memory_analysis().temp_size_in_bytes` (buffers besides the inputs and
    outputs); the time is the best of `repeats` runs after one warm-up run, which is skipped
    (seconds=None) when temp_bytes > max_run_bytes.
    """
    attend = ATTENTION.get(variant)
    keys = jax.random.split(jax.random.key(seed), 3)
    shape = (batch, length, heads, head_dim)
    q, k, v = (jax.random.normal(key, shape, jnp.float32) for key in keys)
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    mask = Mask.causal_lm(positions, window=window, plain=True)

    def loss(q, k, v):
        return attend(q, k, v, mask).sum()

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v).compile()
    temp = int(compiled.memory_analysis().temp_size_in_bytes)
    if max_run_bytes is not None and temp > max_run_bytes:
        return CostPoint(variant, length, temp, None)
    jax.block_until_ready(compiled(q, k, v))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(q, k, v))
        times.append(time.perf_counter() - start)
    return CostPoint(variant, length, temp, min(times))


def loglog_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of log y against log x (the exponent of a power law y ~ x^slope)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2:
        return float("nan")
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])
