"""A quick conformance check for a new attention variant, against the reference.

For each standard mask it reports how far the variant's output and gradients are from
`reference_attention` (exact variants: ~1e-6; approximate ones: whatever their contract
allows), whether it reads only the keys the mask lets each query see (noise on hidden keys and
values must leave each output unchanged), and whether grouped-query attention equals multi-head
attention with repeated keys and values.
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from llmjax.attention.core import reference_attention
from llmjax.attention.masks import Mask
from llmjax.attention.support import UnsupportedMask


def standard_masks(batch: int, length: int) -> dict[str, Mask]:
    """Causal, sliding window, packed segments, a packed tree (one prefix, two continuations)
    and left padding over `length` tokens."""
    pos = jnp.broadcast_to(jnp.arange(length), (batch, length))
    half = length // 2
    segments = jnp.asarray([[0] * half + [1] * (length - half)] + [[0] * length] * (batch - 1))
    valid = jnp.asarray([[False] * 3 + [True] * (length - 3)] + [[True] * length] * (batch - 1))
    # row 0: prefix (segment 1), then continuations 2 and 3 both placed right after it
    third = length // 3
    rest = length - third
    tree_seg = [1] * third + [2] * (rest // 2) + [3] * (rest - rest // 2)
    tree_par = [1] * third + [1] * rest
    tree_pos = list(range(third + rest // 2)) + list(range(third, third + rest - rest // 2))
    tree = Mask.causal_lm(
        jnp.asarray([tree_pos] + [list(range(length))] * (batch - 1)),
        jnp.asarray([tree_seg] + [[0] * length] * (batch - 1)),
        parents_BxT=jnp.asarray([tree_par] + [[0] * length] * (batch - 1)),
    )
    return {
        "causal": Mask.causal_lm(pos),
        "window": Mask.causal_lm(pos, window=max(2, length // 4)),
        "segments": Mask.causal_lm(pos, segments),
        "tree": tree,
        "left-padding": Mask(pos, pos, kv_valid=valid),
    }


def check_variant(
    attend: Callable,
    *,
    batch: int = 2,
    length: int = 12,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int = 8,
    seed: int = 0,
    masks: Sequence[str] | None = None,
) -> list[dict]:
    """One row per standard mask (or those named in `masks`): output and gradient errors against
    the reference, and the two properties every variant must have. A mask the variant rejects
    is reported as such."""
    keys = jax.random.split(jax.random.key(seed), 6)
    q = jax.random.normal(keys[0], (batch, length, heads, head_dim))
    k, v = (jax.random.normal(key, (batch, length, kv_heads, head_dim)) for key in keys[1:3])
    # Noise for every (sequence, query) copy: added to the keys and values that query cannot see.
    noise_k, noise_v = (
        10 * jax.random.normal(key, (batch, length, length, kv_heads, head_dim))
        for key in keys[4:6]
    )
    rows = []
    for name, mask in standard_masks(batch, length).items():
        if masks is not None and name not in masks:
            continue
        seen_BxT = np.asarray(mask.dense().any(-1))[:, :, None, None]
        w = jax.random.normal(keys[3], q.shape) * seen_BxT

        def probe(fn, mask=mask, w=w):
            out, pullback = jax.vjp(lambda q, k, v: fn(q, k, v, mask), q, k, v)
            repeat = heads // kv_heads
            mha = fn(q, jnp.repeat(k, repeat, axis=2), jnp.repeat(v, repeat, axis=2), mask)
            return (
                out,
                pullback(w),
                mha,
                _own_rows_with_hidden_noise(fn, q, k, v, mask, noise_k, noise_v),
            )

        try:
            out, grads, mha, noisy = jax.jit(probe, static_argnums=0)(attend)
        except UnsupportedMask as e:
            rows.append({"mask": name, "unsupported": str(e).split(";")[0]})
            continue
        ref, ref_grads = jax.jit(probe, static_argnums=0)(reference_attention)[:2]
        rows.append(
            {
                "mask": name,
                "max_out_error": float(np.abs((out - ref) * seen_BxT).max()),
                "max_grad_error": max(
                    float(np.abs(a - b).max()) for a, b in zip(grads, ref_grads, strict=True)
                ),
                "reads_only_visible_keys": bool(
                    np.allclose(noisy * seen_BxT, out * seen_BxT, atol=1e-5)
                ),
                "gqa_equals_repeated_mha": bool(np.allclose(out, mha, atol=1e-5)),
            }
        )
    return rows


def _own_rows_with_hidden_noise(attend, q, k, v, mask: Mask, noise_k, noise_v):
    """Copy t of each sequence gets noise on every key and value query t may not see; returns
    each query's output from its own copy (equal to the clean output if hidden keys are unread).
    One batched forward pass over batch * length sequences."""
    batch, length = q.shape[:2]
    hidden_BxTxSx1x1 = (~mask.dense())[..., None, None]

    def copies(x):
        return jnp.repeat(x, length, axis=0)  # copy t of sequence b at index b * length + t

    def noisy(x, noise):
        return jnp.where(hidden_BxTxSx1x1, x[:, None] + noise, x[:, None]).reshape(
            batch * length, *x.shape[1:]
        )

    out = attend(copies(q), noisy(k, noise_k), noisy(v, noise_v), jax.tree.map(copies, mask))
    out = out.reshape(batch, length, *out.shape[1:])
    return out[:, jnp.arange(length), jnp.arange(length)]
