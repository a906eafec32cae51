"""The attention-logit soft cap: cap * tanh(logits / cap) before ALiBi and the mask.

The reference against the explicit formula; logits within the cap whatever q and k; a huge cap
equal to no cap; every variant that serves the cap equal to the capped reference (forward and
gradients), and the ones that cannot serve it refusing it by name. The model option: tests/
test_model_attention_options.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.attention import (
    ATTENTION,
    Mask,
    UnsupportedMask,
    attention_probabilities,
    reference_attention,
)
from llmjax.attention.block_sparse import BlockSparsePattern, block_sparse_mask, make_block_sparse
from llmjax.attention.flash import flash_attention
from llmjax.attention.sliding_window import sliding_window_attention
from llmjax.layers.positions import alibi_slopes

B, T, N, K, H = 2, 19, 4, 2, 8
CAP = 3.0


def _qkv(seed=0, gain=1.0):
    keys = jax.random.split(jax.random.key(seed), 3)
    return (
        gain * jax.random.normal(keys[0], (B, T, N, H)),
        gain * jax.random.normal(keys[1], (B, T, K, H)),
        jax.random.normal(keys[2], (B, T, K, H)),
    )


def _positions():
    return jnp.broadcast_to(jnp.arange(T), (B, T))


SEGMENTS = jnp.asarray([[0] * 7 + [1] * 12, [0] * T])
LEFT_PAD = jnp.asarray([[False] * 4 + [True] * 15, [True] * T])
MASKS = {
    "causal": Mask.causal_lm(_positions()),
    "causal-plain": Mask.causal_lm(_positions(), plain=True),
    "window": Mask.causal_lm(_positions(), window=5),
    "segments": Mask.causal_lm(_positions(), SEGMENTS),
    "left-padding": Mask(_positions(), _positions(), kv_valid=LEFT_PAD),
}


def test_reference_equals_the_capped_formula():
    """A per-head NumPy loop: softmax(cap * tanh(q k^T / sqrt(H) / cap) + alibi + mask) v."""
    q, k, v = _qkv(gain=3.0)  # logits of order 10: the cap changes them
    mask = MASKS["window"]
    slopes = alibi_slopes(N)
    out = reference_attention(q, k, v, mask, alibi_slopes=jnp.asarray(slopes), logit_softcap=CAP)
    qn, kn, vn = (np.asarray(x, np.float64) for x in (q, k, v))
    visible, dist = np.asarray(mask.dense()), np.asarray(mask.distance())
    changed = False
    for b in range(B):
        for n in range(N):
            kv = n // (N // K)
            raw = qn[b, :, n] @ kn[b, :, kv].T / np.sqrt(H)
            changed |= bool(np.abs(raw[visible[b]]).max() > 2 * CAP)
            logits = CAP * np.tanh(raw / CAP) + slopes[n] * dist[b]
            logits = np.where(visible[b], logits, -np.inf)
            p = np.exp(logits - logits.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            np.testing.assert_allclose(out[b, :, n], p @ vn[b, :, kv], atol=1e-5, rtol=1e-5)
    assert changed  # the test would pass without a cap otherwise


def test_logits_never_exceed_the_cap():
    """With q and k 1e4 times too large, uncapped softmax is one-hot; capped, any two visible
    keys' probabilities differ by at most exp(2 cap), since logit differences are below 2 cap."""
    q, k, _ = _qkv(gain=1e4)
    mask = MASKS["causal"]
    visible = np.asarray(mask.dense())[:, None]
    probs = np.asarray(attention_probabilities(q, k, mask, logit_softcap=CAP), np.float64)
    assert np.isfinite(probs).all() and probs.min() >= 0
    log_p = np.log(np.where(visible, probs, 1.0))
    spread = np.where(visible, log_p, -np.inf).max(-1) - np.where(visible, log_p, np.inf).min(-1)
    assert spread.max() <= 2 * CAP + 1e-4
    assert spread.max() > CAP  # the cap is reached, not just respected
    uncapped = np.asarray(attention_probabilities(q, k, mask))
    assert (uncapped.max(-1)[:, :, 1:] > 0.999).all()  # one-hot without the cap
    # The recovered logits themselves (log p up to a per-row constant) stay within +-cap.
    logits = log_p - np.where(visible, log_p, 0).sum(-1, keepdims=True) / visible.sum(-1)[..., None]
    assert np.abs(np.where(visible, logits, 0)).max() <= 2 * CAP


