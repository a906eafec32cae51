"""Exact memory-efficient attention (FlashAttention-2 style) with a hand-written backward.

Queries are processed in blocks; for each, key blocks stream through an online softmax (running
max m, normalizer l, accumulator), so no T x S array ever exists. The mask of each block pair is
built on the fly from positions, segments and validity (`visible_pairs`); block pairs that no
query/key pair can see (from per-block min/max of positions and segments) are skipped. The
custom VJP saves only q, k, v, the output and the log-sum-exp per row, and recomputes each
block's probabilities in the backward: memory O(T) in both passes (autodiff through the loops
would store every block's probabilities). Lengths that are not a multiple of the block are
padded and the padding dropped. A logit soft cap is applied per block as the reference applies
it, and the backward multiplies the q.k gradient by its derivative, 1 - tanh^2.
"""

from dataclasses import dataclass
from functools import partial

import einops
import jax
import jax.numpy as jnp
from jax import lax

from llmjax.attention.blocks import pad_keys, pad_queries
from llmjax.attention.core import MASKED_LOGIT, register_attention, softcap
from llmjax.attention.masks import Mask, visible_pairs
from llmjax.attention.support import check_block
from llmjax.typing import Array, Bool, Float

DEFAULT_BLOCK = 256
_BIG = 2**30  # beyond any position or segment id


@dataclass(frozen=True)
class _Static:
    causal: bool
    window: int | None
    scale: float
    block_q: int
    block_kv: int
    softcap: float | None = None


# ----------------------------------------------------------------------------- block pairs


def _span(x_BxT: jax.Array, valid_BxT: jax.Array, block: int) -> tuple[jax.Array, jax.Array]:
    """Per block, min and max of x over valid entries and over the batch (empty: BIG, -BIG)."""
    x = x_BxT.reshape(x_BxT.shape[0], -1, block)
    ok = valid_BxT.reshape(x.shape)
    low = jnp.where(ok, x, _BIG).min(axis=(0, 2))
    high = jnp.where(ok, x, -_BIG).max(axis=(0, 2))
    return low, high


