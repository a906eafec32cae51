"""Long-context attention variants against their definitions.

sliding_window and block_sparse equal the reference under their masks (forward and gradients,
with lengths that are not a multiple of the block); linear attention equals its explicit
quadratic formula and its recurrent form equals its parallel form; flash's compiled memory is
far below the reference's; bad inputs fail with errors that name the problem. RoPE scaling and
running beyond the trained length: tests/test_rope_scaling.py; decoding with every variant:
tests/test_decode_variants.py.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.attention import ATTENTION, Mask, UnsupportedMask, reference_attention
from llmjax.attention.auto import FUSED
from llmjax.attention.block_sparse import BlockSparsePattern, block_sparse_mask, make_block_sparse
from llmjax.attention.flash import _Static, block_pairs, flash_attention
from llmjax.attention.linear import (
    FavorFeatures,
    elu_plus_one,
    init_linear_state,
    linear_attention_step,
    linear_prefill,
    make_linear_attention,
)
from llmjax.attention.sliding_window import sliding_window_attention
from llmjax.config import ConfigError, ModelConfig
from llmjax.layers.positions import alibi_slopes
from llmjax.models import build_model, init_model

B, T, N, K, H = 2, 37, 4, 2, 8  # T = 37: not a multiple of any block below


def _qkv(length=T, n_kv=K, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    return (
        jax.random.normal(keys[0], (B, length, N, H)),
        jax.random.normal(keys[1], (B, length, n_kv, H)),
        jax.random.normal(keys[2], (B, length, n_kv, H)),
    )


def _positions(length=T):
    return jnp.broadcast_to(jnp.arange(length), (B, length))


SEGMENTS = jnp.asarray([[0] * 12 + [1] * 25, [0] * T])
LEFT_PAD = jnp.asarray([[False] * 6 + [True] * 31, [True] * T])
# row 0: a prefix of 13 tokens (segment 1) and continuations of 12 tokens each (2 and 3) placed
# right after it; row 1: one segment
TREE_POSITIONS = jnp.asarray([list(range(25)) + list(range(13, 25)), list(range(T))])
TREE_SEGMENTS = jnp.asarray([[1] * 13 + [2] * 12 + [3] * 12, [0] * T])
TREE_PARENTS = jnp.asarray([[1] * T, [0] * T])


def _output_and_grads(attend, mask, slopes):
    """Output on rows that see a key, and (q, k, v) gradients of a weighted sum, jitted once."""
    q, k, v = _qkv()
    rows = np.asarray(mask.dense().any(-1))[:, :, None, None]
    w = jax.random.normal(jax.random.key(9), q.shape) * rows

    def run(q, k, v):
        out, pullback = jax.vjp(lambda q, k, v: attend(q, k, v, mask, alibi_slopes=slopes), q, k, v)
        return out * rows, pullback(w)

    return jax.jit(run)(q, k, v)


def _assert_same(attend, reference_mask, mask=None, slopes=None):
    out, grads = _output_and_grads(attend, mask if mask is not None else reference_mask, slopes)
    ref, ref_grads = _output_and_grads(reference_attention, reference_mask, slopes)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- exact variants


@pytest.mark.parametrize(
    "mask",
    [
        Mask.causal_lm(_positions(), SEGMENTS, window=9),
        Mask(_positions(), _positions(), kv_valid=LEFT_PAD, window=5),
    ],
    ids=["segments", "left-padding"],
)
def test_sliding_window_equals_reference_under_band_mask(mask):
    """Blocks of 8 (T padded from 37 to 40), windows spanning 1-2 earlier blocks, with ALiBi."""

    def attend(q, k, v, m, alibi_slopes):
        return sliding_window_attention(q, k, v, m, alibi_slopes=alibi_slopes, block=8)

    _assert_same(attend, mask, slopes=jnp.asarray(alibi_slopes(N)))


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_block_sparse_equals_reference_under_its_mask(causal):
    pattern = BlockSparsePattern(block=4, local_blocks=2, global_blocks=1, stride=3)
    attend = make_block_sparse(pattern)
    mask = Mask(_positions(), _positions(), kv_valid=LEFT_PAD, causal=causal)
    dense = jnp.broadcast_to(
        jnp.asarray(block_sparse_mask(T, T, pattern, causal=causal)), (B, T, T)
    )
    _assert_same(attend, dataclasses.replace(mask, extra=dense), mask, jnp.asarray(alibi_slopes(N)))


def test_block_sparse_mask_pattern():
    pattern = BlockSparsePattern(block=2, local_blocks=2, global_blocks=1, stride=3)
    layout = pattern.layout(6, 6, causal=True).astype(int)
    expected = [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 0, 1, 1, 0, 0],  # global 0 (also stride 3), local 2-3
        [1, 1, 0, 1, 1, 0],  # global 0, stride 1, local 3-4
        [1, 0, 1, 0, 1, 1],  # global 0, stride 2, local 4-5
    ]
    np.testing.assert_array_equal(layout, expected)
    dense = block_sparse_mask(5, 5, pattern)  # a partial last block keeps the block layout
    np.testing.assert_array_equal(dense, layout[np.arange(5)[:, None] // 2, np.arange(5) // 2])


def test_flash_pads_lengths_that_are_not_a_block_multiple():
    """T = 37 with blocks of 8 x 16, under segments + window + ALiBi, and a dense extra mask."""
    mask = Mask.causal_lm(_positions(), SEGMENTS, window=11)

    def attend(q, k, v, m, alibi_slopes):
        return flash_attention(q, k, v, m, alibi_slopes=alibi_slopes, block_q=8, block_kv=16)

    _assert_same(attend, mask, slopes=jnp.asarray(alibi_slopes(N)))
    tree = Mask.causal_lm(TREE_POSITIONS, TREE_SEGMENTS, parents_BxT=TREE_PARENTS)
    _assert_same(attend, tree, slopes=jnp.asarray(alibi_slopes(N)))
    extra = jax.random.bernoulli(jax.random.key(3), 0.6, (B, T, T))
    _assert_same(attend, Mask(_positions(), _positions(), extra=extra, causal=False))


def test_flash_gradient_through_alibi_slopes():
    """The custom VJP also differentiates the ALiBi slopes (e.g. for learned slopes)."""
    q, k, v = _qkv()
    mask = Mask.causal_lm(_positions(), SEGMENTS)

    def grad_slopes(fn):
        loss = lambda s: (fn(q, k, v, mask, alibi_slopes=s) ** 2).sum()  # noqa: E731
        return jax.jit(jax.grad(loss))(jnp.asarray(alibi_slopes(N)))

    flash = grad_slopes(lambda *a, **kw: flash_attention(*a, **kw, block_q=8, block_kv=8))
    np.testing.assert_allclose(flash, grad_slopes(reference_attention), rtol=1e-4, atol=1e-4)


def test_flash_skips_block_pairs_no_query_can_see():
    pos = jnp.broadcast_to(jnp.arange(16), (2, 16))
    st = _Static(causal=True, window=None, scale=1.0, block_q=4, block_kv=4)
    causal = np.asarray(block_pairs(Mask.causal_lm(pos), st))
    np.testing.assert_array_equal(causal, np.tril(np.ones((4, 4), bool)))
    windowed = np.asarray(
        block_pairs(Mask.causal_lm(pos, window=3), dataclasses.replace(st, window=3))
    )
    np.testing.assert_array_equal(
        windowed, np.tril(np.ones((4, 4), bool)) & ~np.tril(np.ones((4, 4), bool), -2)
    )
    padded = Mask(pos, pos, kv_valid=jnp.arange(16)[None].repeat(2, 0) >= 5)  # keys 0-4 padding
    np.testing.assert_array_equal(np.asarray(block_pairs(padded, st))[:, 0], False)
    # a tree: prefix in block 0 (segment 1), continuations 2 and 3 in blocks 1-2 and 3, all
    # after the prefix; a continuation's block still reads the prefix's block
    tree = Mask.causal_lm(
        jnp.asarray([list(range(12)) + list(range(4, 8))] * 2),
        jnp.asarray([[1] * 4 + [2] * 8 + [3] * 4] * 2),
        parents_BxT=jnp.ones((2, 16), jnp.int32),
    )
    # (conservative: block 3's segment and parent span 1-3, so block 1 of segment 2 is kept)
    np.testing.assert_array_equal(
        np.asarray(block_pairs(tree, st)),
        [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 1]],
    )


@pytest.mark.slow
def test_flash_memory_far_below_reference_slow():
    _check_memory(8192)


def test_flash_memory_far_below_reference():
    _check_memory(2048)


def _check_memory(length):
    """Compiled temp memory of forward + backward: flash O(T), the reference O(T^2)."""
    q = jnp.zeros((1, length, 4, 64))
    mask = Mask.causal_lm(jnp.arange(length)[None], plain=True)

    def temp(fn):
        grad = jax.grad(lambda q, k, v: fn(q, k, v, mask).sum(), argnums=(0, 1, 2))
        return jax.jit(grad).lower(q, q, q).compile().memory_analysis().temp_size_in_bytes

    flash, reference = temp(flash_attention), temp(reference_attention)
    assert flash * 10 < reference, (flash, reference)


# ----------------------------------------------------------------------------- linear attention


def _linear_formula(q, k, v, feature_map, causal, valid=None):
    """out_t = sum_s phi(q_t).phi(k_s) v_s / sum_s phi(q_t).phi(k_s), in float64 NumPy."""
    s = H**-0.25
    fq = np.asarray(feature_map(q * s), np.float64)
    fk = np.asarray(feature_map(k * s), np.float64)
    out = np.zeros(q.shape)
    for b in range(B):
        for n in range(N):
            kv = n // (N // K)
            weights = fq[b, :, n] @ fk[b, :, kv].T  # T x S
            if causal:
                weights = np.tril(weights)
            if valid is not None:
                weights = weights * valid[b][None]
            total = weights.sum(-1)[:, None]  # 0 on rows that see no key (not compared)
            out[b, :, n] = weights @ np.asarray(v[b, :, kv], np.float64) / np.maximum(total, 1e-300)
    return out


@pytest.mark.parametrize(
    "feature_map", [elu_plus_one, FavorFeatures(n_features=16)], ids=["elu", "favor"]
)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_linear_attention_equals_quadratic_formula(feature_map, causal):
    q, k, v = _qkv()
    attend = jax.jit(make_linear_attention(feature_map, chunk=8), static_argnames=())
    mask = Mask(_positions(), _positions(), kv_valid=LEFT_PAD, causal=causal)
    out = attend(q, k, v, mask)
    expected = _linear_formula(q, k, v, feature_map, causal, np.asarray(LEFT_PAD))
    rows = np.asarray(mask.dense().any(-1))
    np.testing.assert_allclose(np.asarray(out)[rows], expected[rows], atol=2e-5, rtol=2e-5)


def test_linear_recurrent_form_equals_parallel_form():
    """Prefill the first 20 tokens into the state, then one step per token; and the decoding
    recurrence: a 13-token prompt in chunks of 4 continues the state, the rest in one call."""
    q, k, v = _qkv()
    mask = Mask.causal_lm(_positions())
    parallel = jax.jit(make_linear_attention(elu_plus_one, chunk=8))(q, k, v, mask)
    state = jax.jit(linear_prefill)(k[:, :20], v[:, :20])
    step = jax.jit(linear_attention_step)
    outs = []
    for t in range(20, T):
        state, out = step(state, q[:, t], k[:, t], v[:, t])
        outs.append(out)
    np.testing.assert_allclose(jnp.stack(outs, 1), parallel[:, 20:], atol=1e-5, rtol=1e-5)

    recurrence = dataclasses.replace(ATTENTION.get("linear").recurrent, chunk=4)

    @jax.jit
    def prompt_then_rest(q, k, v):
        split = lambda x, m: jax.tree.map(lambda a: a[:, :13] if m else a[:, 13:], x)  # noqa: E731
        state = recurrence.init(B, K, H)
        first, state = recurrence.extend(state, *split((q, k, v), 1), split(mask, 1))
        rest, _ = recurrence.extend(state, *split((q, k, v), 0), split(mask, 0))
        return jnp.concatenate([first, rest], 1), state

    both, after_prompt = prompt_then_rest(q, k, v)
    np.testing.assert_allclose(both, parallel, atol=1e-5, rtol=1e-5)
    prefill = linear_prefill(k[:, :13], v[:, :13])
    np.testing.assert_allclose(after_prompt.kv_BxKxFxH, prefill.kv_BxKxFxH, atol=1e-5, rtol=1e-5)
    empty = init_linear_state(B, K, H)
    assert empty.kv_BxKxFxH.shape == (B, K, H, H) and not empty.k_BxKxF.any()
    # A padded step (valid False) leaves the state unchanged.
    same, _ = step(state, q[:, 0], k[:, 0], v[:, 0], valid_B=jnp.zeros(B, bool))
    np.testing.assert_array_equal(same.kv_BxKxFxH, state.kv_BxKxFxH)


def test_favor_features_estimate_softmax_attention():
    """Performer's contract: error against exact softmax attention shrinks with more features."""
    q, k, v = (x * 0.5 for x in _qkv())
    mask = Mask(_positions(), _positions(), causal=False)
    exact = reference_attention(q, k, v, mask)

    def error(n):
        approx = jax.jit(make_linear_attention(FavorFeatures(n_features=n)))(q, k, v, mask)
        return float(jnp.linalg.norm(approx - exact) / jnp.linalg.norm(exact))

    few, many = error(8), error(1024)
    assert many < 0.1 and many < few / 3, (few, many)


