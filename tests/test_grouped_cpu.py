"""The C++ grouped matmul (llmjax.layers.grouped.grouped_matmul, kernel `cpu`) against
`jax.lax.ragged_dot`: forward and both gradients over row-block and column-strip edges, empty
groups and rows past the groups; widths that are not multiples of 16; what `auto` picks and
why; an MoE model's training gradients and loss equal to the `blocks` layout's."""

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax import cpu_kernels
from llmjax.config import MoEConfig
from llmjax.layers import grouped
from llmjax.layers.grouped import GROUPED, grouped_matmul
from llmjax.models import build_model
from tests.decode_utils import random_params
from tests.kernel_utils import needs_kernel

TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.fixture
def one_device(monkeypatch):
    """The tests run on 8 simulated devices; `auto` uses the kernel in a process with one."""
    monkeypatch.setattr(grouped.jax, "device_count", lambda: 1)


def _case(M, K, N, sizes, seed=0):
    kx, kw, ky = jax.random.split(jax.random.key(seed), 3)
    return (
        jax.random.normal(kx, (M, K)),
        jax.random.normal(kw, (len(sizes), K, N)),
        jnp.asarray(sizes, jnp.int32),
        jax.random.normal(ky, (M, N)),
    )


def _value_and_grads(matmul, x, w, sizes, dy):
    loss = lambda x, w: jnp.vdot(matmul(x, w, sizes), dy)  # noqa: E731
    return matmul(x, w, sizes), *jax.grad(loss, argnums=(0, 1))(x, w)


@needs_kernel
@pytest.mark.parametrize(
    "M, K, N, sizes",
    [
        (300, 128, 256, [70, 64, 0, 101, 65]),  # several row blocks per group, an empty one
        (37, 48, 80, [5, 0, 0, 32]),  # column strips of 64 + 16 and 32 + 16, 16 + 32 of K
        (9, 16, 16, [9]),  # one group, fewer rows than a tile
        (20, 32, 32, [3, 4, 5]),  # rows past the groups' total are zero, no gradient
    ],
)
def test_forward_and_gradients_equal_ragged_dot(M, K, N, sizes):
    x, w, sizes_G, dy = _case(M, K, N, sizes)
    got = jax.jit(lambda *a: _value_and_grads(grouped_matmul, *a))(x, w, sizes_G, dy)
    want = _value_and_grads(jax.lax.ragged_dot, x, w, sizes_G, dy)
    for g, r, name in zip(got, want, ("y", "dx", "dw"), strict=True):
        np.testing.assert_allclose(g, r, **TOL, err_msg=name)
    total = sum(sizes)
    if total < M:
        assert not np.asarray(got[0][total:]).any() and not np.asarray(got[1][total:]).any()
    for g in np.flatnonzero(np.asarray(sizes) == 0):
        assert not np.asarray(got[2][g]).any()


@needs_kernel
def test_the_layout_pads_odd_widths_casts_and_maps():
    """Widths that are not multiples of 16 are zero-padded; bfloat16 in, bfloat16 out; vmap
    runs the call once per slice."""
    x, w, sizes_G, dy = _case(30, 20, 12, [10, 15, 5])
    layout = GROUPED.get("cpu")(sizes_G, rows=30)
    want = jax.lax.ragged_dot(x, w, sizes_G)
    np.testing.assert_allclose(layout.unpack(layout.matmul(layout.pack(x), w)), want, **TOL)
    got_grads = jax.grad(lambda x, w: jnp.vdot(layout.matmul(x, w), dy), (0, 1))(x, w)
    want_grads = jax.grad(lambda x, w: jnp.vdot(jax.lax.ragged_dot(x, w, sizes_G), dy), (0, 1))(
        x, w
    )
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), got_grads, want_grads)
    half = layout.matmul(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(half.astype(jnp.float32), want, atol=0.2, rtol=0.05)
    x16, w16, _, _ = _case(30, 16, 16, [10, 15, 5])
    per_slice = jax.vmap(lambda x, w: grouped_matmul(x, w, sizes_G))
    batched = per_slice(jnp.stack([x16, -x16]), jnp.stack([w16, w16]))
    np.testing.assert_allclose(batched[1], -jax.lax.ragged_dot(x16, w16, sizes_G), **TOL)


def test_auto_picks_the_kernel_on_one_cpu_device_only(one_device, monkeypatch, caplog):
    grouped._report.cache_clear()
    sizes_G = jnp.asarray([3, 5], jnp.int32)
    caplog.set_level(logging.INFO, logger="llmjax.layers")
    layout = GROUPED.get("auto")(sizes_G, rows=8, block_size=4)
    if grouped.kernel_unavailable() is None:
        assert isinstance(layout, grouped.Kernel)
        assert "grouped matmuls by cpu (one CPU device)" in caplog.text
    monkeypatch.setenv(cpu_kernels.KERNELS_ENV, "off")
    assert isinstance(GROUPED.get("auto")(sizes_G, rows=8, block_size=4), grouped.Blocks)
    assert "grouped matmuls by blocks ($LLMJAX_CPU_KERNELS is off)" in caplog.text
    monkeypatch.delenv(cpu_kernels.KERNELS_ENV)
    monkeypatch.setattr(grouped.jax, "device_count", lambda: 8)
    assert grouped.kernel_unavailable() == "8 devices (the custom call has no sharding rule)"
    monkeypatch.setattr(grouped.jax, "default_backend", lambda: "gpu")
    assert grouped.kernel_unavailable() == "the backend is gpu"


@needs_kernel
@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_a_model_with_it_equals_blocks_in_loss_and_gradients(tiny_model, mlp):
    """The whole MoE model (uneven routing, shared expert, biases with gelu): the kernel's
    logits, auxiliary losses and parameter gradients equal the padded-blocks layout's."""
    cfg = dataclasses.replace(tiny_model, mlp=mlp, use_bias=mlp == "gelu")
    cfgs = {k: dataclasses.replace(cfg, moe=MoEConfig(n_experts=4, n_shared_experts=1,
                                                      kernel=k, block_size=8))  # fmt: skip
            for k in ("cpu", "blocks")}  # fmt: skip
    params = random_params(cfgs["cpu"])
    tokens = jax.random.randint(jax.random.key(1), (2, 24), 0, cfg.vocab_size)

    def loss(params, cfg):
        out = build_model(cfg).apply({"params": params}, tokens)
        return jax.nn.logsumexp(out.logits, -1).mean() + out.aux["loss"], out.logits

    results = {k: jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)(params, c)
               for k, c in cfgs.items()}  # fmt: skip
    (l_cpu, logits_cpu), g_cpu = results["cpu"]
    (l_blocks, logits_blocks), g_blocks = results["blocks"]
    np.testing.assert_allclose(l_cpu, l_blocks, rtol=1e-6)
    np.testing.assert_allclose(logits_cpu, logits_blocks, atol=1e-5, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4),
                 g_cpu, g_blocks)  # fmt: skip
