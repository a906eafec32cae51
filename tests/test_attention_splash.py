"""Pallas splash attention (the TPU kernel), run in Pallas interpret mode on CPU against the
reference: forward and gradients for causal, windowed and packed masks with grouped-query heads
and a soft cap; the on-device position check; what it refuses; and how `auto` and the
registered `splash` pick a kernel and log it (the TPU and GPU paths driven by a stand-in
backend, as no accelerator is needed here)."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.attention import ATTENTION, Mask, UnsupportedMask, reference_attention, splash, support
from llmjax.attention.flash import flash_attention

B, T, N, K, H = 2, 128, 4, 2, 8  # splash tiles by 128
TOL = dict(atol=2e-5, rtol=2e-5)


@pytest.fixture(autouse=True)
def _fresh_log():
    """Each kernel choice is logged once per process; these tests read the lines."""
    support._REPORTED.clear()


def _qkv(n_kv=K, length=T, dtype=jnp.float32):
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    return (
        jax.random.normal(kq, (B, length, N, H), dtype),
        jax.random.normal(kk, (B, length, n_kv, H), dtype),
        jax.random.normal(kv, (B, length, n_kv, H), dtype),
    )


def _positions(length=T):
    return jnp.broadcast_to(jnp.arange(length), (B, length))


def _packed():
    """Row 0: documents of 40, 50 and 38 tokens, each numbered from 0; row 1: one document."""
    lengths = (40, 50, 38)
    segments = np.concatenate([np.full(n, i) for i, n in enumerate(lengths)])
    positions = np.concatenate([np.arange(n) for n in lengths])
    return (
        jnp.asarray(np.stack([positions, np.arange(T)])),
        jnp.asarray(np.stack([segments, np.zeros(T, int)])),
    )


def _value_and_grads(attend, mask, kv_heads, softcap=None):
    q, k, v = _qkv(kv_heads)
    w = jax.random.normal(jax.random.key(7), q.shape)

    def loss(q, k, v):
        return jnp.sum(w * attend(q, k, v, mask, logit_softcap=softcap))

    out = jax.jit(lambda q, k, v: attend(q, k, v, mask, logit_softcap=softcap))(q, k, v)
    return out, jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)


def _assert_matches_reference(mask, kv_heads=K, softcap=None):
    got = _value_and_grads(splash.interpreted, mask, kv_heads, softcap)
    want = _value_and_grads(reference_attention, mask, kv_heads, softcap)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), got, want)


def test_packed_window_gqa_matches_reference():
    positions, segments = _packed()
    _assert_matches_reference(Mask.causal_lm(positions, segments, window=24))


@pytest.mark.slow  # interpret mode: 10-30 s per case on 2 cores
@pytest.mark.parametrize("kv_heads", [N, 1], ids=["mha", "mqa"])
@pytest.mark.parametrize(
    "name", ["plain", "positions", "window-plain", "packed", "softcap", "non-causal"]
)
def test_masks_match_reference(name, kv_heads):
    positions, segments = _packed()
    masks = {
        "plain": Mask.causal_lm(_positions(), plain=True),
        "positions": Mask.causal_lm(_positions()),
        "window-plain": Mask.causal_lm(_positions(), window=40, plain=True),
        "packed": Mask.causal_lm(positions, segments),
        "softcap": Mask.causal_lm(_positions(), plain=True),
        "non-causal": Mask(positions, positions, segments, segments, causal=False),
    }
    _assert_matches_reference(masks[name], kv_heads, softcap=5.0 if name == "softcap" else None)


@pytest.mark.slow
def test_positions_that_do_not_count_up_take_flash():
    """Index rules differ from position rules here (a gap of 10 positions inside row 0), so
    the device check sends the call to flash: the result is still the reference's."""
    positions = _positions().at[0, 64:].add(10)
    mask = Mask.causal_lm(positions, window=60)
    assert not bool(splash.counts_up(mask))
    assert bool(splash.counts_up(Mask.causal_lm(_packed()[0], _packed()[1])))
    _assert_matches_reference(mask)


