"""Teacher-forced reply scores: a reply the model writes greedily scores exact, one token off
does not, packing changes nothing, and end markers are found in the masks."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.config import PRESETS, apply_overrides
from llmjax.data import ByteTokenizer
from llmjax.data.instruct import Encoded, encode_all, make_tasks
from llmjax.eval.instruct import ReplyScorer, end_mask
from llmjax.models import build_model, init_model

SEQ = 32


@pytest.fixture(scope="module")
def tiny():
    cfg = PRESETS["test-tiny"].model
    params, _ = init_model(cfg, jax.random.key(0))
    return cfg, build_model(cfg), params


def _padded_logits(model, params, ids: np.ndarray, length: int) -> np.ndarray:
    """Logits of `ids` [N] computed in a window of `length` (one compiled shape; the padding
    after the ids cannot change them: the model is causal)."""
    window = np.zeros((1, length), np.int32)
    window[0, : len(ids)] = ids
    logits = _apply(model)({"params": params}, jnp.asarray(window)).logits
    return np.asarray(logits, np.float64)[0, : len(ids)]


@functools.cache
def _apply(model):
    return jax.jit(model.apply)


def _greedy(model, params, prompt: np.ndarray, n: int) -> np.ndarray:
    """n tokens of naive greedy decoding (a full forward pass per token)."""
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(_padded_logits(model, params, np.asarray(ids), SEQ)[-1].argmax()))
    return np.asarray(ids[len(prompt) :], np.int32)


def _conversation(prompt: np.ndarray, reply: np.ndarray) -> Encoded:
    """A prompt (untrained) and a reply whose last token plays the end marker."""
    mask = np.concatenate([np.zeros(len(prompt)), np.ones(len(reply))]).astype(np.int32)
    return Encoded(np.concatenate([prompt, reply]).astype(np.int32), mask)


def test_greedy_replies_score_exact_and_a_wrong_token_does_not(tiny):
    cfg, model, params = tiny
    rng = np.random.default_rng(0)
    conversations, expect = [], []
    for i in range(6):
        prompt = rng.integers(0, 250, int(rng.integers(3, 9))).astype(np.int32)
        reply = _greedy(model, params, prompt, 5)
        if i % 3 == 1:  # wrong "end marker": the answer is right, the stop is not
            reply[-1] = (reply[-1] + 1) % 250
        if i % 3 == 2:  # a wrong answer token
            reply[1] = (reply[1] + 1) % 250
        conversations.append(_conversation(prompt, reply))
        expect.append((i % 3 == 0, i % 3 != 2))
    losses = []
    for batch_size in (1, 4):  # one conversation per batch, or several packed in a row
        scorer = ReplyScorer.for_model(model, batch_size=batch_size, seq_len=SEQ)
        scores = scorer(params, conversations)
        assert list(zip(scores.exact.tolist(), scores.answer.tolist(), strict=True)) == expect
        losses.append(scores.loss)
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    rates = scores.rates()
    assert rates["exact"] == pytest.approx(2 / 6) and rates["answer"] == pytest.approx(4 / 6)
    by = scores.by_group(["x", "y", "z"] * 2)
    assert by["x"]["exact"] == 1.0 and by["y"]["answer"] == 1.0 and by["z"]["answer"] == 0.0


def test_reply_loss_is_the_mean_nll_of_the_reply_tokens():
    cfg = apply_overrides(PRESETS["test-tiny"], ["model.max_seq_len=96"]).model
    model, (params, _) = build_model(cfg), init_model(cfg, jax.random.key(1))
    conversations, _ = encode_all(
        [e.conversation() for e in make_tasks(0, 5, "train")], ByteTokenizer(), 96
    )
    scores = ReplyScorer.for_model(model, batch_size=2, seq_len=96)(params, conversations)
    for e, loss in zip(conversations, scores.loss, strict=True):
        logits = _padded_logits(model, params, e.ids[:-1], 96)
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1))[:, None]
        logp -= logits.max(-1, keepdims=True)
        nll = -np.take_along_axis(logp, e.ids[1:, None], -1)[:, 0]
        trained = e.loss_mask[1:] > 0
        np.testing.assert_allclose(loss, nll[trained].mean(), rtol=1e-5)


def test_end_mask_marks_the_last_tokens_of_each_reply():
    mask = np.asarray([0, 0, 1, 1, 1, 0, 1, 1, 0, 1])
    np.testing.assert_array_equal(end_mask(mask, 1), [0, 0, 0, 0, 1, 0, 0, 1, 0, 1])
    np.testing.assert_array_equal(end_mask(mask, 2), [0, 0, 0, 1, 1, 0, 1, 1, 0, 1])
    # The byte tokenizer ends each reply with its EOS id, the last trained token.
    (e,), _ = encode_all([make_tasks(0, 1, "train")[0].conversation()], ByteTokenizer(), 96)
    ends = np.flatnonzero(end_mask(e.loss_mask, 1))
    assert e.ids[ends].tolist() == [ByteTokenizer().eos_id]


def test_unscorable_conversations_and_bad_settings_are_refused(tiny):
    cfg, model, params = tiny
    with pytest.raises(ValueError, match="end_tokens"):
        ReplyScorer.for_model(model, batch_size=0, seq_len=SEQ)
    prompt_only = Encoded(np.arange(5, dtype=np.int32), np.zeros(5, np.int32))
    with pytest.raises(ValueError, match="train_on='responses'"):
        ReplyScorer.for_model(model, batch_size=2, seq_len=SEQ)(params, [prompt_only])
