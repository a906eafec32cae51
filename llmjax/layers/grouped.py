"""Grouped matmuls over rows sorted by group: row r of group g is multiplied by weight g.

A mixture of experts sorts its (token, expert) assignments by expert and runs each expert's
MLP on its rows; these layouts are how, registered by name (`model.moe.kernel`). A layout is
built once per call from the group sizes and serves every matmul of the expert MLP:

    layout = GROUPED.get(name)(group_sizes_G, rows=M, block_size=b)
    h = layout.matmul(layout.pack(x_MxK), w_GxKxN) + layout.bias(b_GxN)
    y_MxN = layout.unpack(h)

All are exact (no row is dropped or capped): they differ only in how the work is laid out.
`auto` (the default) is `cpu` on a single CPU device where llmjax's C++ kernel is available,
else `blocks`; it logs its choice once (logger `llmjax.layers`, level INFO).
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp

from llmjax import cpu_kernels
from llmjax.registry import Registry
from llmjax.typing import Array, Float, Int

GROUPED: Registry = Registry("grouped matmul kernel")
KERNEL = "grouped_matmul"
_GROUPED, _GROUPED_TN = cpu_kernels.TARGETS[KERNEL]
log = logging.getLogger("llmjax.layers")


def row_groups(group_sizes_G: Int[Array, " G"], rows: int) -> Int[Array, " M"]:
    """The group of each sorted row: rows [0, sizes[0]) are group 0, and so on."""
    ends_G = jnp.cumsum(group_sizes_G)
    return jnp.searchsorted(ends_G, jnp.arange(rows), side="right").astype(jnp.int32)


@GROUPED.register("ragged")
class Ragged:
    """`jax.lax.ragged_dot` on the sorted rows as they are: a grouped GEMM on GPU and TPU. XLA:CPU
    lowers it to a dense matmul of every row with every group's weight, masked (G times the
    work), so on CPU `Kernel` (or `Blocks`) is the fast one."""

    def __init__(self, group_sizes_G: Int[Array, " G"], *, rows: int, block_size: int = 0):
        self.group_sizes_G = group_sizes_G.astype(jnp.int32)
        self.groups_M = row_groups(group_sizes_G, rows)

    def pack(self, x_MxK: jax.Array) -> jax.Array:
        return x_MxK

    def matmul(self, h_MxK: jax.Array, w_GxKxN: jax.Array) -> jax.Array:
        return jax.lax.ragged_dot(h_MxK, w_GxKxN, self.group_sizes_G)

    def bias(self, b_GxN: jax.Array) -> jax.Array:
        return b_GxN[self.groups_M]

    def unpack(self, h_MxN: jax.Array) -> jax.Array:
        return h_MxN


@GROUPED.register("blocks")
class Blocks:
    """Each group padded to a multiple of `block_size` rows, so every block of rows belongs to
    one group: one batched matmul of the blocks with their groups' weights ('jbk,jkn->jbn',
    the weights gathered per block), as MegaBlocks lays out a dropless MoE. The block count is
    a static bound (rows / b + groups), so shapes do not depend on the routing; padding rows
    are zeros and never read back. Costs at most (groups - 1) * (b - 1) padded rows."""

    def __init__(self, group_sizes_G: Int[Array, " G"], *, rows: int, block_size: int = 64):
        n_groups = group_sizes_G.shape[0]
        b = max(1, min(block_size, rows))
        # sum_g ceil(n_g / b) <= (M + nonempty * (b - 1)) / b, at most min(G, M) nonempty.
        self.n_blocks = (rows + min(n_groups, rows) * (b - 1)) // b
        self.b = b
        sizes_G = group_sizes_G.astype(jnp.int32)
        padded_G = (sizes_G + b - 1) // b * b
        starts_G = jnp.cumsum(sizes_G) - sizes_G
        padded_starts_G = jnp.cumsum(padded_G) - padded_G
        groups_M = row_groups(sizes_G, rows)
        rank_M = jnp.arange(rows, dtype=jnp.int32) - starts_G[groups_M]
        self.dest_M = padded_starts_G[groups_M] + rank_M  # each row's slot among the blocks
        block_ends_G = jnp.cumsum(padded_G) // b
        blocks = jnp.arange(self.n_blocks)
        # Blocks past the last group's are padding; any valid group serves them.
        self.groups_J = jnp.minimum(
            jnp.searchsorted(block_ends_G, blocks, side="right"), n_groups - 1
        ).astype(jnp.int32)

    def pack(self, x_MxK: jax.Array) -> Float[Array, "J b K"]:
        padded = jnp.zeros((self.n_blocks * self.b, x_MxK.shape[-1]), x_MxK.dtype)
        padded = padded.at[self.dest_M].set(x_MxK, unique_indices=True)
        return padded.reshape(self.n_blocks, self.b, -1)

    def matmul(self, h_JxbxK: jax.Array, w_GxKxN: jax.Array) -> jax.Array:
        return jnp.einsum("jbk,jkn->jbn", h_JxbxK, w_GxKxN[self.groups_J])

    def bias(self, b_GxN: jax.Array) -> jax.Array:
        return b_GxN[self.groups_J][:, None, :]

    def unpack(self, h_JxbxN: jax.Array) -> jax.Array:
        return h_JxbxN.reshape(self.n_blocks * self.b, -1)[self.dest_M]


def _lanes(n: int) -> int:
    """n rounded up to the kernel's multiple of 16."""
    return -(-n // 16) * 16


def _call(target: str, shape: tuple[int, ...], *args: jax.Array) -> jax.Array:
    """The kernel's `target` on `args`, returning float32 of `shape`."""
    cpu_kernels.require(KERNEL)
    out = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.ffi.ffi_call(target, out, vmap_method="sequential")(*args)


def _grouped(x_MxK, w_GxKxN, sizes_G):
    return _call(_GROUPED, (x_MxK.shape[0], w_GxKxN.shape[2]), x_MxK, w_GxKxN, sizes_G)


@jax.custom_vjp
def grouped_matmul(x_MxK: jax.Array, w_GxKxN: jax.Array, sizes_G: jax.Array) -> jax.Array:
    """y[rows of g] = x[rows of g] w[g], float32, by llmjax's C++ kernel (K and N multiples of
    16): group g owns the sizes[g] rows after the earlier groups'; rows past their total are 0."""
    return _grouped(x_MxK, w_GxKxN, sizes_G)


def _grouped_fwd(x_MxK, w_GxKxN, sizes_G):
    return _grouped(x_MxK, w_GxKxN, sizes_G), (x_MxK, w_GxKxN, sizes_G)


def _grouped_bwd(residuals, dy_MxN):
    x_MxK, w_GxKxN, sizes_G = residuals
    dy_MxN = dy_MxN.astype(jnp.float32)
    dx_MxK = _grouped(dy_MxN, jnp.swapaxes(w_GxKxN, 1, 2), sizes_G)
    dw_GxKxN = _call(_GROUPED_TN, w_GxKxN.shape, x_MxK, dy_MxN, sizes_G)
    return dx_MxK, dw_GxKxN, None


grouped_matmul.defvjp(_grouped_fwd, _grouped_bwd)


@GROUPED.register("cpu")
class Kernel(Ragged):
    """The sorted rows as they are (packed, biased and unpacked as `Ragged` does), each
    group's rows times its weight by llmjax's C++ kernel (llmjax/cpu_kernels/grouped_matmul.cc):
    no padded rows and no gathered weights, forward and backward. Computed in float32 (other
    dtypes are cast back); widths that are not multiples of 16 are zero-padded to one. One CPU
    device (the call has no sharding rule)."""

    def matmul(self, h_MxK: jax.Array, w_GxKxN: jax.Array) -> jax.Array:
        K, N = h_MxK.shape[1], w_GxKxN.shape[2]
        h, w = h_MxK.astype(jnp.float32), w_GxKxN.astype(jnp.float32)
        if _lanes(K) != K or _lanes(N) != N:
            h = jnp.pad(h, ((0, 0), (0, _lanes(K) - K)))
            w = jnp.pad(w, ((0, 0), (0, _lanes(K) - K), (0, _lanes(N) - N)))
        return grouped_matmul(h, w, self.group_sizes_G)[:, :N].astype(h_MxK.dtype)


def kernel_unavailable() -> str | None:
    """Why `auto` does not use the C++ kernel here (a phrase), or None when it does."""
    return cpu_kernels.unserved(KERNEL)


@GROUPED.register("auto")
def auto(group_sizes_G: Int[Array, " G"], *, rows: int, block_size: int = 64):
    """`cpu` where the kernel serves (one CPU device, kernel built), else `blocks`."""
    why = kernel_unavailable()
    _report("blocks" if why else "cpu", why or "one CPU device")
    layout = Blocks if why else Kernel
    return layout(group_sizes_G, rows=rows, block_size=block_size)


@functools.cache
def _report(kernel: str, why: str) -> None:
    log.info("mixture of experts: grouped matmuls by %s (%s)", kernel, why)
