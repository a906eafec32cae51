"""Block-sparse attention: local blocks plus global and strided blocks (Longformer/BigBird style).

The sequence is cut into blocks of `block` tokens. Query block i sees key block j when
  local:   |i - j| < local_blocks          (its own block and neighbours),
  global:  j < global_blocks or i < global_blocks  (the first blocks see and are seen by all),
  strided: stride and (i - j) % stride == 0 (every stride-th block, Sparse Transformer style),
and then the usual mask (causal, segments, padding, ALiBi) applies inside visible blocks.
`block_sparse_mask` gives the same pattern as a dense boolean, so the reference run with
`Mask(..., extra=block_sparse_mask(...))` is this variant's exact definition. With a bounded
number of visible blocks per row (no stride) cost is O(T); a stride adds O(T^2 / stride).

Under a causal mask key blocks after the query block are skipped, which assumes positions do not
decrease along the sequence. Lengths that are not a multiple of the block are padded.

Decoding over a KV cache (`over_cache`) takes a token's block from its position (position //
block), which is its index in the sequence for rows that start at position 0 with no padding
before them; the pattern then becomes a mask over the cache (O(cache length) per new token).
"""

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from llmjax.attention.blocks import gathered_attention, pad_keys, pad_queries
from llmjax.attention.core import reference_attention, register_attention
from llmjax.attention.masks import Mask
from llmjax.attention.support import check_block, check_self_attention, reject
from llmjax.typing import Array, Bool, Float


@dataclass(frozen=True)
class BlockSparsePattern:
    """Which key blocks each query block sees; see the module docstring."""

    block: int = 64
    local_blocks: int = 2
    global_blocks: int = 1
    stride: int | None = None

    def __post_init__(self):
        check_block("block_sparse", "block", self.block)
        check_block("block_sparse", "local_blocks", self.local_blocks)
        if self.global_blocks < 0:
            raise ValueError(
                f"block_sparse attention: global_blocks must be >= 0, got {self.global_blocks}"
            )
        if self.stride is not None:
            check_block("block_sparse", "stride", self.stride)

    def visible(self, i, j, causal: bool):
        """Whether query block i sees key block j (NumPy or JAX integer arrays, broadcast)."""
        seen = (abs(i - j) < self.local_blocks) | (j < self.global_blocks)
        seen |= i < self.global_blocks
        if self.stride is not None:
            seen |= (i - j) % self.stride == 0
        if causal:
            seen &= j <= i
        return seen

    def layout(self, n_q_blocks: int, n_kv_blocks: int, causal: bool) -> Bool[np.ndarray, "I J"]:
        return self.visible(np.arange(n_q_blocks)[:, None], np.arange(n_kv_blocks)[None, :], causal)


def block_sparse_mask(
    q_len: int, kv_len: int, pattern: BlockSparsePattern, *, causal: bool = True
) -> Bool[np.ndarray, "T S"]:
    """The pattern as a dense [T, S] boolean (for Mask.extra and tests)."""
    n_q, n_kv = -(-q_len // pattern.block), -(-kv_len // pattern.block)
    layout = pattern.layout(n_q, n_kv, causal)
    q_block = np.arange(q_len) // pattern.block
    kv_block = np.arange(kv_len) // pattern.block
    return layout[q_block[:, None], kv_block[None, :]]


def _ragged_rows(layout: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Visible key-block lists of `rows`, padded to the longest (ok marks real entries)."""
    lists = [np.flatnonzero(layout[r]) for r in rows]
    width = max(1, max(len(x) for x in lists))
    idx = np.zeros((len(rows), width), np.int64)
    ok = np.zeros((len(rows), width), bool)
    for r, cols in enumerate(lists):
        idx[r, : len(cols)], ok[r, : len(cols)] = cols, True
    return idx, ok


def make_block_sparse(pattern: BlockSparsePattern):
    """An attention variant (reference signature) for one sparsity pattern."""

    def block_sparse_attention(
        q_BxTxNxH: Float[Array, "B T N H"],
        k_BxSxKxH: Float[Array, "B S K H"],
        v_BxSxKxH: Float[Array, "B S K H"],
        mask: Mask,
        *,
        alibi_slopes: Float[Array, " N"] | None = None,
        scale: float | None = None,
        logit_softcap: float | None = None,
    ) -> Float[Array, "B T N H"]:
        reject(
            "block_sparse", mask, alibi_slopes, ["extra"], "its pattern is the extra mask itself"
        )
        length = q_BxTxNxH.shape[1]
        check_self_attention("block_sparse", length, k_BxSxKxH.shape[1])
        block = pattern.block
        scale = q_BxTxNxH.shape[-1] ** -0.5 if scale is None else scale
        q, padded = pad_queries(q_BxTxNxH, mask, block)
        k, v, padded = pad_keys(k_BxSxKxH, v_BxSxKxH, padded, block)
        n_blocks = q.shape[1] // block
        layout = pattern.layout(n_blocks, n_blocks, mask.causal)
        # Global query rows see every block; keep them out of the others' ragged lists so the
        # sparse rows stay short (without a causal mask they would make every list full length).
        n_global = min(pattern.global_blocks, n_blocks)
        groups = [np.arange(n_global), np.arange(n_global, n_blocks)]
        outs = []
        for rows in groups:
            if len(rows):
                kv_blocks, ok = _ragged_rows(layout, rows)
                outs.append(
                    gathered_attention(
                        q,
                        k,
                        v,
                        padded,
                        block=block,
                        rows=rows,
                        kv_blocks=kv_blocks,
                        kv_blocks_ok=ok,
                        alibi_slopes=alibi_slopes,
                        scale=scale,
                        logit_softcap=logit_softcap,
                    )
                )
        return jnp.concatenate(outs, axis=1)[:, :length]

    def over_cache(
        q_BxTxNxH: Float[Array, "B T N H"],
        k_BxSxKxH: Float[Array, "B S K H"],
        v_BxSxKxH: Float[Array, "B S K H"],
        mask: Mask,
        *,
        alibi_slopes: Float[Array, " N"] | None = None,
        scale: float | None = None,
        logit_softcap: float | None = None,
    ) -> Float[Array, "B T N H"]:
        reject(
            "block_sparse", mask, alibi_slopes, ["extra"], "its pattern is the extra mask itself"
        )
        q_block_BxTx1 = (mask.q_positions // pattern.block)[:, :, None]
        kv_block_Bx1xS = (mask.kv_positions // pattern.block)[:, None, :]
        extra = pattern.visible(q_block_BxTx1, kv_block_Bx1xS, mask.causal)
        return reference_attention(
            q_BxTxNxH,
            k_BxSxKxH,
            v_BxSxKxH,
            mask.replace(extra=extra),
            alibi_slopes=alibi_slopes,
            scale=scale,
            logit_softcap=logit_softcap,
        )

    block_sparse_attention.pattern = pattern
    block_sparse_attention.over_cache = over_cache
    return block_sparse_attention


DEFAULT_PATTERN = BlockSparsePattern()
register_attention("block_sparse")(make_block_sparse(DEFAULT_PATTERN))

__all__ = ["DEFAULT_PATTERN", "BlockSparsePattern", "block_sparse_mask", "make_block_sparse"]