# ----------------------------------------------------------------------------- conformance


def test_conformance_check_passes_exact_variants_and_catches_a_leak():
    from llmjax.attention.conformance import check_variant

    for row in check_variant(ATTENTION.get("xla"), masks=["segments", "left-padding"]):
        assert row["max_out_error"] < 1e-5 and row["max_grad_error"] < 1e-5, row
        assert row["reads_only_visible_keys"] and row["gqa_equals_repeated_mha"], row
    linear = {
        row["mask"]: row
        for row in check_variant(ATTENTION.get("linear"), masks=["causal", "window"])
    }
    assert "window" in linear["window"]["unsupported"]
    assert linear["causal"]["reads_only_visible_keys"] and linear["causal"]["max_out_error"] > 0.1

    def peeking(q, k, v, mask, *, alibi_slopes=None, scale=None):  # also sees one key ahead
        ahead = dataclasses.replace(mask, q_positions=mask.q_positions + 1)
        return reference_attention(q, k, v, ahead, alibi_slopes=alibi_slopes, scale=scale)

    assert not check_variant(peeking, masks=["causal"])[0]["reads_only_visible_keys"]


# ----------------------------------------------------------------------------- auto


def test_auto_uses_a_fused_kernel_when_it_serves_the_inputs_else_falls_back():
    q, k, v = _qkv()
    mask = Mask.causal_lm(_positions())
    backend = jax.default_backend()
    auto = ATTENTION.get("auto")
    calls = []

    def fused(q, k, v, mask, alibi_slopes, scale):
        calls.append(alibi_slopes is None)
        return jnp.zeros_like(q) if alibi_slopes is None else None  # serves only plain inputs

    previous = FUSED.get(backend) if backend in FUSED else None
    FUSED.unregister(backend)
    FUSED.register(backend)(fused)
    try:
        np.testing.assert_array_equal(auto(q, k, v, mask), 0.0)
        slopes = jnp.asarray(alibi_slopes(N))
        np.testing.assert_allclose(
            auto(q, k, v, mask, alibi_slopes=slopes),
            reference_attention(q, k, v, mask, alibi_slopes=slopes),
            atol=1e-5,
        )
        assert calls == [True, False]
    finally:
        FUSED.unregister(backend)
        if previous is not None:
            FUSED.register(backend)(previous)


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("window", [None, 0, -3])
def test_sliding_window_needs_a_positive_window(window):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="sliding_window.*window"):
        sliding_window_attention(q, k, v, Mask.causal_lm(_positions(), window=window))


