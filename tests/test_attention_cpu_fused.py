"""The fused causal CPU kernel (llmjax.attention.cpu_fused) against the reference: forward and
gradients over block edges, grouped-query heads and every head size it takes; what it declines
and why; how `auto` picks it. Building and caching: tests/test_cpu_kernels.py."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax import cpu_kernels
from llmjax.attention import ATTENTION, Mask, cpu_fused, reference_attention, support
from llmjax.layers.positions import alibi_slopes
from tests.kernel_utils import needs_kernel

TOL = dict(atol=2e-5, rtol=2e-5)


@pytest.fixture(autouse=True)
def _fresh_log():
    support._REPORTED.clear()


@pytest.fixture
def one_device(monkeypatch):
    """The tests run on 8 simulated devices; the kernel serves a process with one."""
    monkeypatch.setattr(cpu_fused.jax, "device_count", lambda: 1)


def _qkv(B=2, T=100, N=4, K=2, H=32, dtype=jnp.float32, seed=0):
    kq, kk, kv, kw = jax.random.split(jax.random.key(seed), 4)
    return (
        jax.random.normal(kq, (B, T, N, H), dtype),
        jax.random.normal(kk, (B, T, K, H), dtype),
        jax.random.normal(kv, (B, T, K, H), dtype),
        jax.random.normal(kw, (B, T, N, H), jnp.float32),
    )


def _plain(B, T):
    return Mask.causal_lm(jnp.broadcast_to(jnp.arange(T), (B, T)), plain=True)


def _loss(attend, w):
    return lambda q, k, v: jnp.sum(attend(q, k, v) * w)


@needs_kernel
@pytest.mark.parametrize(
    "T, N, K, H",
    [(1, 2, 2, 32), (64, 2, 2, 64), (100, 4, 2, 32), (130, 6, 3, 64), (70, 2, 1, 128)],
)
def test_forward_and_gradients_equal_the_reference(T, N, K, H):
    """Block edges (T = 1, 64, 100, 130: one partial, exact and several blocks), GQA groups of
    1-2 and every head size; scale 1/sqrt(H)."""
    q, k, v, w = _qkv(T=T, N=N, K=K, H=H)
    mask = _plain(2, T)
    fused = lambda q, k, v: cpu_fused.causal_attention(q, k, v, H**-0.5)  # noqa: E731
    ref = lambda q, k, v: reference_attention(q, k, v, mask)  # noqa: E731
    np.testing.assert_allclose(jax.jit(fused)(q, k, v), ref(q, k, v), **TOL)
    got = jax.jit(jax.grad(_loss(fused, w), argnums=(0, 1, 2)))(q, k, v)
    want = jax.grad(_loss(ref, w), argnums=(0, 1, 2))(q, k, v)
    for g, r, name in zip(got, want, "qkv", strict=True):
        np.testing.assert_allclose(g, r, atol=1e-4, rtol=1e-4, err_msg=f"d{name}")


@needs_kernel
def test_a_custom_scale_and_vmap():
    q, k, v, _ = _qkv(T=40)
    mask = _plain(2, 40)
    np.testing.assert_allclose(
        cpu_fused.causal_attention(q, k, v, 0.3),
        reference_attention(q, k, v, mask, scale=0.3),
        **TOL,
    )
    # vmap over a leading axis runs the call once per slice
    batched = jax.vmap(lambda q, k, v: cpu_fused.causal_attention(q, k, v, 0.3))
    out = batched(q[None].repeat(2, 0), k[None].repeat(2, 0), v[None].repeat(2, 0))
    np.testing.assert_allclose(out[1], reference_attention(q, k, v, mask, scale=0.3), **TOL)


@needs_kernel
def test_auto_uses_it_for_the_plain_causal_mask_on_one_cpu_device(one_device, caplog):
    q, k, v, _ = _qkv(T=70)
    mask = _plain(2, 70)
    with caplog.at_level(logging.INFO, logger="llmjax.attention"):
        out = jax.jit(lambda q, k, v: ATTENTION.get("auto")(q, k, v, mask))(q, k, v)
    np.testing.assert_allclose(out, reference_attention(q, k, v, mask), **TOL)
    assert "attention: cpu_fused" in caplog.text and "plain causal" in caplog.text
    # half precision is computed in float32 and returned in the input's dtype
    half = ATTENTION.get("auto")(*(x.astype(jnp.bfloat16) for x in (q, k, v)), mask)
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(half.astype(jnp.float32), out, atol=0.05)


def test_what_it_declines_falls_back_exactly(one_device, caplog):
    B, T = 2, 48
    q, k, v, _ = _qkv(T=T)
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))
    lengths = jnp.array([[40], [48]])
    padded = Mask.causal_lm(positions).replace(kv_valid=jnp.arange(T)[None] < lengths)
    slopes = jnp.asarray(alibi_slopes(4))
    cases = [  # (mask, keywords, the reason logged)
        (Mask.causal_lm(positions, window=8, plain=True), {}, "a mask other than the plain"),
        (padded, {}, "a mask other than the plain"),
        (_plain(B, T), {"alibi_slopes": slopes}, "ALiBi or a logit soft cap"),
        (_plain(B, T), {"logit_softcap": 5.0}, "ALiBi or a logit soft cap"),
    ]
    auto = ATTENTION.get("auto")
    for mask, kw, reason in cases:
        support._REPORTED.clear()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="llmjax.attention"):
            got = auto(q, k, v, mask, **kw)
        np.testing.assert_allclose(got, reference_attention(q, k, v, mask, **kw), **TOL)
        assert f"the fused CPU kernel does not apply: it cannot serve {reason}" in caplog.text
        assert "attention: cpu_fused" not in caplog.text
    # head sizes it has no build for, and queries over other keys
    mask = _plain(2, 16)
    assert "head size 16" in cpu_fused.why_not(*_qkv(T=16, H=16)[:2], mask, None, None)
    q16, k16, _, _ = _qkv(T=16)
    assert "16 queries over 8 keys" in cpu_fused.why_not(q16, k16[:, :8], mask, None, None)


def test_several_devices_decline(monkeypatch):
    """The custom call has no sharding rule: with several devices XLA's attention serves."""
    q, k, _, _ = _qkv(T=16)
    why = cpu_fused.why_not(q, k, _plain(2, 16), None, None)
    assert why is not None and f"{jax.device_count()} devices" in why


