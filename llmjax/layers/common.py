"""Small helpers shared by layers: dtypes, initializers, logically partitioned params."""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def dtype_of(name: str) -> jnp.dtype:
    return jnp.dtype(name)


def param(
    module: nn.Module,
    name: str,
    shape: Sequence[int],
    axes: Sequence[str | None],
    init: jax.nn.initializers.Initializer,
    dtype: str,
) -> jax.Array:
    """Declares a parameter whose dimensions carry logical axis names (see sharding.py)."""
    return module.param(
        name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape), dtype_of(dtype)
    )


def normal(std: float) -> jax.nn.initializers.Initializer:
    return nn.initializers.normal(stddev=std)


def out_std(cfg) -> float:
    """Std of projections that write into the residual stream (GPT-2's scaled init)."""
    if cfg.scaled_residual_init:
        return cfg.init_std / (2 * cfg.n_layers) ** 0.5
    return cfg.init_std


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Names an activation's logical axes; a no-op without a mesh and rules."""
    return nn.with_logical_constraint(x, tuple(axes))


def contract(x: jax.Array, w: jax.Array, dims: int = 1) -> jax.Array:
    """Contracts the last `dims` axes of x with the first `dims` axes of w, as one 2-D matmul.

    Same result as the einsum, but folding batch and length into one row axis keeps every
    gradient a plain matmul too; XLA:CPU runs the weight gradient of a 3-D einsum (two
    contracting axes) about 2x slower than its 2-D equivalent.
    """
    lead, inner = x.shape[: x.ndim - dims], x.shape[x.ndim - dims :]
    out = w.shape[dims:]
    k = math.prod(inner)
    y = jnp.dot(x.reshape(-1, k), w.reshape(k, -1))
    return y.reshape(*lead, *out)