def test_a_huge_cap_is_no_cap():
    q, k, v = _qkv(gain=2.0)
    for mask in MASKS.values():
        capped = reference_attention(q, k, v, mask, logit_softcap=1e6)
        plain = reference_attention(q, k, v, mask)
        np.testing.assert_allclose(capped, plain, atol=1e-6, rtol=1e-6)


def _output_and_grads(attend, mask, slopes):
    q, k, v = _qkv(gain=2.5)
    rows = np.asarray(mask.dense().any(-1))[:, :, None, None]
    w = jax.random.normal(jax.random.key(9), q.shape) * rows

    def run(q, k, v):
        out, pullback = jax.vjp(lambda q, k, v: attend(q, k, v, mask, slopes), q, k, v)
        return out * rows, pullback(w)

    return jax.jit(run)(q, k, v)


def _assert_same(attend, mask, slopes, reference_mask=None):
    def reference(q, k, v, m, s):
        return reference_attention(q, k, v, m, alibi_slopes=s, logit_softcap=CAP)

    out, grads = _output_and_grads(attend, mask, slopes)
    ref, ref_grads = _output_and_grads(
        reference, mask if reference_mask is None else reference_mask, slopes
    )
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-5)


def _registered(name):
    fn = ATTENTION.get(name)
    return lambda q, k, v, m, s: fn(q, k, v, m, alibi_slopes=s, logit_softcap=CAP)


def _flash_small_blocks(q, k, v, m, s):
    # Blocks of 8 over 19 tokens: several block pairs, padding, and skipped pairs.
    return flash_attention(q, k, v, m, alibi_slopes=s, logit_softcap=CAP, block_q=8, block_kv=8)


@pytest.mark.parametrize("alibi", [False, True], ids=["", "alibi"])
@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("variant", ["xla", "flash", "flash-blocks"])
def test_exact_variants_serve_the_cap(variant, mask_name, alibi):
    attend = _flash_small_blocks if variant == "flash-blocks" else _registered(variant)
    slopes = jnp.asarray(alibi_slopes(N)) if alibi else None
    _assert_same(attend, MASKS[mask_name], slopes)


def test_auto_serves_the_cap():
    """Fused kernels have no cap: a capped call takes auto's exact fallback."""
    _assert_same(_registered("auto"), MASKS["causal-plain"], None)


def test_sliding_window_serves_the_cap():
    def attend(q, k, v, m, s):
        return sliding_window_attention(q, k, v, m, alibi_slopes=s, logit_softcap=CAP, block=4)

    _assert_same(attend, MASKS["window"], jnp.asarray(alibi_slopes(N)))
    over_cache = sliding_window_attention.over_cache
    _assert_same(
        lambda q, k, v, m, s: over_cache(q, k, v, m, alibi_slopes=s, logit_softcap=CAP),
        MASKS["window"],
        None,
    )


def test_block_sparse_serves_the_cap():
    pattern = BlockSparsePattern(block=4, local_blocks=2, global_blocks=1)
    sparse = make_block_sparse(pattern)
    mask = MASKS["left-padding"]
    dense = jnp.broadcast_to(jnp.asarray(block_sparse_mask(T, T, pattern)), (B, T, T))
    _assert_same(
        lambda q, k, v, m, s: sparse(q, k, v, m, alibi_slopes=s, logit_softcap=CAP),
        mask,
        jnp.asarray(alibi_slopes(N)),
        reference_mask=mask.replace(extra=dense),
    )


@pytest.mark.parametrize("variant", ["linear", "linear_favor"])
def test_linear_attention_refuses_the_cap_by_name(variant):
    q, k, v = _qkv()
    attend = ATTENTION.get(variant)
    with pytest.raises(UnsupportedMask, match=r"'linear'.*soft cap.*'reference', 'xla'"):
        attend(q, k, v, MASKS["causal"], logit_softcap=CAP)
    with pytest.raises(UnsupportedMask, match="soft cap"):
        state = attend.recurrent.init(B, K, H)
        attend.recurrent.extend(state, q, k, v, MASKS["causal"], logit_softcap=CAP)
    attend(q, k, v, MASKS["causal"], logit_softcap=None)  # None is no cap


def test_no_cap_leaves_every_variant_unchanged():
    """logit_softcap=None is the uncapped computation, bit for bit."""
    q, k, v = _qkv()
    for name in ATTENTION.names():
        mask = MASKS["window" if name == "sliding_window" else "causal"]
        fn = ATTENTION.get(name)
        np.testing.assert_array_equal(
            fn(q, k, v, mask, logit_softcap=None), fn(q, k, v, mask), err_msg=name
        )
