"""Shared pieces of the blockwise kernels: padding to a block multiple and attention over
gathered key blocks.

A sequence whose length is not a multiple of the block is padded: padded keys are marked
invalid (never seen), padded queries repeat the last position and their outputs are dropped.
"""

import einops
import jax
import jax.numpy as jnp
import numpy as np

from llmjax.attention.core import MASKED_LOGIT, softcap
from llmjax.attention.masks import Mask, visible_pairs
from llmjax.typing import Array, Bool, Float, Int


def _pad_axis1(x: jax.Array | None, extra: int, **kwargs) -> jax.Array | None:
    if x is None or extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, extra)
    return jnp.pad(x, widths, **kwargs)


def pad_queries(q_BxTxNxH: jax.Array, mask: Mask, multiple: int) -> tuple[jax.Array, Mask]:
    """Pads the query axis to a multiple; padded rows repeat the last position, segment and
    parent."""
    extra = -q_BxTxNxH.shape[1] % multiple
    if extra == 0:
        return q_BxTxNxH, mask
    mask = mask.replace(
        q_positions=_pad_axis1(mask.q_positions, extra, mode="edge"),
        q_segments=_pad_axis1(mask.q_segments, extra, mode="edge"),
        q_parents=_pad_axis1(mask.q_parents, extra, mode="edge"),
        extra=_pad_axis1(mask.extra, extra),
    )
    return _pad_axis1(q_BxTxNxH, extra), mask


def pad_keys(
    k_BxSxKxH: jax.Array, v_BxSxKxH: jax.Array, mask: Mask, multiple: int
) -> tuple[jax.Array, jax.Array, Mask]:
    """Pads the key axis to a multiple; padded keys are invalid, so no query ever sees them."""
    batch, length = k_BxSxKxH.shape[:2]
    extra = -length % multiple
    if extra == 0:
        return k_BxSxKxH, v_BxSxKxH, mask
    valid = jnp.ones((batch, length), bool) if mask.kv_valid is None else mask.kv_valid
    padded_extra = None
    if mask.extra is not None:
        padded_extra = jnp.pad(mask.extra, [(0, 0), (0, 0), (0, extra)])
    mask = mask.replace(
        kv_positions=_pad_axis1(mask.kv_positions, extra, mode="edge"),
        kv_segments=_pad_axis1(mask.kv_segments, extra, mode="edge"),
        kv_valid=_pad_axis1(valid, extra, constant_values=False),
        extra=padded_extra,
    )
    return _pad_axis1(k_BxSxKxH, extra), _pad_axis1(v_BxSxKxH, extra), mask


def _gather(x_BxSx: jax.Array, block: int, idx_RxM: np.ndarray) -> jax.Array:
    """x[B, S, ...] -> [B, R, M * block, ...]: for each row r the key blocks idx[r]."""
    blocks = x_BxSx.reshape(x_BxSx.shape[0], -1, block, *x_BxSx.shape[2:])
    picked = blocks[:, idx_RxM]  # B R M block ...
    return picked.reshape(*picked.shape[:2], -1, *picked.shape[4:])


def gathered_attention(
    q_BxTxNxH: Float[Array, "B T N H"],
    k_BxSxKxH: Float[Array, "B S K H"],
    v_BxSxKxH: Float[Array, "B S K H"],
    mask: Mask,
    *,
    block: int,
    rows: np.ndarray,
    kv_blocks: Int[np.ndarray, "R M"],
    kv_blocks_ok: Bool[np.ndarray, "R M"],
    alibi_slopes: Float[Array, " N"] | None,
    scale: float,
    logit_softcap: float | None = None,
) -> Float[Array, "B L N H"]:
    """Query blocks `rows` each attend to their own list of key blocks (exact softmax over them).

    Lengths must already be multiples of `block`; `kv_blocks_ok` marks list entries that are
    real (False entries are padding of the ragged lists and are never seen). Returns the
    len(rows) * block query rows in order. Cost and memory are O(rows * block * M * block):
    linear in length when M is bounded.
    """
    n_kv = k_BxSxKxH.shape[2]
    idx = np.where(kv_blocks_ok, kv_blocks, 0)
    q_BxRxQxNxH = q_BxTxNxH.reshape(q_BxTxNxH.shape[0], -1, block, *q_BxTxNxH.shape[2:])[:, rows]
    q_BxRxQxKxGxH = einops.rearrange(q_BxRxQxNxH, "B R Q (K G) H -> B R Q K G H", K=n_kv)
    k_BxRxLxKxH = _gather(k_BxSxKxH, block, idx)
    v_BxRxLxKxH = _gather(v_BxSxKxH, block, idx)

    def q_side(x_BxT):
        return None if x_BxT is None else x_BxT.reshape(x_BxT.shape[0], -1, block)[:, rows]

    def kv_side(x_BxS):
        return None if x_BxS is None else _gather(x_BxS, block, idx)

    segments = mask.q_segments is not None and mask.kv_segments is not None
    slot_ok_RxL = np.repeat(kv_blocks_ok, block, axis=1)
    kv_valid = jnp.asarray(slot_ok_RxL)[None]
    if mask.kv_valid is not None:
        kv_valid = kv_valid & kv_side(mask.kv_valid)
    q_pos_BxRxQ, kv_pos_BxRxL = q_side(mask.q_positions), kv_side(mask.kv_positions)
    visible_BxRxQxL = visible_pairs(
        q_pos_BxRxQ,
        kv_pos_BxRxL,
        q_side(mask.q_segments) if segments else None,
        kv_side(mask.kv_segments) if segments else None,
        kv_valid,
        causal=mask.causal,
        window=mask.window,
        q_par=q_side(mask.q_parents) if segments else None,
    )
    logits = jnp.einsum(
        "BRQKGH,BRLKH->BRKGQL", q_BxRxQxKxGxH, k_BxRxLxKxH, preferred_element_type=jnp.float32
    ) * jnp.float32(scale)
    if logit_softcap is not None:
        logits = softcap(logits, logit_softcap)
    if alibi_slopes is not None:
        dist_BxRxQxL = (kv_pos_BxRxL[:, :, None, :] - q_pos_BxRxQ[..., None]).astype(jnp.float32)
        slopes_KxG = jnp.asarray(alibi_slopes, jnp.float32).reshape(n_kv, -1)
        logits += slopes_KxG[None, None, :, :, None, None] * dist_BxRxQxL[:, :, None, None]
    logits = jnp.where(visible_BxRxQxL[:, :, None, None], logits, MASKED_LOGIT)
    probs = jax.nn.softmax(logits, axis=-1).astype(v_BxSxKxH.dtype)
    out = jnp.einsum("BRKGQL,BRLKH->BRQKGH", probs, v_BxRxLxKxH)
    return einops.rearrange(out, "B R Q K G H -> B (R Q) (K G) H")
