"""Head kinds on hand-made attention patterns, mean distance and first-token scores against
hand computations, and greedy head pruning on a known loss and on a model; the copying task's
rows."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.analysis import (
    induction_score,
    positional_profile,
    previous_token_score,
)
from llmjax.analysis.heads import (
    classify_heads,
    count_kinds,
    first_token_score,
    greedy_pruning,
    losses_along,
    mean_distance,
    positional_peak,
    prune_heads,
)
from llmjax.data.repeat_task import RepeatTask
from llmjax.errors import ConfigError
from llmjax.models import build_model
from llmjax.objectives.losses import cross_entropy
from tests.decode_utils import random_params


def _one_hot_rows(length, target_of):
    """[T, T]: query t attends only to key target_of(t)."""
    p = np.zeros((length, length))
    for t in range(length):
        p[t, target_of(t)] = 1.0
    return p


def _uniform_causal(length):
    p = np.tril(np.ones((length, length)))
    return p / p.sum(-1, keepdims=True)


def test_hand_built_heads_are_classified():
    block, t = 6, 12
    tokens = jnp.asarray([[3, 9, 4, 1, 7, 5] * 2])
    heads = [
        _one_hot_rows(t, lambda i: i - block + 1 if i >= block else 0),  # induction
        _one_hot_rows(t, lambda i: max(i - 1, 0)),  # previous token
        _one_hot_rows(t, lambda i: max(i - 3, 0)),  # three back
        _one_hot_rows(t, lambda i: 0),  # first token
        _uniform_causal(t),
    ]
    probs = jnp.asarray(np.stack(heads)[None, None], jnp.float32)  # [L=1, B=1, N=5, T, T]
    names = classify_heads(
        previous=previous_token_score(probs),
        induction=induction_score(probs, tokens),
        profile=positional_profile(probs),
        first=first_token_score(probs),
    )
    assert names == [["induction", "previous-token", "positional d=3", "first-token", "other"]]
    assert count_kinds(names) == {"induction": 1, "previous-token": 1, "positional": 1,
                                  "first-token": 1, "other": 1}  # fmt: skip


def test_thresholds_decide():
    """A head half on the previous token is previous-token at 0.5 and other at 0.6."""
    t = 8
    half = 0.5 * _one_hot_rows(t, lambda i: max(i - 1, 0)) + 0.5 * np.eye(t)
    probs = jnp.asarray(half[None, None, None], jnp.float32)
    scores = dict(previous=previous_token_score(probs), induction=np.zeros((1, 1)),
                  profile=positional_profile(probs), first=first_token_score(probs))  # fmt: skip
    assert classify_heads(**scores)[0][0] == "previous-token"
    strict = {"induction": 0.4, "previous-token": 0.6, "positional": 0.6, "first-token": 0.5}
    assert classify_heads(**scores, thresholds=strict)[0][0] == "other"


def test_positional_peak_ignores_far_distances():
    """A first-token head has all its mass at d = T - 1 for the last query; the peak search
    stops at T / 2, so it is not a positional head."""
    t = 8
    probs = jnp.asarray(_one_hot_rows(t, lambda i: 0)[None, None, None], jnp.float32)
    peak, _ = positional_peak(positional_profile(probs))
    assert peak[0, 0] < 0.5
    two_back = _one_hot_rows(t, lambda i: max(i - 2, 0))[None, None, None]
    peak, distance = positional_peak(positional_profile(jnp.asarray(two_back, jnp.float32)))
    assert distance[0, 0] == 2 and peak[0, 0] == 1.0


def test_mean_distance_and_first_token_score():
    t = 5
    heads = np.stack([np.eye(t), _uniform_causal(t), _one_hot_rows(t, lambda i: 0)])
    probs = jnp.asarray(heads[None, None], jnp.float32)
    want = [0.0, np.mean([i / 2 for i in range(t)]), np.mean(range(t))]
    np.testing.assert_allclose(mean_distance(probs)[0], want, rtol=1e-6)
    want_first = [0.0, np.mean([1 / (i + 1) for i in range(1, t)]), 1.0]
    np.testing.assert_allclose(first_token_score(probs)[0], want_first, rtol=1e-6)


def test_greedy_pruning_on_a_known_loss():
    """Loss = the summed importance of the removed heads: the least important go first, the
    curve rises monotonically, and removable counts heads within a tolerance."""
    importance = np.asarray([[0.3, 0.01, 0.2], [0.0, 0.5, 0.02]])
    calls = []

    def masked(masks_KxLxN):
        calls.append(masks_KxLxN.shape)
        return ((1.0 - masks_KxLxN) * importance).sum((1, 2))

    pruning = greedy_pruning(masked, 2, 3)
    assert pruning.order == ((1, 0), (0, 1), (1, 2), (0, 2), (0, 0), (1, 1))
    np.testing.assert_allclose(pruning.losses, np.cumsum([0.0, 0.0, 0.01, 0.02, 0.2, 0.3, 0.5]))
    assert np.all(np.diff(pruning.losses) >= 0)
    assert list(pruning.kept) == [6, 5, 4, 3, 2, 1, 0]
    assert pruning.removable(0.05) == 3 and pruning.removable(0.0) == 1
    assert pruning.removable(10.0) == 6
    assert set(calls) == {(7, 2, 3)}  # one shape: one compilation
    np.testing.assert_allclose(pruning.single, importance)
    np.testing.assert_allclose(losses_along(pruning.order, masked, 2, 3), pruning.losses)
    reversed_order = pruning.order[::-1]  # the most important first: above greedy's curve
    assert np.all(losses_along(reversed_order, masked, 2, 3) >= pruning.losses - 1e-12)


def test_pruning_all_heads_equals_removing_attention(tiny_model):
    cfg = dataclasses.replace(tiny_model, scan_layers=False)
    model, params = build_model(cfg), random_params(cfg)
    tokens = jax.random.randint(jax.random.key(0), (2, 9), 0, cfg.vocab_size)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
    more = jax.random.randint(jax.random.key(1), (2, 9), 0, cfg.vocab_size)
    other = {"inputs": more[:, :-1], "targets": more[:, 1:]}
    pruning = prune_heads(model, {"params": params}, batch, held_out=other)
    heads = cfg.n_layers * cfg.n_heads
    assert sorted(pruning.order) == [(i, j) for i in range(cfg.n_layers)
                                     for j in range(cfg.n_heads)]  # fmt: skip
    assert pruning.losses.shape == (heads + 1,)
    forward = jax.jit(lambda p, x: model.apply({"params": p}, x).logits)
    whole = cross_entropy(forward(params, batch["inputs"]), batch["targets"])[0]
    np.testing.assert_allclose(pruning.losses[0], whole, atol=1e-5)

    def zeroed(heads_of_layer):
        """The params with the output projection of the given heads ({layer: heads}) zeroed."""
        out = dict(params)
        for layer, heads in heads_of_layer.items():
            name = f"blocks_{layer}"
            attention = {**params[name]["attention"]}
            attention["out_kernel"] = attention["out_kernel"].at[heads].set(0.0)
            out[name] = {**params[name], "attention": attention}
        return out

    no_attention = zeroed({layer: slice(None) for layer in range(cfg.n_layers)})
    want = cross_entropy(forward(no_attention, batch["inputs"]), batch["targets"])[0]
    np.testing.assert_allclose(pruning.losses[-1], want, atol=1e-5)
    # the first round is each head's ablation alone; the cheapest of them went first
    for layer, head in [(0, 2), (1, 1)]:
        alone = cross_entropy(forward(zeroed({layer: head}), batch["inputs"]), batch["targets"])
        np.testing.assert_allclose(pruning.single[layer, head], alone[0], atol=1e-5)
    assert pruning.order[0] == np.unravel_index(np.argmin(pruning.single), pruning.single.shape)
    # the held-out curve runs the same order on the other batch: whole model to no attention
    other_whole = cross_entropy(forward(params, other["inputs"]), other["targets"])[0]
    other_none = cross_entropy(forward(no_attention, other["inputs"]), other["targets"])[0]
    np.testing.assert_allclose(pruning.held_out[[0, -1]], [other_whole, other_none], atol=1e-5)
    assert pruning.held_out.shape == pruning.losses.shape
    assert not np.allclose(pruning.held_out, pruning.losses)
    assert pruning.removable(1e-9, held_out=True) <= heads


def test_repeat_task_rows():
    task = RepeatTask(seq_len=20, n_symbols=12, min_block=3, max_block=8)
    b = task.batch_at(0, 16)
    assert b["inputs"].shape == b["targets"].shape == b["mask"].shape == (16, 20)
    row = np.concatenate([b["inputs"], b["targets"][:, -1:]], axis=1)
    np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
    periods = task.periods(b["mask"])
    for r, m, k in zip(row, b["mask"], periods, strict=True):
        assert 3 <= k <= 8 and len(set(r[:k])) == k  # a block of distinct symbols
        np.testing.assert_array_equal(r[k:], r[:-k])  # repeated with period k
        assert m[:k].sum() == 0 and m[k:].all()  # scored from the second copy's second token
    assert len(set(periods)) > 1  # the period varies
    np.testing.assert_array_equal(task.batch_at(3, 4)["inputs"], task.batch_at(3, 4)["inputs"])
    assert b["inputs"].max() < task.vocab_size


def test_repeat_task_rows_without_fill():
    task = RepeatTask(seq_len=21, n_symbols=12, min_block=3, max_block=9, fill=False)
    b = task.batch_at(1, 32)
    row = np.concatenate([b["inputs"], b["targets"][:, -1:]], axis=1)
    periods = task.periods(b["mask"])
    for r, m, k in zip(row, b["mask"], periods, strict=True):
        block = r[22 - k :]
        np.testing.assert_array_equal(r[22 - 2 * k : 22 - k], block)  # the block twice at the end
        assert len(set(block)) == k and not set(r[: 22 - 2 * k]) & set(block)  # filler apart
        assert m.sum() == k - 1 and m[22 - k :].all()  # targets of the copy's 2nd token on
    assert len(set(periods)) > 1


def test_repeat_task_checks():
    with pytest.raises(ConfigError, match="distinct"):
        RepeatTask(n_symbols=8, max_block=16)
    with pytest.raises(ConfigError, match="max_block"):
        RepeatTask(seq_len=16, max_block=16)
    with pytest.raises(ConfigError, match="repeated once"):
        RepeatTask(seq_len=16, max_block=9, fill=False)
