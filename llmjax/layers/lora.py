"""Low-rank adapters (LoRA) on projection kernels: y = x W + (alpha / r) dropout(x) A B.

A projection calls `project` instead of `contract`. When the kernel's param path matches
`model.lora.targets`, two params join it: A (the kernel's input axes, r), initialized like
torch's Linear (uniform in +-1/sqrt(fan_in)), and B (r, the kernel's output axes), zero, so new
adapters leave the model's function unchanged. A keeps the kernel's input logical axes and B
its output axes, so adapters shard as their base weight does; the rank axis is replicated.

The adapter path is two thin matmuls: when W is frozen, the backward pass never forms W's
(d_in x d_out) gradient, only A's and B's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from functools import lru_cache

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmjax.layers.common import contract, param

# The param-path suffix of every adapter param; `train.trainable` defaults to it under LoRA.
LORA_PARAMS = r"lora_[ab]$"
# What a base model lacks and a run on top of it adds: LoRA adapters and the scalar value head
# (model.value_head). With LoRA they alone train, and an adapter-only checkpoint holds them.
ADDED_PARAMS = rf"{LORA_PARAMS}|^value_head/"


def adapter_names(kernel: str) -> tuple[str, str]:
    """The names of the A and B params beside a kernel: query_kernel -> query_lora_a, ...;
    a Linear's plain `kernel` -> lora_a, lora_b."""
    stem = kernel.removesuffix("kernel")
    return f"{stem}lora_a", f"{stem}lora_b"


@lru_cache(maxsize=64)
def _pattern(targets: str) -> re.Pattern:
    return re.compile(targets)


def is_target(module: nn.Module, kernel: str, cfg) -> bool:
    """Whether the kernel `kernel` of `module` gets adapters under cfg.lora."""
    if not cfg.lora.rank:
        return False
    path = "/".join((*module.path, kernel))
    return _pattern(cfg.lora.targets).search(path) is not None


def project(
    module: nn.Module,
    kernel: str,
    x: jax.Array,
    w: jax.Array,
    *,
    dims: int,
    axes: Sequence[str | None],
    cfg,
) -> jax.Array:
    """contract(x, w, dims), plus the adapters' low-rank update when `kernel` is a target.

    `x` and `w` are already in the compute dtype; `axes` are the kernel's logical axes.
    """
    y = contract(x, w, dims)
    if not is_target(module, kernel, cfg):
        return y
    lora = cfg.lora
    in_shape, out_shape = w.shape[:dims], w.shape[dims:]
    fan_in = math.prod(in_shape)
    name_a, name_b = adapter_names(kernel)
    a = param(
        module,
        name_a,
        (*in_shape, lora.rank),
        (*axes[:dims], None),
        _uniform(1.0 / math.sqrt(fan_in)),
        cfg.param_dtype,
    )
    b = param(
        module,
        name_b,
        (lora.rank, *out_shape),
        (None, *axes[dims:]),
        nn.initializers.zeros,
        cfg.param_dtype,
    )
    h = x
    # Dropout only where a dropout key is given: training steps give one, evaluation and
    # decoding do not.
    if lora.dropout and module.has_rng("dropout") and not module.is_initializing():
        h = nn.Dropout(lora.dropout, deterministic=False, name=f"{name_a}_dropout")(h)
    update = contract(contract(h, a.astype(x.dtype), dims), b.astype(x.dtype))
    return y + jnp.asarray(lora.scale, x.dtype) * update


def _uniform(bound: float) -> jax.nn.initializers.Initializer:
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init
