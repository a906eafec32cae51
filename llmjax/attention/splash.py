"""`splash`: Pallas splash attention, the TPU kernel `auto` uses there (Pallas interpret mode
elsewhere: exact, slow, for testing on CPU).

Splash masks by index: causal (`CausalMask`), a sliding window (`LocalMask`) or no mask
(`FullMask`), ANDed with segment ids for packed documents. It serves grouped-query attention
without repeating K/V (one MQA kernel per KV head, its query heads sharing that head's keys)
and a logit soft cap. Index masks equal llmjax's position rules when the query and key
positions are the same and count up by one within each segment (a plain causal mask, or
packed documents each numbered from 0). For any other mask that `why_not` lets through, this
is checked on the device and the call takes `flash` when it fails (`jax.lax.cond`), so the
result is exact either way. It gives up (None, or `UnsupportedMask` when called by name) on
ALiBi, padding (`kv_valid`), packed trees (`q_parents`), dense extra masks, cross-attention and
lengths no block size divides.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from llmjax.attention.core import register_attention
from llmjax.attention.flash import flash_attention
from llmjax.attention.masks import Mask
from llmjax.attention.support import UnsupportedMask, reject, report
from llmjax.typing import Array, Float

# Block sizes tried, largest first (the kernel needs multiples of 128, TPU's lane count).
BLOCKS = (512, 256, 128)


def block_for(length: int) -> int | None:
    """The block size splash tiles `length` with, or None when none divides it."""
    return next((b for b in BLOCKS if length % b == 0), None)


def why_not(q_BxTxNxH, k_BxSxKxH, mask: Mask, alibi_slopes) -> str | None:
    """Why splash cannot serve this call (None: it can)."""
    T, S = q_BxTxNxH.shape[1], k_BxSxKxH.shape[1]
    if alibi_slopes is not None:
        return "ALiBi slopes"
    if mask.kv_valid is not None or mask.q_parents is not None or mask.extra is not None:
        return "padding, a packed tree or a dense extra mask"
    if T != S:
        return f"{T} queries against {S} keys (splash is self-attention)"
    if not mask.causal and mask.window is not None:
        return "a non-causal window"
    if block_for(T) is None:
        return f"length {T}, which no block size of {BLOCKS} divides"
    return None


@functools.lru_cache(maxsize=64)
def _kernel(length: int, groups: int, causal: bool, window: int | None, softcap, interpret):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    shape = (length, length)
    if window is not None:
        one = sm.LocalMask(shape, window_size=(window - 1, 0), offset=0)
    elif causal:
        one = sm.CausalMask(shape)
    else:
        one = sm.FullMask(shape)
    b = block_for(length)
    blocks = sk.BlockSizes(
        block_q=b, block_kv=b, block_kv_compute=b,
        block_q_dkv=b, block_kv_dkv=b, block_kv_dkv_compute=b,
        block_q_dq=b, block_kv_dq=b,
    )  # fmt: skip
    # Built outside any trace, so that the cached kernel holds concrete mask tables.
    with jax.ensure_compile_time_eval():
        return sk.make_splash_mqa(
            sm.MultiHeadMask([one] * groups),
            block_sizes=blocks,
            head_shards=1,
            q_seq_shards=1,
            attn_logits_soft_cap=softcap,
            interpret=interpret,
        )


def counts_up(mask: Mask) -> jax.Array:
    """Whether splash's index rules equal the mask's position rules: q and kv positions are
    equal and go up by one from token to token within each segment."""
    pos_BxT = mask.q_positions
    same = jnp.all(pos_BxT == mask.kv_positions)
    steps = pos_BxT[:, 1:] == pos_BxT[:, :-1] + 1
    if mask.q_segments is not None and mask.kv_segments is not None:
        segments = mask.q_segments
        steps |= segments[:, 1:] != segments[:, :-1]
        same &= jnp.all(segments == mask.kv_segments)
    return same & jnp.all(steps)


def splash_or_none(
    q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask: Mask, alibi_slopes, scale, logit_softcap, interpret
):
    """The exact attention output through splash, or None when splash cannot serve the call
    (`why_not`). A mask that is not plain is checked on the device (`counts_up`) and, if it
    fails, computed by `flash` instead."""
    if why_not(q_BxTxNxH, k_BxSxKxH, mask, alibi_slopes) is not None:
        return None
    args = (q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask)
    run = functools.partial(_splash, scale=scale, logit_softcap=logit_softcap, interpret=interpret)
    if mask.plain:
        return run(*args)

    def fallback(q, k, v, mask):
        return flash_attention(q, k, v, mask, scale=scale, logit_softcap=logit_softcap)

    return jax.lax.cond(counts_up(mask), run, fallback, *args)


def _splash(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask: Mask, *, scale, logit_softcap, interpret):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    B, T, N, H = q_BxTxNxH.shape
    K = k_BxSxKxH.shape[2]
    G = N // K
    kernel = _kernel(T, G, mask.causal, mask.window, logit_softcap, interpret)
    scale = H**-0.5 if scale is None else scale
    # [B, K, G, T, H]: the query heads of each KV head together (llmjax's head order).
    q = (q_BxTxNxH * scale).reshape(B, T, K, G, H).transpose(0, 2, 3, 1, 4)
    k, v = (x.transpose(0, 2, 1, 3) for x in (k_BxSxKxH, v_BxSxKxH))  # [B, K, S, H]
    segments = mask.q_segments is not None and mask.kv_segments is not None
    seg_q = mask.q_segments if segments else jnp.zeros((B, T), jnp.int32)
    seg_kv = mask.kv_segments if segments else jnp.zeros((B, T), jnp.int32)

    def one_row(q_KxGxTxH, k_KxSxH, v_KxSxH, sq, skv):
        ids = sk.SegmentIds(q=sq.astype(jnp.int32), kv=skv.astype(jnp.int32))
        per_kv_head = jax.vmap(lambda qh, kh, vh: kernel(qh, kh, vh, segment_ids=ids))
        return per_kv_head(q_KxGxTxH, k_KxSxH, v_KxSxH)

    out_BxKxGxTxH = jax.vmap(one_row)(q, k, v, seg_q, seg_kv)
    return out_BxKxGxTxH.transpose(0, 3, 1, 2, 4).reshape(B, T, N, H).astype(q_BxTxNxH.dtype)


def interpreted(
    q_BxTxNxH: Float[Array, "B T N H"],
    k_BxSxKxH: Float[Array, "B S K H"],
    v_BxSxKxH: Float[Array, "B S K H"],
    mask: Mask,
    *,
    alibi_slopes: Float[Array, " N"] | None = None,
    scale: float | None = None,
    logit_softcap: float | None = None,
) -> Float[Array, "B T N H"]:
    """Splash in Pallas interpret mode on any backend (exact and slow: for testing the TPU
    kernel on CPU); raises `UnsupportedMask` for a call splash cannot serve."""
    reject("splash", mask, alibi_slopes, ["alibi", "kv_valid", "parents", "extra"],
           "splash masks by index and segment only")  # fmt: skip
    reason = why_not(q_BxTxNxH, k_BxSxKxH, mask, alibi_slopes)
    if reason is not None:
        raise UnsupportedMask(f"attention variant 'splash' cannot serve {reason}; use 'flash'")
    return splash_or_none(
        q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask, alibi_slopes, scale, logit_softcap, True
    )


@register_attention("splash")
def splash_attention(
    q_BxTxNxH: Float[Array, "B T N H"],
    k_BxSxKxH: Float[Array, "B S K H"],
    v_BxSxKxH: Float[Array, "B S K H"],
    mask: Mask,
    *,
    alibi_slopes: Float[Array, " N"] | None = None,
    scale: float | None = None,
    logit_softcap: float | None = None,
) -> Float[Array, "B T N H"]:
    """Splash on a TPU; elsewhere, or for a call splash cannot serve, `flash` (exact), with a
    log line naming the kernel used and why."""
    backend = jax.default_backend()
    why = f"splash is a TPU kernel and this is {backend}"
    if backend == "tpu":
        why = why_not(q_BxTxNxH, k_BxSxKxH, mask, alibi_slopes)
        if why is None:
            report("splash", "requested", q_BxTxNxH, k_BxSxKxH)
            return splash_or_none(
                q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask, alibi_slopes, scale, logit_softcap, False
            )
        why = f"splash cannot serve {why}"
    report("flash", why, q_BxTxNxH, k_BxSxKxH)
    return flash_attention(
        q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask,
        alibi_slopes=alibi_slopes, scale=scale, logit_softcap=logit_softcap,
    )  # fmt: skip


# Decoding attends new queries over a KV cache (cross-attention, which splash is not).
splash_attention.over_cache = flash_attention