def test_attention_window_must_be_positive_in_config():
    with pytest.raises(ConfigError, match="attention_window"):
        ModelConfig(attention="sliding_window", attention_window=0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: flash_attention(*_qkv(), Mask.causal_lm(_positions()), block_q=0),
        lambda: sliding_window_attention(*_qkv(), Mask.causal_lm(_positions(), window=4), block=-1),
        lambda: BlockSparsePattern(block=0),
        lambda: BlockSparsePattern(stride=0),
        lambda: make_linear_attention(chunk=0),
    ],
    ids=["flash", "sliding_window", "block_sparse", "block_sparse-stride", "linear"],
)
def test_block_sizes_must_be_positive(make):
    with pytest.raises(ValueError, match="must be a positive integer"):
        make()


@pytest.mark.parametrize(
    "variant, mask, slopes, feature",
    [
        ("linear", Mask.causal_lm(_positions(), window=4), None, "window"),
        ("linear", Mask.causal_lm(_positions(), SEGMENTS), None, "segments"),
        ("linear", Mask.causal_lm(_positions()), alibi_slopes(N), "ALiBi"),
        (
            "sliding_window",
            Mask(_positions(), _positions(), causal=False, window=4),
            None,
            "non-causal",
        ),
        (
            "sliding_window",
            Mask.causal_lm(TREE_POSITIONS, TREE_SEGMENTS, parents_BxT=TREE_PARENTS, window=9),
            None,
            "packed tree",
        ),
        (
            "block_sparse",
            Mask(_positions(), _positions(), extra=jnp.ones((B, T, T), bool)),
            None,
            "extra",
        ),
    ],
)
def test_variant_rejects_a_mask_feature_it_cannot_serve(variant, mask, slopes, feature):
    with pytest.raises(UnsupportedMask, match=f"{variant}.*{feature}"):
        ATTENTION.get(variant)(*_qkv(), mask, alibi_slopes=slopes)


def test_blockwise_variants_need_self_attention():
    q, _, _ = _qkv()
    k, v = _qkv(length=T + 3)[1:]
    mask = Mask(_positions(), jnp.broadcast_to(jnp.arange(T + 3), (B, T + 3)), window=4)
    with pytest.raises(UnsupportedMask, match="sliding_window.*same length"):
        sliding_window_attention(q, k, v, mask)


# ----------------------------------------------------------------------------- in the model


def _logits(cfg, params, tokens):
    return jax.jit(lambda p, x: build_model(cfg).apply({"params": p}, x).logits)(params, tokens)


def test_variants_run_in_the_model_through_config(tiny_model):
    """model.attention=NAME: exact variants give the xla model's logits (the others run in
    the model in tests/test_decode_variants.py)."""
    windowed = dataclasses.replace(tiny_model, attention_window=6)
    params, _ = init_model(tiny_model, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 20), 0, tiny_model.vocab_size)
    for cfg, variant in [(tiny_model, "flash"), (windowed, "sliding_window")]:
        np.testing.assert_allclose(
            _logits(dataclasses.replace(cfg, attention=variant), params, tokens),
            _logits(cfg, params, tokens),
            atol=1e-5,
            err_msg=variant,
        )