def test_switched_off_by_the_environment(one_device, monkeypatch):
    monkeypatch.setenv(cpu_kernels.KERNELS_ENV, "off")
    q, k, _, _ = _qkv(T=16)
    assert cpu_fused.why_not(q, k, _plain(2, 16), None, None) == "$LLMJAX_CPU_KERNELS is off"


@needs_kernel
def test_a_model_with_it_equals_xla_in_logits_gradients_and_generation(one_device, caplog):
    """A GQA model (2 heads of 32 over 1 kv head, RoPE): the kernel serves its training
    forward and backward; cached generation (padded prompts, cache masks) falls back."""
    import dataclasses

    from llmjax.config import PRESETS
    from llmjax.decode import SamplingConfig, generate_tokens
    from llmjax.models import build_model
    from tests.decode_utils import random_params

    cfg = dataclasses.replace(PRESETS["test-tiny"].model, vocab_size=61, d_model=64, n_heads=2,
                              n_kv_heads=1, position="rope")  # fmt: skip
    params = random_params(cfg)
    tokens = jax.random.randint(jax.random.key(1), (2, 70), 0, 61)
    models = {a: build_model(dataclasses.replace(cfg, attention=a)) for a in ("auto", "xla")}

    def loss(params, model):
        logits = model.apply({"params": params}, tokens).logits
        return jax.nn.logsumexp(logits, -1).mean(), logits

    with caplog.at_level(logging.INFO, logger="llmjax.attention"):
        (l_auto, logits_auto), g_auto = jax.value_and_grad(loss, has_aux=True)(
            params, models["auto"]
        )
    (l_xla, logits_xla), g_xla = jax.value_and_grad(loss, has_aux=True)(params, models["xla"])
    assert "attention: cpu_fused for q (2, 70, 2, 32)" in caplog.text
    np.testing.assert_allclose(logits_auto, logits_xla, atol=1e-4, rtol=1e-4)
    for a, b in zip(jax.tree.leaves(g_auto), jax.tree.leaves(g_xla), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    prompts = [np.asarray([5, 9, 2]), np.asarray([1, 2, 3, 4, 5, 6, 7])]
    greedy = SamplingConfig(temperature=0)
    out = {
        a: generate_tokens(
            m,
            {"params": params},
            prompts,
            max_new_tokens=12,
            key=jax.random.key(0),
            sampling=greedy,
        )  # fmt: skip
        for a, m in models.items()
    }
    np.testing.assert_array_equal(out["auto"].tokens, out["xla"].tokens)
