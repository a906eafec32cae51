"""Mixed precision: which backends compute in float16, and dynamic loss scaling for float16.

float16 has 5 exponent bits: its smallest normal number is 6.1e-5 and its smallest subnormal
6.0e-8, so the per-token gradients of a mean loss over many tokens underflow to zero in the
backward pass. Multiplying the loss by a large scale S before differentiating (and the
gradients by 1/S after) keeps them representable. Too large an S overflows to inf instead;
dynamic scaling halves S and skips the step when that happens, and doubles S again after
`growth_interval` finite steps in a row. bfloat16 has float32's exponent range and needs none.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import SingleDeviceSharding

# Backends whose float16 arithmetic is missing, with the reason shown to the user.
FP16_UNSUPPORTED = {
    "tpu": "TPU matrix units compute in bfloat16, and XLA:TPU does not support float16 dots "
    "with float32 accumulation (the F16_F16_F32 algorithm)",
}


class PrecisionError(ValueError):
    """A compute dtype the backend cannot run."""


def check_compute_dtype(dtype: str, attention: str = "xla", backend: str | None = None) -> None:
    """Raises PrecisionError for float16 compute the backend cannot run.

    Besides backends without float16 at all, a backend may lack what one attention variant
    asks for: jax.nn.dot_product_attention ("xla") requests float16 dots with float32
    accumulation, which XLA:CPU does not implement. The variant is compiled once at a tiny
    shape in float16 to find out.
    """
    if dtype != "float16":
        return
    backend = jax.default_backend() if backend is None else backend
    if backend in FP16_UNSUPPORTED:
        reason = FP16_UNSUPPORTED[backend]
    else:
        reason = _float16_attention_error(attention, backend)
        if reason is None:
            return
        reason = (
            f"attention variant {attention!r} does not compile in float16 here ({reason}); "
            f"model.attention=reference runs in float16 there"
        )
    raise PrecisionError(
        f"model.dtype=float16 is not supported on {backend}: {reason}. Or use "
        f"model.dtype=bfloat16: it has float32's exponent range, so it needs no loss scaling."
    )


@functools.cache
def _float16_attention_error(attention: str, backend: str) -> str | None:
    from llmjax.attention import ATTENTION, Mask

    device = jax.local_devices(backend=backend)[0]
    q = jax.ShapeDtypeStruct((1, 4, 1, 8), jnp.float16, sharding=SingleDeviceSharding(device))
    kernel = ATTENTION.get(attention)

    def attend(q):
        positions = jnp.arange(4, dtype=jnp.int32)[None]
        mask = Mask.causal_lm(positions, None, window=None, plain=True)
        return kernel(q, q, q, mask)

    try:
        jax.jit(attend).lower(q).compile()
    except Exception as e:  # XLA reports an unsupported op as one of several error types
        return str(e).splitlines()[0]
    return None


@flax.struct.dataclass
class LossScaleState:
    """The current scale, finite steps since it last changed, and the divergence streak."""

    scale: jax.Array  # float32 scalar
    good_steps: jax.Array  # int32 scalar
    # Non-finite steps in a row that an overflow of the scale does not explain: the forward
    # loss itself was non-finite, or the gradients overflowed with the scale at its minimum.
    streak: jax.Array  # int32 scalar


@dataclass(frozen=True)
class DynamicLossScale:
    """Halve on overflow (and skip the step), double after `growth_interval` finite steps."""

    init: float = 2.0**15
    growth_interval: int = 2000
    factor: float = 2.0
    min_scale: float = 1.0
    max_scale: float = 2.0**24

    def init_state(self) -> LossScaleState:
        return LossScaleState(
            scale=jnp.asarray(self.init, jnp.float32),
            good_steps=jnp.zeros((), jnp.int32),
            streak=jnp.zeros((), jnp.int32),
        )

    def update(
        self, state: LossScaleState, grads_finite: jax.Array, loss_finite: jax.Array
    ) -> LossScaleState:
        overflow = loss_finite & ~grads_finite
        explained = overflow & (state.scale > self.min_scale)
        good_steps = jnp.where(grads_finite, state.good_steps + 1, 0)
        grow = good_steps >= self.growth_interval
        scale = jnp.where(grow, jnp.minimum(state.scale * self.factor, self.max_scale), state.scale)
        scale = jnp.where(overflow, jnp.maximum(scale / self.factor, self.min_scale), scale)
        streak = jnp.where(grads_finite, 0, jnp.where(explained, state.streak, state.streak + 1))
        return LossScaleState(
            scale=scale.astype(jnp.float32),
            good_steps=jnp.where(grow, 0, good_steps).astype(jnp.int32),
            streak=streak.astype(jnp.int32),
        )


def all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]
    return jnp.stack(leaves).all() if leaves else jnp.asarray(True)


def loss_scaler(mode: str, dtype: str, *, init: float, growth_interval: int):
    """The DynamicLossScale a run uses, or None. mode: auto (float16 only), dynamic, none."""
    dynamic = mode == "dynamic" or (mode == "auto" and dtype == "float16")
    if not dynamic:
        return None
    return DynamicLossScale(init=init, growth_interval=growth_interval)


def gradient_fidelity(reference: Any, grads: Any) -> dict[str, float]:
    """How far low-precision gradients are from reference (float32) ones.

    underflow: share of entries that are non-zero in the reference but exactly zero here;
    rel_error: ||grads - reference|| / ||reference||; nonfinite: whether any entry is inf/nan.
    """
    ref = jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(reference)])
    low = jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(grads)])
    nonzero = ref != 0
    underflow = jnp.sum(nonzero & (low == 0)) / jnp.maximum(jnp.sum(nonzero), 1)
    rel_error = jnp.linalg.norm(low - ref) / jnp.linalg.norm(ref)
    return {
        "underflow": float(underflow),
        "rel_error": float(rel_error),
        "nonfinite": bool(~jnp.isfinite(low).all()),
    }
