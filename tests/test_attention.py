"""Every registered attention variant against the reference: forward and gradients.

Exact variants must match `reference_attention` to 1e-5 (float32) under every mask they accept.
A variant that is approximate by design lists itself in APPROXIMATE with its own contract test.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.attention import ATTENTION, Mask, reference_attention
from llmjax.layers.positions import alibi_slopes

# name -> reason; such variants are excluded here and tested against their own definition.
APPROXIMATE: dict[str, str] = {
    "linear": "a kernel feature map, not softmax (tests/test_attention_variants.py)",
    "linear_favor": "a random-feature estimate of softmax (tests/test_attention_variants.py)",
    "block_sparse": "sees only its block pattern; equals the reference under block_sparse_mask "
    "(tests/test_attention_variants.py)",
}
# name -> the masks it serves; under any other mask it must raise an error naming itself.
SERVES: dict[str, set[str]] = {"sliding_window": {"window", "window-plain"}}

B, T, N, K, H = 2, 24, 4, 2, 8


def _qkv(seed=0, n_kv=K, length=T):
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (B, length, N, H))
    k = jax.random.normal(keys[1], (B, length, n_kv, H))
    v = jax.random.normal(keys[2], (B, length, n_kv, H))
    return q, k, v


def _positions(length=T):
    return jnp.broadcast_to(jnp.arange(length), (B, length))


MASKS = {
    "causal": lambda: Mask.causal_lm(_positions()),
    "causal-plain": lambda: Mask.causal_lm(_positions(), plain=True),
    "window": lambda: Mask.causal_lm(_positions(), window=5),
    "window-plain": lambda: Mask.causal_lm(_positions(), window=5, plain=True),
    "segments": lambda: Mask.causal_lm(
        _positions(), jnp.asarray([[0] * 10 + [1] * 14, [0] * 24]), plain=False
    ),
    # row 0: a prefix (segment 1, 8 tokens) and two continuations placed right after it
    "tree": lambda: Mask.causal_lm(
        jnp.asarray([list(range(16)) + list(range(8, 16)), list(range(24))]),
        jnp.asarray([[1] * 8 + [2] * 8 + [3] * 8, [0] * 24]),
        parents_BxT=jnp.asarray([[1] * 24, [0] * 24]),
    ),
    "left-padding": lambda: Mask(
        q_positions=_positions(),
        kv_positions=_positions(),
        kv_valid=jnp.asarray([[False] * 5 + [True] * 19, [True] * 24]),
    ),
}


def _visible_rows(mask: Mask) -> np.ndarray:
    """Query rows that see at least one key; other rows' outputs are unspecified."""
    return np.asarray(mask.dense().any(-1))  # (B, T)


EXACT = [n for n in ATTENTION.names() if n not in APPROXIMATE and n != "reference"]


@functools.cache
def _output_and_grads(variant, mask_name, kv_heads, alibi):
    """Output and (q, k, v) gradients of a weighted sum, from one compiled function."""
    q, k, v = _qkv(n_kv=kv_heads)
    mask = MASKS[mask_name]()
    slopes = jnp.asarray(alibi_slopes(N)) if alibi else None
    attend = ATTENTION.get(variant)
    rows = _visible_rows(mask)[:, :, None, None]
    # Weight the outputs so that gradients flow through every visible row differently.
    w = jax.random.normal(jax.random.key(9), (B, T, N, H)) * rows

    def run(q, k, v):
        out, pullback = jax.vjp(lambda q, k, v: attend(q, k, v, mask, alibi_slopes=slopes), q, k, v)
        return out, pullback(w)

    out, grads = jax.jit(run)(q, k, v)
    return np.asarray(out) * rows, [np.asarray(g) for g in grads]


@pytest.mark.parametrize("variant", EXACT)
@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("kv_heads", [N, K, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("alibi", [False, True], ids=["", "alibi"])
def test_variant_matches_reference(variant, mask_name, kv_heads, alibi):
    if variant in SERVES and mask_name not in SERVES[variant]:
        q, k, v = _qkv(n_kv=kv_heads)
        with pytest.raises(ValueError, match=variant):
            ATTENTION.get(variant)(q, k, v, MASKS[mask_name]())
        return
    out, grads = _output_and_grads(variant, mask_name, kv_heads, alibi)
    ref, ref_grads = _output_and_grads("reference", mask_name, kv_heads, alibi)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-5)


def test_reference_matches_explicit_softmax_formula():
    """The reference against a per-head NumPy loop: softmax(q k^T / sqrt(H) + mask) v."""
    q, k, v = _qkv(n_kv=K)
    mask = MASKS["window"]()
    slopes = alibi_slopes(N)
    out = np.asarray(reference_attention(q, k, v, mask, alibi_slopes=jnp.asarray(slopes)))
    qn, kn, vn = (np.asarray(x, np.float64) for x in (q, k, v))
    visible = np.asarray(mask.dense())
    dist = np.asarray(mask.distance())
    for b in range(B):
        for n in range(N):
            kv = n // (N // K)
            logits = qn[b, :, n] @ kn[b, :, kv].T / np.sqrt(H) + slopes[n] * dist[b]
            logits = np.where(visible[b], logits, -np.inf)
            p = np.exp(logits - logits.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            np.testing.assert_allclose(out[b, :, n], p @ vn[b, :, kv], atol=1e-5, rtol=1e-5)


def test_gqa_equals_mha_with_repeated_kv():
    q, k, v = _qkv(n_kv=K)
    for name in ATTENTION.names():
        mask = MASKS[min(SERVES.get(name, {"causal"}))]()
        fn = ATTENTION.get(name)
        attend = jax.jit(lambda q, k, v, fn=fn, mask=mask: fn(q, k, v, mask))
        gqa = attend(q, k, v)
        mha = attend(q, jnp.repeat(k, N // K, axis=2), jnp.repeat(v, N // K, axis=2))
        np.testing.assert_allclose(gqa, mha, atol=1e-5, rtol=1e-5, err_msg=name)


def test_mask_semantics():
    pos = jnp.asarray([[0, 1, 2, 3]])
    dense = np.asarray(Mask.causal_lm(pos, window=2).dense()[0])
    expected = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], bool)
    np.testing.assert_array_equal(dense, expected)
    seg = np.asarray(Mask.causal_lm(pos, jnp.asarray([[0, 0, 1, 1]])).dense()[0])
    np.testing.assert_array_equal(
        seg, np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], bool)
    )


def test_registering_a_variant_makes_it_usable(tiny_model):
    """A new variant is one decorated function; the model then runs with it by name."""
    import dataclasses

    from llmjax.attention import register_attention
    from llmjax.models import build_model, init_model

    @register_attention("test-doubled-scale")
    def doubled(q, k, v, mask, *, alibi_slopes=None, scale=None):
        return reference_attention(
            q, k, v, mask, alibi_slopes=alibi_slopes, scale=2 * q.shape[-1] ** -0.5
        )

    try:
        cfg = dataclasses.replace(tiny_model, attention="test-doubled-scale")
        params, _ = init_model(cfg, jax.random.key(0))
        tokens = jnp.ones((1, 8), jnp.int32)
        out = build_model(cfg).apply({"params": params}, tokens).logits
        base = build_model(tiny_model).apply({"params": params}, tokens).logits
        assert out.shape == base.shape and not np.allclose(out, base)
    finally:
        ATTENTION.unregister("test-doubled-scale")
