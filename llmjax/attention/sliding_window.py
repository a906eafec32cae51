"""Sliding-window (local) attention computed blockwise: O(T * window) time and memory.

Query block i (of `block` queries) reads only key blocks i - W .. i, where W = ceil((window -
1) / block), then applies the exact mask inside them, so the result equals the reference under
the same windowed mask. Keys more than W blocks back are never read: this assumes positions
grow by at least one per index along the sequence (true for causal LM inputs, packed or
left-padded), and self-attention (as many queries as keys). Lengths that are not a multiple of
the block are padded and the padding is dropped.

Decoding attends over a KV cache directly (`over_cache`): a rolling cache holds only the last
window + chunk - 1 tokens (llmjax.layers.kv_cache), so each new token costs O(window).
"""

import math

import numpy as np

from llmjax.attention.blocks import gathered_attention, pad_keys, pad_queries
from llmjax.attention.core import reference_attention, register_attention
from llmjax.attention.masks import Mask
from llmjax.attention.support import (
    UnsupportedMask,
    check_block,
    check_self_attention,
    reject,
)
from llmjax.typing import Array, Float

DEFAULT_BLOCK = 128


def window_blocks(n_blocks: int, window: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """For each query block the key blocks a causal window can reach, and which are real."""
    back = min(math.ceil((window - 1) / block), n_blocks - 1)
    idx = np.arange(n_blocks)[:, None] + np.arange(-back, 1)[None, :]
    return np.maximum(idx, 0), idx >= 0


def _check_mask(mask: Mask, alibi_slopes) -> None:
    if mask.window is None or mask.window <= 0:
        raise UnsupportedMask(
            f"attention variant 'sliding_window' needs a positive mask.window, got "
            f"{mask.window!r}; set model.attention_window (e.g. model.attention_window=256) or "
            f"use another variant"
        )
    # Key blocks are chosen by index distance, which a tree's continuations (placed after one
    # another, positions restarting after their prefix) do not keep equal to position distance.
    reject("sliding_window", mask, alibi_slopes, ["non_causal", "extra", "parents"])


@register_attention("sliding_window")
def sliding_window_attention(
    q_BxTxNxH: Float[Array, "B T N H"],
    k_BxSxKxH: Float[Array, "B S K H"],
    v_BxSxKxH: Float[Array, "B S K H"],
    mask: Mask,
    *,
    alibi_slopes: Float[Array, " N"] | None = None,
    scale: float | None = None,
    logit_softcap: float | None = None,
    block: int = DEFAULT_BLOCK,
) -> Float[Array, "B T N H"]:
    _check_mask(mask, alibi_slopes)
    check_block("sliding_window", "block", block)
    length = q_BxTxNxH.shape[1]
    check_self_attention("sliding_window", length, k_BxSxKxH.shape[1])
    block = min(block, length)
    scale = q_BxTxNxH.shape[-1] ** -0.5 if scale is None else scale
    q, padded = pad_queries(q_BxTxNxH, mask, block)
    k, v, padded = pad_keys(k_BxSxKxH, v_BxSxKxH, padded, block)
    n_blocks = q.shape[1] // block
    kv_blocks, ok = window_blocks(n_blocks, mask.window, block)
    out = gathered_attention(
        q,
        k,
        v,
        padded,
        block=block,
        rows=np.arange(n_blocks),
        kv_blocks=kv_blocks,
        kv_blocks_ok=ok,
        alibi_slopes=alibi_slopes,
        scale=scale,
        logit_softcap=logit_softcap,
    )
    return out[:, :length]


def _over_cache(
    q_BxTxNxH: Float[Array, "B T N H"],
    k_BxSxKxH: Float[Array, "B S K H"],
    v_BxSxKxH: Float[Array, "B S K H"],
    mask: Mask,
    *,
    alibi_slopes: Float[Array, " N"] | None = None,
    scale: float | None = None,
    logit_softcap: float | None = None,
) -> Float[Array, "B T N H"]:
    """New queries over a KV cache: its slots are in no particular order (a rolling cache wraps
    around), so no block structure applies; the window in the mask does the work."""
    _check_mask(mask, alibi_slopes)
    return reference_attention(
        q_BxTxNxH,
        k_BxSxKxH,
        v_BxSxKxH,
        mask,
        alibi_slopes=alibi_slopes,
        scale=scale,
        logit_softcap=logit_softcap,
    )


sliding_window_attention.over_cache = _over_cache
