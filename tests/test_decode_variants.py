"""Cached decoding with every attention variant equals full recomputation (float32, 1e-5):
KV caches for the softmax variants (rolling for the sliding window), the block-sparse pattern
over a cache, and linear attention's recurrent state, whose size does not grow with the length.
Variants that cannot serve a kind of cache say so."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.attention import ATTENTION
from llmjax.attention.block_sparse import BlockSparsePattern, make_block_sparse
from llmjax.attention.decoding import UnsupportedCache
from llmjax.decode import generate_tokens, init_cache
from llmjax.decode.samplers import SamplingConfig
from llmjax.layers.kv_cache import KVCache
from llmjax.layers.state_cache import StateCache
from llmjax.models import build_model
from tests.decode_utils import random_params
from tests.test_decode_cache import P, T, _check

# A pattern small enough that T = 14 tokens span several blocks: local, global and strided
# blocks all matter, and so does the block of each cached position.
SPARSE = "block_sparse_test"
WINDOW = 4

# Every registered variant not covered by tests/test_decode_cache.py (reference, xla), with
# position schemes, head layouts and cache layouts spread over the cases.
CASES = {
    "flash-alibi-gqa": dict(attention="flash", position="alibi", n_kv_heads=2),
    "auto-rope-loop": dict(attention="auto", position="rope", scan_layers=False),
    # Off a TPU, splash is flash (and decodes over the cache with flash).
    "splash-rope-gqa": dict(attention="splash", position="rope", n_kv_heads=2),
    "sliding_window-rolling-rope": dict(
        attention="sliding_window", attention_window=WINDOW, position="rope"
    ),
    "block_sparse-rope-mqa": dict(attention=SPARSE, position="rope", n_kv_heads=1),
    "linear-rope": dict(attention="linear", position="rope"),
    "linear_favor-learned-loop-gqa": dict(
        attention="linear_favor", position="learned", scan_layers=False, n_kv_heads=2
    ),
}


@pytest.fixture(scope="module", autouse=True)
def _sparse_variant():
    register = ATTENTION.register(SPARSE)
    register(
        make_block_sparse(BlockSparsePattern(block=2, local_blocks=2, global_blocks=1, stride=3))
    )
    yield
    ATTENTION.unregister(SPARSE)


def test_every_variant_is_covered():
    # SPARSE is the registered block_sparse with a smaller pattern (the same code).
    covered = {case["attention"] for case in CASES.values()} - {SPARSE}
    covered |= {"block_sparse", "reference", "xla"}
    assert set(ATTENTION.names()) - {SPARSE} <= covered


@pytest.mark.parametrize("name", list(CASES))
def test_cached_decoding_equals_full_recomputation(tiny_model, name):
    """Prefill (row 1 left-padded) then one token at a time, against one full forward pass."""
    cfg = dataclasses.replace(tiny_model, **CASES[name])
    if cfg.attention_window is None:
        _check(cfg)
    else:  # the rolling cache holds fewer slots than the sequence
        assert WINDOW + P - 1 < T
        _check(cfg, cache_len=WINDOW + P - 1, rolling=True)


def test_linear_generation_with_the_state_equals_recomputation(tiny_model):
    """llmjax's generation loop (prompts of different lengths, so one is left-padded; greedy)
    with the recurrent state picks the tokens that rerunning the model over each whole
    sequence picks. (The loop's own no-cache mode marks padding with segments, which linear
    attention cannot serve, so the recomputation here is one unpadded row at a time: later
    zeros on the right do not change a causal model's earlier logits.)"""
    cfg = dataclasses.replace(tiny_model, attention="linear", position="rope")
    model, variables = build_model(cfg), {"params": random_params(cfg, seed=1)}
    prompts = [np.arange(11) % 61, (np.arange(5) * 7) % 61]
    new = 6
    greedy = SamplingConfig(temperature=0)
    cached = generate_tokens(
        model, variables, prompts, max_new_tokens=new, key=jax.random.key(0), sampling=greedy
    )
    logits = jax.jit(lambda x: model.apply(variables, x).logits)
    for b, prompt in enumerate(prompts):
        buffer = np.zeros((1, len(prompt) + new), np.int32)
        buffer[0, : len(prompt)] = prompt
        for t in range(new):
            at = len(prompt) + t
            buffer[0, at] = int(np.argmax(logits(buffer)[0, at - 1, : cfg.vocab_size]))
        np.testing.assert_array_equal(cached.tokens[b], buffer[0, len(prompt) :])


def _leaf_shapes(tree):
    return [x.shape for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("scan", [True, False], ids=["scan", "loop"])
def test_recurrent_state_does_not_grow_with_the_length(tiny_model, scan):
    """O(1) per token: the linear state has no length axis; a KV cache grows with the length."""
    cfg = dataclasses.replace(tiny_model, attention="linear", scan_layers=scan)
    short, long = init_cache(cfg, 2, 16), init_cache(cfg, 2, 4096)
    assert isinstance(short, StateCache)
    assert _leaf_shapes(short) == _leaf_shapes(long)
    kv = init_cache(dataclasses.replace(cfg, attention="xla"), 2, 4096)
    assert isinstance(kv, KVCache) and max(x.size for x in jax.tree.leaves(kv)) >= 2 * 4096
    taken = short.take(jnp.asarray([1, 1, 0]))
    assert taken.batch_size == 3
    assert all(x.shape[int(scan)] == 3 for x in jax.tree.leaves(taken.layers))


def _trace(cfg, cache, length=2):
    """Traces one cached call without compiling it (errors are raised while tracing)."""
    model = build_model(cfg)
    params = random_params(cfg)
    tokens = jnp.zeros((cache.batch_size, length), jnp.int32)
    return jax.eval_shape(lambda p, c: model.apply({"params": p}, tokens, cache=c), params, cache)


def test_a_variant_that_cannot_serve_a_cache_says_so(tiny_model):
    linear = dataclasses.replace(tiny_model, attention="linear", attention_window=None)
    with pytest.raises(UnsupportedCache, match="'linear' .*recurrent state.*rolling=False"):
        init_cache(dataclasses.replace(linear, position="rope"), 1, 8, rolling=True)
    softmax = dataclasses.replace(tiny_model, attention="xla")
    with pytest.raises(UnsupportedCache, match="'linear' decodes with its recurrent state"):
        _trace(linear, init_cache(softmax, 1, 8))
    with pytest.raises(UnsupportedCache, match="'xla' has no recurrent state"):
        _trace(softmax, init_cache(linear, 1, 8))
    # The mask features linear attention cannot serve are refused over its state as well.
    alibi = dataclasses.replace(linear, position="alibi")
    with pytest.raises(ValueError, match="linear.*ALiBi"):
        _trace(alibi, init_cache(alibi, 1, 8))


def test_sliding_window_needs_its_window_over_a_cache(tiny_model):
    cfg = dataclasses.replace(tiny_model, attention="sliding_window")
    with pytest.raises(ValueError, match="sliding_window.*positive mask.window"):
        _trace(cfg, init_cache(cfg, 1, 8))
