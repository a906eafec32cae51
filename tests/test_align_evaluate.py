"""Measuring a policy's sampled replies: KL to a reference, the ids a reward model reads."""

import jax
import numpy as np
import pytest

from llmjax.align.evaluate import sample_replies, win_rate
from llmjax.align.rollout import PromptSet
from llmjax.config import PRESETS, apply_overrides
from llmjax.data import ByteTokenizer
from llmjax.data.instruct import SimpleTemplate
from llmjax.models import build_model, init_model


@pytest.fixture(scope="module")
def policy():
    cfg = apply_overrides(PRESETS["test-tiny"], ["model.max_seq_len=96", "model.position=rope"])
    params, _ = init_model(cfg.model, jax.random.key(0))
    return build_model(cfg.model), params


def test_replies_their_ids_and_kl(policy):
    model, params = policy
    tok = ByteTokenizer()
    prompts = PromptSet.build(["talk about rain", "a word about tea"], tok, SimpleTemplate())
    key = jax.random.key(3)
    same = sample_replies(
        policy, prompts, key=key, samples=3, max_new_tokens=12, reference=policy, tokenizer=tok
    )
    assert same.prompts == ["talk about rain"] * 3 + ["a word about tea"] * 3
    np.testing.assert_allclose(same.kl, 0.0, atol=1e-6)  # KL of a policy to itself
    for i, seq in enumerate(same.sequences):
        prompt = prompts.ids[i // 3]
        np.testing.assert_array_equal(seq[: len(prompt)], prompt)
        # the reply's tokens, its stop token left out (what a reward model scores)
        assert len(seq) == len(prompt) + same.lengths[i] - int(same.stopped[i])
    other = jax.tree.map(lambda x: x * 1.5, params)
    moved = sample_replies(
        (model, other), prompts, key=key, samples=3, max_new_tokens=12, reference=policy,
        tokenizer=tok,
    )  # fmt: skip
    assert moved.kl.mean() > 0  # a Monte Carlo estimate of KL(policy || reference) > 0


def test_win_rate_counts_ties_half():
    assert win_rate(np.array([1.0, 0.0, 0.5]), np.array([0.0, 0.0, 1.0])) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        win_rate(np.zeros(2), np.zeros(3))
