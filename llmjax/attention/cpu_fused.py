"""Fused causal attention for XLA:CPU: llmjax's C++ kernel run as an XLA FFI custom call.

XLA:CPU computes attention as batched matmuls around a [B, N, T, T] logits array, which it
writes, copies into the layout the next matmul wants, and reads back, forward and backward;
at T = 256 that traffic, not the arithmetic, is most of a training step's time. The kernel here
never writes the logits: it runs over blocks of 64 queries and 64 keys, skips the blocks above
the diagonal, keeps a running softmax (FlashAttention's), and recomputes the probabilities in
the backward pass from the saved log-sum-exp. It serves the plain causal mask (queries and keys
at positions 0..T-1, no padding, segments or window), with grouped-query heads, head sizes
32, 64 and 128, float32 (other dtypes are computed in float32 and cast back), on one CPU device
(the custom call has no sharding rule). `auto` attention uses it there (llmjax.attention.auto);
everything else falls back to XLA, exactly.

The C++ file (llmjax/cpu_kernels/causal_attention.cc) is compiled on first use and cached
(llmjax.cpu_kernels). Without a C++ compiler, or with $LLMJAX_CPU_KERNELS=off, nothing is
built and attention runs on XLA as before.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from llmjax import cpu_kernels
from llmjax.attention.masks import Mask
from llmjax.attention.support import declined, report

KERNEL = "causal_attention"
HEAD_DIMS = (32, 64, 128)
_FORWARD, _BACKWARD = cpu_kernels.TARGETS[KERNEL]


def why_not(q_BxTxNxH, k_BxSxKxH, mask: Mask, alibi_slopes, logit_softcap) -> str | None:
    """Why the kernel cannot serve this call (a phrase), or None when it can."""
    B, T, N, H = q_BxTxNxH.shape
    S, K = k_BxSxKxH.shape[1], k_BxSxKxH.shape[2]
    if not (mask.plain and mask.causal and mask.window is None and mask.extra is None):
        return "a mask other than the plain causal one"
    if alibi_slopes is not None or logit_softcap is not None:
        return "ALiBi or a logit soft cap"
    if T != S or N % K:
        return f"{T} queries over {S} keys, {N} heads over {K} kv heads"
    if H not in HEAD_DIMS:
        return f"head size {H} (it takes {', '.join(map(str, HEAD_DIMS))})"
    return cpu_kernels.unserved(KERNEL)


def _forward(q, k, v, scale):
    cpu_kernels.require(KERNEL)
    B, T, N, _ = q.shape
    outputs = (jax.ShapeDtypeStruct(q.shape, jnp.float32),
               jax.ShapeDtypeStruct((B, N, T), jnp.float32))  # fmt: skip
    call = jax.ffi.ffi_call(_FORWARD, outputs, vmap_method="sequential")
    return call(q, k, v, scale=np.float32(scale))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def causal_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, scale: float):
    """softmax(q k^T * scale + causal mask) v, float32 [B, T, N, H] (see the module)."""
    return _forward(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, scale)[0]


def _causal_fwd(q, k, v, scale):
    out, lse = _forward(q, k, v, scale)
    return out, (q, k, v, out, lse)


def _causal_bwd(scale, residuals, d_out):
    cpu_kernels.require(KERNEL)
    q, k, v, out, lse = residuals
    shapes = tuple(jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in (q, k, v))
    call = jax.ffi.ffi_call(_BACKWARD, shapes, vmap_method="sequential")
    return tuple(call(q, k, v, out, lse, d_out.astype(jnp.float32), scale=np.float32(scale)))


causal_attention.defvjp(_causal_fwd, _causal_bwd)


def fused_cpu_attention(q, k, v, mask: Mask, alibi_slopes, scale, logit_softcap=None):
    """`auto`'s CPU kernel: the output in q's dtype, or None (with the reason logged) when the
    kernel does not serve the call."""
    why = why_not(q, k, mask, alibi_slopes, logit_softcap)
    if why is not None:
        return declined("the fused CPU kernel", f"it cannot serve {why}", q, k)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    out = causal_attention(*f32, scale).astype(q.dtype)
    report("cpu_fused", "plain causal", q, k)
    return out
