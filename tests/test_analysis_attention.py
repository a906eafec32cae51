"""Attention-head scores on hand-made probabilities, against hand computations; and head
ablation losses against zeroing that head's slice of the output projection."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.analysis import (
    head_ablation_losses,
    head_entropy,
    induction_score,
    induction_targets,
    positional_profile,
    previous_token_score,
    repeated_tokens,
)
from llmjax.models import build_model
from llmjax.objectives.losses import cross_entropy
from tests.decode_utils import random_params


def _uniform_causal(length):
    """[T, T]: each query spread evenly over itself and every earlier key."""
    p = np.tril(np.ones((length, length)))
    return p / p.sum(-1, keepdims=True)


def _one_hot_rows(length, target_of):
    """[T, T]: query t attends only to key target_of(t)."""
    p = np.zeros((length, length))
    for t in range(length):
        p[t, target_of(t)] = 1.0
    return p


def _stack(*heads):
    """Heads [T, T] -> probabilities [L=1, B=1, N, T, T] (float32)."""
    return jnp.asarray(np.stack(heads)[None, None], jnp.float32)


def test_previous_token_score():
    t = 5
    probs = _stack(_one_hot_rows(t, lambda i: max(i - 1, 0)), _uniform_causal(t), np.eye(t))
    want = [1.0, np.mean([1 / (i + 1) for i in range(1, t)]), 0.0]
    np.testing.assert_allclose(previous_token_score(probs)[0], want, rtol=1e-6)


def test_induction_score_on_a_repeated_block():
    block = 3
    tokens = jnp.asarray([[7, 2, 5, 7, 2, 5]])
    t = 2 * block
    # Head 0: each second-copy token attends to the token after its first occurrence (t - 2).
    induction = _one_hot_rows(t, lambda i: i - block + 1 if i >= block else 0)
    probs = _stack(induction, _uniform_causal(t), _one_hot_rows(t, lambda i: max(i - 1, 0)))
    uniform = np.mean([1 / (i + 1) for i in range(block, t)])
    np.testing.assert_allclose(induction_score(probs, tokens)[0], [1.0, uniform, 0.0], rtol=1e-6)


def test_induction_score_with_repeats_equals_a_loop():
    """Tokens repeating more than once: each query's mass on every key that followed an
    earlier occurrence of its token, averaged over queries that have one."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 3, (2, 9))
    raw = rng.random((2, 2, 3, 9, 9)) * np.tril(np.ones((9, 9)))
    probs = raw / raw.sum(-1, keepdims=True)
    want = np.zeros((2, 3))
    for layer in range(2):
        for head in range(3):
            scores = []
            for b in range(2):
                for q in range(9):
                    targets = {s + 1 for s in range(q) if tokens[b, s] == tokens[b, q]}
                    if targets:
                        scores.append(sum(probs[layer, b, head, q, s] for s in targets))
            want[layer, head] = np.mean(scores)
    got = induction_score(jnp.asarray(probs, jnp.float32), jnp.asarray(tokens))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_induction_targets_never_point_at_the_future():
    tokens = jnp.asarray([[1, 1, 1, 2]])
    targets = np.asarray(induction_targets(tokens))[0]
    expected = np.zeros((4, 4))
    expected[1, 1] = 1  # token 1 at 0, followed by key 1
    expected[2, 1] = expected[2, 2] = 1  # at 0 and 1, followed by keys 1 and 2
    np.testing.assert_array_equal(targets, expected)


def test_head_entropy():
    t = 4
    probs = _stack(np.eye(t), _uniform_causal(t))
    want = [0.0, np.mean([np.log(i + 1) for i in range(t)])]
    np.testing.assert_allclose(head_entropy(probs)[0], want, rtol=1e-6, atol=1e-7)


def test_positional_profile():
    t = 4
    probs = _stack(_one_hot_rows(t, lambda i: max(i - 2, 0)), _uniform_causal(t))
    # Head 0: distance 2 from query 2 on; queries 0 and 1 sit at distances 0 and 1.
    want_0 = [1 / 4, 1 / 3, 2 / 2, 0.0]
    want_1 = [np.mean([1 / (i + 1) for i in range(d, t)]) for d in range(t)]
    profile = positional_profile(probs)[0]
    np.testing.assert_allclose(profile, [want_0, want_1], rtol=1e-6)


def test_rows_that_see_no_key_are_left_out():
    t = 3
    head = _uniform_causal(t)
    head[0] = 0.0  # a query that sees nothing
    probs = _stack(head)
    np.testing.assert_allclose(previous_token_score(probs)[0], [np.mean([1 / 2, 1 / 3])])
    np.testing.assert_allclose(head_entropy(probs)[0], [np.mean([np.log(2), np.log(3)])])


def test_scores_refuse_probabilities_over_a_cache():
    with pytest.raises(ValueError, match=r"\[L, B, N, T, T\]"):
        head_entropy(jnp.ones((1, 1, 2, 3, 5)))


def test_repeated_tokens():
    tokens = np.asarray(repeated_tokens(jax.random.key(0), 3, 8, 61))
    assert tokens.shape == (3, 16) and tokens.dtype == np.int32
    np.testing.assert_array_equal(tokens[:, :8], tokens[:, 8:])
    assert all(len(set(row[:8])) == 8 for row in tokens) and tokens.max() < 61


def test_head_ablation_losses_equal_zeroing_each_head_in_the_params(tiny_model):
    cfg = dataclasses.replace(tiny_model, scan_layers=False)
    model, params = build_model(cfg), random_params(cfg)
    tokens = jax.random.randint(jax.random.key(0), (2, 9), 0, cfg.vocab_size)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
    changes = np.asarray(head_ablation_losses(model, {"params": params}, batch))
    assert changes.shape == (cfg.n_layers, cfg.n_heads) and np.isfinite(changes).all()
    forward = jax.jit(lambda p: model.apply({"params": p}, batch["inputs"]).logits)
    base = cross_entropy(forward(params), batch["targets"])[0]
    for layer, head in [(0, 0), (1, 3), (0, 2)]:
        name = f"blocks_{layer}"
        attention = dict(params[name]["attention"])
        attention["out_kernel"] = attention["out_kernel"].at[head].set(0.0)
        ablated = {**params, name: {**params[name], "attention": attention}}
        want = cross_entropy(forward(ablated), batch["targets"])[0] - base
        np.testing.assert_allclose(changes[layer, head], want, atol=1e-5)
    assert np.abs(changes).max() > 1e-4  # heads matter in a random model
