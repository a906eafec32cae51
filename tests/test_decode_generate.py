"""Batched generation with an llmjax model: mixed-length batches equal each prompt alone (both
padding sides, with and without the cache), returned log-probs, rolling caches, bad input."""

import dataclasses

import jax
import numpy as np
import pytest

from llmjax.data import CharTokenizer
from llmjax.decode import SamplingConfig, generate, generate_tokens
from llmjax.models import build_model
from tests.decode_utils import random_params

N = 12  # new tokens
# Different lengths that pad to the same 8-token array, so "alone" reuses one compiled program.
PROMPTS = [np.asarray([5, 9, 2]), np.asarray([1, 2, 3, 4, 5, 6, 7]), np.asarray([8, 8, 8, 1, 4])]
GREEDY = SamplingConfig(temperature=0)


@pytest.fixture(scope="module")
def model_and_variables():
    from llmjax.config import PRESETS

    cfg = dataclasses.replace(
        PRESETS["test-tiny"].model, vocab_size=61, position="rope", n_kv_heads=2
    )
    return build_model(cfg), {"params": random_params(cfg)}


def _gen(model, variables, prompts, sampling=GREEDY, key=None, **kw):
    key = jax.random.key(0) if key is None else key
    return generate_tokens(
        model, variables, prompts, max_new_tokens=N, key=key, sampling=sampling, **kw
    )


def test_mixed_length_batch_equals_each_prompt_alone(model_and_variables):
    model, variables = model_and_variables
    alone = [_gen(model, variables, [p]) for p in PROMPTS]
    for kw in (dict(padding="left"), dict(padding="right"), dict(use_cache=False)):
        batch = _gen(model, variables, PROMPTS, **kw)
        for b, one in enumerate(alone):
            np.testing.assert_array_equal(batch.tokens[b], one.tokens[0], err_msg=str(kw))
            np.testing.assert_allclose(batch.log_probs[b], one.log_probs[0], atol=1e-5)
        assert batch.steps == N and (batch.lengths == N).all() and not batch.stopped.any()


def test_sampling_with_per_row_keys_equals_each_row_alone(model_and_variables):
    model, variables = model_and_variables
    sampling = SamplingConfig(temperature=0.9, top_k=20)
    keys = jax.random.split(jax.random.key(7), len(PROMPTS))
    batch = _gen(model, variables, PROMPTS, sampling, key=keys)
    for b, p in enumerate(PROMPTS):
        one = _gen(model, variables, [p], sampling, key=keys[b : b + 1])
        np.testing.assert_array_equal(batch.tokens[b], one.tokens[0])
    # Near-zero temperature: the same program (same active stages) reproduces greedy.
    cold = _gen(model, variables, PROMPTS, dataclasses.replace(sampling, temperature=1e-4))
    np.testing.assert_array_equal(cold.tokens, _gen(model, variables, PROMPTS).tokens)
    assert (batch.sample_entropy > 0).all() and (cold.sample_entropy < 1e-3).all()


def test_log_probs_are_the_models_token_log_probabilities(model_and_variables):
    model, variables = model_and_variables
    out = _gen(model, variables, PROMPTS, GREEDY)
    # Teacher-forced scoring of prompt + output, right-padded into one causal forward pass.
    seqs = [np.concatenate([p, out.tokens[b]]) for b, p in enumerate(PROMPTS)]
    longest = max(map(len, seqs))
    batch = np.stack([np.pad(s, (0, longest - len(s))) for s in seqs])
    log_probs = np.asarray(jax.nn.log_softmax(jax.jit(model.apply)(variables, batch).logits, -1))
    for b, p in enumerate(PROMPTS):
        rows = log_probs[b, len(p) - 1 : len(p) - 1 + N]
        want = np.take_along_axis(rows, out.tokens[b][:, None], 1)[:, 0]
        np.testing.assert_allclose(out.log_probs[b], want, atol=2e-5)
        assert np.all(out.log_probs[b] <= 0) and np.all(out.entropy[b] > 0)


def test_stop_ids_end_rows_and_pad_the_rest(model_and_variables):
    model, variables = model_and_variables
    free = _gen(model, variables, PROMPTS)
    stop = int(free.tokens[1, 3])  # row 1 produces it at step 3
    out = _gen(model, variables, PROMPTS, stop_ids=[stop], pad_id=0)
    for b in range(len(PROMPTS)):
        hits = np.flatnonzero(free.tokens[b] == stop)
        n = hits[0] + 1 if len(hits) else N
        assert out.lengths[b] == n and out.stopped[b] == bool(len(hits))
        np.testing.assert_array_equal(out.tokens[b, :n], free.tokens[b, :n])
        assert (out.tokens[b, n:] == 0).all()


def test_rolling_cache_generation_equals_recomputation():
    from llmjax.config import PRESETS

    cfg = dataclasses.replace(
        PRESETS["test-tiny"].model, vocab_size=61, position="rope", attention_window=8
    )
    model, variables = build_model(cfg), {"params": random_params(cfg, seed=1)}
    # Longer than max_seq_len=32: allowed, the cache keeps only window + chunk - 1 tokens.
    prompts = [np.arange(40) % 61, (np.arange(21) * 7) % 61]
    kw = dict(max_new_tokens=16, key=jax.random.key(0), sampling=GREEDY)
    cached = generate_tokens(model, variables, prompts, **kw)
    recomputed = generate_tokens(model, variables, prompts, use_cache=False, **kw)
    np.testing.assert_array_equal(cached.tokens, recomputed.tokens)
    np.testing.assert_allclose(cached.log_probs, recomputed.log_probs, atol=1e-5)


def test_bad_input_is_rejected_with_the_valid_range(model_and_variables):
    model, variables = model_and_variables
    ctx = model.cfg.max_seq_len
    with pytest.raises(ValueError, match=f"longer than the model's context \\(max_seq_len={ctx}"):
        _gen(model, variables, [np.zeros(ctx + 1, int)])
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        _gen(model, variables, [[1, 2], []])
    with pytest.raises(ValueError, match="token id 61; valid ids: 0..60"):
        _gen(model, variables, [[1, 61]])
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        generate_tokens(model, variables, [[1]], max_new_tokens=0, key=jax.random.key(0))
    tok = CharTokenizer("abc")
    with pytest.raises(ValueError, match="no BOS token"):
        generate(model, "", params=variables, tokenizer=tok)
    with pytest.raises(ValueError, match=r"top_p=1\.5 is out of range; valid: \(0, 1\]"):
        generate(model, [[1]], params=variables, top_p=1.5)
    with pytest.raises(ValueError, match="num_beams=0 is out of range"):
        generate(model, [[1]], params=variables, num_beams=0)
    with pytest.raises(ValueError, match="needs params"):
        generate(model, [[1]])


def test_unknown_run_directory(tmp_path):
    from llmjax.runs import RunDirError

    with pytest.raises(RunDirError, match="does not exist"):
        generate(tmp_path / "missing", "hello")
