"""Attention masks described by positions and segments, not by dense T x S arrays.

A structured mask lets every attention variant build only the blocks it needs (a blockwise
kernel never materializes T x S), while `Mask.dense()` gives the reference its boolean matrix.
"""

from __future__ import annotations

import flax.struct
import jax.numpy as jnp

from llmjax.typing import Array, Bool, Int


@flax.struct.dataclass
class Mask:
    """Which keys each query may see.

    Query t sees key s when all hold: kv_pos[s] <= q_pos[t] (causal); q_pos[t] - kv_pos[s] <
    window (sliding window); q_seg[t] == kv_seg[s] or q_parent[t] == kv_seg[s] (packed
    documents); kv_valid[s] (padding or unwritten cache slots); extra[t, s] (an optional dense
    pattern, e.g. a block-sparse layout).

    `q_parents` (with segments) packs a tree: several continuations of one prefix share a
    single copy of it. The prefix is a segment of its own, each continuation another whose
    tokens name the prefix's segment as their parent and take positions after it; a prefix
    token's parent is its own segment. Every continuation then sees the prefix and itself only,
    exactly as if it followed its own copy of the prefix.
    """

    q_positions: Int[Array, "B T"]
    kv_positions: Int[Array, "B S"]
    q_segments: Int[Array, "B T"] | None = None
    kv_segments: Int[Array, "B S"] | None = None
    q_parents: Int[Array, "B T"] | None = None
    kv_valid: Bool[Array, "B S"] | None = None
    # A dense pattern ANDed with the rules above, for sparsity no position rule can express.
    # It costs T x S memory, so the fast paths avoid it; most variants reject it by name.
    extra: Bool[Array, "B T S"] | None = None
    causal: bool = flax.struct.field(pytree_node=False, default=True)
    window: int | None = flax.struct.field(pytree_node=False, default=None)
    # True when q and kv positions are both 0..T-1 with no segments or padding: the plain lower
    # triangle, which fused kernels (cuDNN's is_causal) can apply without reading any mask.
    plain: bool = flax.struct.field(pytree_node=False, default=False)

    @classmethod
    def causal_lm(
        cls,
        positions_BxT: Int[Array, "B T"],
        segments_BxT: Int[Array, "B T"] | None = None,
        *,
        parents_BxT: Int[Array, "B T"] | None = None,
        window: int | None = None,
        plain: bool = False,
    ) -> Mask:
        """Self-attention mask of a causal LM over one sequence of tokens (`parents_BxT`: a
        tree of packed prefixes and continuations, see the class docstring)."""
        if parents_BxT is not None and segments_BxT is None:
            raise ValueError("parents name segments: give segments_BxT with parents_BxT")
        return cls(
            q_positions=positions_BxT,
            kv_positions=positions_BxT,
            q_segments=segments_BxT,
            kv_segments=segments_BxT,
            q_parents=parents_BxT,
            causal=True,
            window=window,
            plain=plain and segments_BxT is None,
        )

    def dense(self) -> Bool[Array, "B T S"]:
        segments = self.q_segments is not None and self.kv_segments is not None
        visible = visible_pairs(
            self.q_positions,
            self.kv_positions,
            self.q_segments if segments else None,
            self.kv_segments if segments else None,
            self.kv_valid,
            q_par=self.q_parents if segments else None,
            causal=self.causal,
            window=self.window,
        )
        if self.extra is not None:
            visible &= self.extra
        return visible

    def distance(self) -> Int[Array, "B T S"]:
        """kv_pos - q_pos: the (non-positive, when causal) offset ALiBi scales per head."""
        return self.kv_positions[:, None, :] - self.q_positions[:, :, None]


def visible_pairs(
    q_pos: Int[Array, "*b T"],
    kv_pos: Int[Array, "*b S"],
    q_seg: Int[Array, "*b T"] | None = None,
    kv_seg: Int[Array, "*b S"] | None = None,
    kv_valid: Bool[Array, "*b S"] | None = None,
    *,
    causal: bool,
    window: int | None,
    q_par: Int[Array, "*b T"] | None = None,
) -> Bool[Array, "*b T S"]:
    """The `Mask` rule but `extra`, over any leading dims (blockwise kernels use it per block)."""
    q_xTx1 = q_pos[..., :, None]
    k_x1xS = kv_pos[..., None, :]
    visible = jnp.ones(jnp.broadcast_shapes(q_xTx1.shape, k_x1xS.shape), bool)
    if causal:
        visible &= k_x1xS <= q_xTx1
    if window is not None:
        visible &= q_xTx1 - k_x1xS < window
    if q_seg is not None and kv_seg is not None:
        same = q_seg[..., :, None] == kv_seg[..., None, :]
        if q_par is not None:
            same |= q_par[..., :, None] == kv_seg[..., None, :]
        visible &= same
    if kv_valid is not None:
        visible &= kv_valid[..., None, :]
    return visible