def test_refuses_what_it_cannot_serve():
    q, k, v = _qkv()
    valid = jnp.ones((B, T), bool).at[0, :5].set(False)
    cases = {
        "kv_valid": Mask(_positions(), _positions(), kv_valid=valid),
        "q_parents": Mask.causal_lm(
            _positions(), jnp.zeros((B, T), int), parents_BxT=jnp.zeros((B, T), int)
        ),
    }
    for what, mask in cases.items():
        with pytest.raises(UnsupportedMask, match=f"'splash'.*{what}"):
            splash.interpreted(q, k, v, mask)
    with pytest.raises(UnsupportedMask, match="ALiBi"):
        splash.interpreted(q, k, v, Mask.causal_lm(_positions()), alibi_slopes=jnp.ones(N))
    q24, k24, v24 = _qkv(length=24)
    with pytest.raises(UnsupportedMask, match="length 24, which no block size"):
        splash.interpreted(q24, k24, v24, Mask.causal_lm(_positions(24)))


def test_registered_splash_off_tpu_is_flash_and_says_so(caplog):
    q, k, v = _qkv()
    mask = Mask.causal_lm(_positions(), window=16)
    with caplog.at_level(logging.INFO, logger="llmjax.attention"):
        out = ATTENTION.get("splash")(q, k, v, mask)
    np.testing.assert_array_equal(out, flash_attention(q, k, v, mask))
    assert "attention: flash" in caplog.text and "splash is a TPU kernel" in caplog.text


def test_auto_on_tpu_uses_splash_where_it_applies(monkeypatch, caplog):
    calls = []
    original = splash.splash_or_none

    def on_cpu(q, k, v, mask, alibi_slopes, scale, softcap, interpret):
        calls.append(interpret)
        return original(q, k, v, mask, alibi_slopes, scale, softcap, True)

    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    monkeypatch.setattr(splash, "splash_or_none", on_cpu)
    q, k, v = _qkv()
    mask = Mask.causal_lm(_positions(), plain=True)
    with caplog.at_level(logging.INFO, logger="llmjax.attention"):
        out = ATTENTION.get("auto")(q, k, v, mask)
        padded = Mask(_positions(), _positions(), kv_valid=jnp.ones((B, T), bool))
        ATTENTION.get("auto")(q, k, v, padded)  # splash declines: the fallback serves it
    assert calls == [False]  # compiled (not interpreted) on a real TPU
    np.testing.assert_allclose(out, reference_attention(q, k, v, mask), **TOL)
    assert "attention: splash" in caplog.text
    assert "splash does not apply: it cannot serve padding" in caplog.text


def test_auto_on_gpu_asks_cudnn_for_causal_windows_and_dense_masks(monkeypatch, caplog):
    """cuDNN gets `is_causal` and the window for a plain causal mask, the dense mask for packed
    segments; float32 declines (cuDNN is half precision only) and says so."""
    seen = []
    original = jax.nn.dot_product_attention

    def cudnn(q, k, v, **kwargs):
        if kwargs.pop("implementation", None) == "cudnn":  # xla's fallback calls it too
            seen.append({k: v for k, v in kwargs.items() if v is not None})
        return original(q, k, v, **kwargs)

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax.nn, "dot_product_attention", cudnn)
    q, k, v = _qkv(dtype=jnp.bfloat16)
    positions, segments = _packed()
    auto = ATTENTION.get("auto")
    with caplog.at_level(logging.INFO, logger="llmjax.attention"):
        auto(q, k, v, Mask.causal_lm(_positions(), window=16, plain=True))
        packed = Mask.causal_lm(positions, segments)
        got = auto(q, k, v, packed)
        auto(*_qkv(), Mask.causal_lm(_positions(), plain=True))
    assert seen[0]["is_causal"] and seen[0]["local_window_size"] == (15, 0)
    assert seen[1]["mask"].shape == (B, 1, T, T) and "is_causal" not in seen[1]
    assert len(seen) == 2  # float32 never reached cuDNN
    want = reference_attention(*(x.astype(jnp.float32) for x in (q, k, v)), packed)
    np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=0.05)
    assert "attention: cudnn" in caplog.text and "window 16" in caplog.text
    assert "cuDNN does not apply: it takes bfloat16 or float16, not float32" in caplog.text