def block_pairs(mask: Mask, st: _Static) -> Bool[Array, "I J"]:
    """Whether query block i and key block j can have any visible pair (conservative)."""
    batch, t = mask.q_positions.shape
    s = mask.kv_positions.shape[1]
    q_ok = jnp.ones((batch, t), bool)
    kv_ok = jnp.ones((batch, s), bool) if mask.kv_valid is None else mask.kv_valid
    q_lo, q_hi = _span(mask.q_positions, q_ok, st.block_q)
    k_lo, k_hi = _span(mask.kv_positions, kv_ok, st.block_kv)
    seen = (k_lo <= k_hi)[None, :] & jnp.ones((t // st.block_q, 1), bool)  # any valid key
    if st.causal:
        seen &= k_lo[None, :] <= q_hi[:, None]
    if st.window is not None:
        seen &= q_lo[:, None] - k_hi[None, :] < st.window
    if mask.q_segments is not None and mask.kv_segments is not None:
        qs_lo, qs_hi = _span(mask.q_segments, q_ok, st.block_q)
        if mask.q_parents is not None:  # a query also sees its parent segment's keys
            qp_lo, qp_hi = _span(mask.q_parents, q_ok, st.block_q)
            qs_lo, qs_hi = jnp.minimum(qs_lo, qp_lo), jnp.maximum(qs_hi, qp_hi)
        ks_lo, ks_hi = _span(mask.kv_segments, kv_ok, st.block_kv)
        seen &= (qs_lo[:, None] <= ks_hi[None, :]) & (ks_lo[None, :] <= qs_hi[:, None])
    if mask.extra is not None:
        blocks = mask.extra.reshape(batch, t // st.block_q, st.block_q, -1, st.block_kv)
        seen &= blocks.any(axis=(0, 2, 4))
    return seen


def _first_last(seen_IxJ: jax.Array) -> tuple[jax.Array, jax.Array]:
    """First and one-past-last True column per row (an empty row gives an empty range)."""
    n = seen_IxJ.shape[1]
    first = jnp.argmax(seen_IxJ, axis=1)
    stop = n - jnp.argmax(seen_IxJ[:, ::-1], axis=1)
    return first, jnp.where(seen_IxJ.any(axis=1), stop, first)


# ----------------------------------------------------------------------------- one block pair


def _slice(x: jax.Array | None, start, size: int, axis: int = 1) -> jax.Array | None:
    return None if x is None else lax.dynamic_slice_in_dim(x, start, size, axis)


def _block_mask(st: _Static, mask: Mask, i, j):
    """Visibility [B 1 1 Q S] of query block i against key block j, and kv_pos - q_pos [B Q S]."""
    q0, k0 = i * st.block_q, j * st.block_kv
    q_pos = _slice(mask.q_positions, q0, st.block_q)
    kv_pos = _slice(mask.kv_positions, k0, st.block_kv)
    segments = mask.q_segments is not None and mask.kv_segments is not None
    visible_BxQxS = visible_pairs(
        q_pos,
        kv_pos,
        _slice(mask.q_segments, q0, st.block_q) if segments else None,
        _slice(mask.kv_segments, k0, st.block_kv) if segments else None,
        _slice(mask.kv_valid, k0, st.block_kv),
        causal=st.causal,
        window=st.window,
        q_par=_slice(mask.q_parents, q0, st.block_q) if segments else None,
    )
    if mask.extra is not None:
        visible_BxQxS &= _slice(_slice(mask.extra, q0, st.block_q), k0, st.block_kv, axis=2)
    dist_BxQxS = (kv_pos[:, None, :] - q_pos[:, :, None]).astype(jnp.float32)
    return visible_BxQxS[:, None, None], dist_BxQxS


def _logits(st: _Static, q_i, k_j, visible, dist_BxQxS, slopes_KxG):
    """Masked float32 logits [B K G Q S], computed as the reference does, and with a soft cap
    d(capped)/d(q.k logits) = 1 - tanh^2 (None without one)."""
    s = jnp.einsum("BQKGH,BSKH->BKGQS", q_i, k_j, preferred_element_type=jnp.float32)
    s = s * jnp.float32(st.scale)
    dcap = None
    if st.softcap is not None:
        s = softcap(s, st.softcap)
        dcap = 1.0 - jnp.square(s / jnp.float32(st.softcap))
    if slopes_KxG is not None:
        s = s + slopes_KxG[None, :, :, None, None] * dist_BxQxS[:, None, None]
    return jnp.where(visible, s, MASKED_LOGIT), dcap


def _q_block(st: _Static, x_BxTxKxGxH, i):
    return lax.dynamic_slice_in_dim(x_BxTxKxGxH, i * st.block_q, st.block_q, 1)


def _kv_block(st: _Static, x_BxSxKxH, j):
    return lax.dynamic_slice_in_dim(x_BxSxKxH, j * st.block_kv, st.block_kv, 1)


# ----------------------------------------------------------------------------- forward


def _forward(st: _Static, q, k, v, mask, slopes_KxG, seen_IxJ):
    """Output [B T K G H] and log-sum-exp [B K G T] by an online softmax over key blocks."""
    batch, t, n_kv, g, h = q.shape
    first, stop = _first_last(seen_IxJ)

    def query_block(i):
        q_i = _q_block(st, q, i)

        def visit(j, carry):
            def compute(carry):
                m, denom, acc = carry
                visible, dist = _block_mask(st, mask, i, j)
                s, _ = _logits(st, q_i, _kv_block(st, k, j), visible, dist, slopes_KxG)
                m_new = jnp.maximum(m, s.max(-1))
                p = jnp.where(visible, jnp.exp(s - m_new[..., None]), 0.0)
                correction = jnp.exp(m - m_new)
                pv = jnp.einsum(
                    "BKGQS,BSKH->BKGQH",
                    p.astype(v.dtype),
                    _kv_block(st, v, j),
                    preferred_element_type=jnp.float32,
                )
                return m_new, denom * correction + p.sum(-1), acc * correction[..., None] + pv

            return lax.cond(seen_IxJ[i, j], compute, lambda c: c, carry)

        m0 = jnp.full((batch, n_kv, g, st.block_q), MASKED_LOGIT, jnp.float32)
        init = (m0, jnp.zeros_like(m0), jnp.zeros((*m0.shape, h), jnp.float32))
        m, denom, acc = lax.fori_loop(first[i], stop[i], visit, init)
        out = acc / jnp.where(denom > 0, denom, 1.0)[..., None]
        lse = jnp.where(denom > 0, m + jnp.log(jnp.where(denom > 0, denom, 1.0)), 0.0)
        return out, lse

    out_IxBxKxGxQxH, lse_IxBxKxGxQ = lax.map(query_block, jnp.arange(t // st.block_q))
    out = einops.rearrange(out_IxBxKxGxQxH, "I B K G Q H -> B (I Q) K G H").astype(q.dtype)
    lse = einops.rearrange(lse_IxBxKxGxQ, "I B K G Q -> B K G (I Q)")
    return out, lse


# ----------------------------------------------------------------------------- backward


def _backward(st: _Static, q, k, v, mask, slopes_KxG, seen_IxJ, out, lse, dout):
    """Gradients by recomputing each visited block's probabilities from the saved lse."""
    n_kv_blocks = seen_IxJ.shape[1]
    first, stop = _first_last(seen_IxJ.T)
    # D_t = sum_h dout * out = sum_s p * dp: the softmax Jacobian's row term (FlashAttention-2).
    d_BxKxGxT = einops.rearrange(
        jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), -1), "B T K G -> B K G T"
    )

    def key_block(carry, j):
        dq, dslopes = carry
        k_j, v_j = _kv_block(st, k, j), _kv_block(st, v, j)

        def visit(i, inner):
            def compute(inner):
                dk_j, dv_j, dq, dslopes = inner
                q_i, do_i = _q_block(st, q, i), _q_block(st, dout, i)
                lse_i = lax.dynamic_slice_in_dim(lse, i * st.block_q, st.block_q, 3)
                d_i = lax.dynamic_slice_in_dim(d_BxKxGxT, i * st.block_q, st.block_q, 3)
                visible, dist = _block_mask(st, mask, i, j)
                s, dcap = _logits(st, q_i, k_j, visible, dist, slopes_KxG)
                p = jnp.where(visible, jnp.exp(s - lse_i[..., None]), 0.0)
                dv_j = dv_j + jnp.einsum(
                    "BKGQS,BQKGH->BSKH",
                    p.astype(v.dtype),
                    do_i,
                    preferred_element_type=jnp.float32,
                )
                dp = jnp.einsum("BQKGH,BSKH->BKGQS", do_i, v_j, preferred_element_type=jnp.float32)
                ds = p * (dp - d_i[..., None])
                ds_qk = ds if dcap is None else ds * dcap  # the cap sits before ALiBi
                dq_i = st.scale * jnp.einsum("BKGQS,BSKH->BQKGH", ds_qk, k_j.astype(jnp.float32))
                dq = lax.dynamic_update_slice_in_dim(
                    dq, _q_block(st, dq, i) + dq_i, i * st.block_q, 1
                )
                dk_j = dk_j + st.scale * jnp.einsum(
                    "BKGQS,BQKGH->BSKH", ds_qk, q_i.astype(jnp.float32)
                )
                if dslopes is not None:  # d logits / d slope = kv_pos - q_pos
                    dslopes = dslopes + jnp.einsum("BKGQS,BQS->KG", ds, dist)
                return dk_j, dv_j, dq, dslopes

            return lax.cond(seen_IxJ[i, j], compute, lambda c: c, inner)

        zeros = jnp.zeros(k_j.shape, jnp.float32)
        dk_j, dv_j, dq, dslopes = lax.fori_loop(
            first[j], stop[j], visit, (zeros, zeros, dq, dslopes)
        )
        return (dq, dslopes), (dk_j, dv_j)

    dq0 = jnp.zeros(q.shape, jnp.float32)
    ds0 = None if slopes_KxG is None else jnp.zeros(slopes_KxG.shape, jnp.float32)
    (dq, dslopes), (dk, dv) = lax.scan(key_block, (dq0, ds0), jnp.arange(n_kv_blocks))
    dk = einops.rearrange(dk, "J B S K H -> B (J S) K H")
    dv = einops.rearrange(dv, "J B S K H -> B (J S) K H")
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), dslopes


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(st: _Static, q, k, v, mask, slopes_KxG, seen_IxJ):
    return _forward(st, q, k, v, mask, slopes_KxG, seen_IxJ)[0]


def _flash_fwd(st, q, k, v, mask, slopes_KxG, seen_IxJ):
    out, lse = _forward(st, q, k, v, mask, slopes_KxG, seen_IxJ)
    return out, (q, k, v, mask, slopes_KxG, seen_IxJ, out, lse)


def _flash_bwd(st, residuals, dout):
    q, k, v, mask, slopes_KxG, seen_IxJ, out, lse = residuals
    dq, dk, dv, dslopes = _backward(st, q, k, v, mask, slopes_KxG, seen_IxJ, out, lse, dout)
    return dq, dk, dv, None, dslopes, None


_flash.defvjp(_flash_fwd, _flash_bwd)


@register_attention("flash")
def flash_attention(
    q_BxTxNxH: Float[Array, "B T N H"],
    k_BxSxKxH: Float[Array, "B S K H"],
    v_BxSxKxH: Float[Array, "B S K H"],
    mask: Mask,
    *,
    alibi_slopes: Float[Array, " N"] | None = None,
    scale: float | None = None,
    logit_softcap: float | None = None,
    block_q: int = DEFAULT_BLOCK,
    block_kv: int = DEFAULT_BLOCK,
) -> Float[Array, "B T N H"]:
    check_block("flash", "block_q", block_q)
    check_block("flash", "block_kv", block_kv)
    length, n_kv = q_BxTxNxH.shape[1], k_BxSxKxH.shape[2]
    st = _Static(
        causal=mask.causal,
        window=mask.window,
        scale=float(q_BxTxNxH.shape[-1] ** -0.5 if scale is None else scale),
        block_q=min(block_q, length),
        block_kv=min(block_kv, k_BxSxKxH.shape[1]),
        softcap=None if logit_softcap is None else float(logit_softcap),
    )
    q, padded = pad_queries(q_BxTxNxH, mask, st.block_q)
    k, v, padded = pad_keys(k_BxSxKxH, v_BxSxKxH, padded, st.block_kv)
    q_BxTxKxGxH = einops.rearrange(q, "B T (K G) H -> B T K G H", K=n_kv)
    slopes_KxG = None
    if alibi_slopes is not None:
        slopes_KxG = jnp.asarray(alibi_slopes, jnp.float32).reshape(n_kv, -1)
    seen = lax.stop_gradient(block_pairs(padded, st))
    out = _flash(st, q_BxTxKxGxH, k, v, padded, slopes_KxG, seen)
    return einops.rearrange(out, "B T K G H -> B T (K G) H")[:, :length]
