"""Parity with transformers for every HF family: logits, padding, loss, greedy decoding, export.

Each variant is a tiny random model built and saved locally by transformers (no network).
"""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

from llmjax.config import RopeScaling
from llmjax.decode.samplers import SamplingConfig
from llmjax.decode.tokens import generate_tokens
from llmjax.hf import export_hf, load_hf
from llmjax.models import build_model
from llmjax.objectives.losses import cross_entropy
from tests.hf_helpers import CONTEXT, HF_VARIANTS, VOCAB, make_hf_model, random_tokens

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


ATOL = 1e-4  # float32 logits
PROMPT, NEW = 8, 32  # greedy decoding: prompt length, generated tokens
# A config change that switches a variant's distinctive feature off: parity must then break,
# which shows the parity tests exercise the feature at all.
FEATURE_OFF = {
    "mistral-window-mqa": {"attention_window": None},
    "llama-gqa-llama3-untied": {"rope_scaling": RopeScaling()},
}


@dataclass
class Case:
    variant: str
    model_type: str
    hf: Any  # the transformers model
    directory: Path
    loaded: Any  # llmjax.hf.HFModel
    apply: Any  # jitted (params, tokens, positions, segments) -> logits

    def logits(self, tokens, positions=None, segments=None) -> np.ndarray:
        return np.asarray(self.apply(self.loaded.params, tokens, positions, segments))

    def hf_logits(self, tokens, **kwargs) -> np.ndarray:
        with torch.no_grad():
            return self.hf(torch.as_tensor(np.asarray(tokens, np.int64)), **kwargs).logits.numpy()


def _jit_apply(model_cfg):
    model = build_model(model_cfg)
    return jax.jit(lambda p, t, pos, seg: model.apply({"params": p}, t, pos, seg).logits)


@pytest.fixture(scope="module", params=list(HF_VARIANTS))
def case(request, tmp_path_factory) -> Case:
    variant = request.param
    hf = make_hf_model(variant)
    directory = tmp_path_factory.mktemp(variant)
    hf.save_pretrained(directory, safe_serialization=True)
    loaded = load_hf(directory)
    apply = _jit_apply(loaded.config.model)
    return Case(variant, hf.config.model_type, hf, directory, loaded, apply)


def _padded_batch(left: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, 0/1 valid mask, positions) for 3 rows of 20 tokens with 20, 13 and 7 valid."""
    tokens = random_tokens(3, 20, seed=1)
    valid = np.zeros((3, 20), np.int32)
    for row, n in enumerate((20, 13, 7)):
        valid[row, 20 - n :] = 1 if left else 0
        valid[row, :n] = 0 if left else 1
    positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0).astype(np.int32)
    tokens = np.where(valid == 1, tokens, 0).astype(np.int32)
    return tokens, valid, positions


def test_config_matches_transformers(case):
    cfg, hf = case.loaded.config.model, case.hf.config
    assert cfg.vocab_size == VOCAB and cfg.vocab_multiple == 1
    assert cfg.n_layers == hf.num_hidden_layers and cfg.max_seq_len == CONTEXT
    assert cfg.tie_embeddings == hf.tie_word_embeddings
    blocks = case.loaded.params["blocks"]
    assert all(x.shape[0] == cfg.n_layers for x in jax.tree.leaves(blocks))  # scan layout


def test_logits_match(case):
    tokens = random_tokens(2, PROMPT + NEW)
    want = case.hf_logits(tokens)
    diff = np.abs(case.logits(tokens) - want).max()
    assert diff < ATOL, f"{case.variant}: max |logit diff| {diff}"
    if case.variant in FEATURE_OFF:
        cfg = dataclasses.replace(case.loaded.config.model, **FEATURE_OFF[case.variant])
        without = np.asarray(_jit_apply(cfg)(case.loaded.params, tokens, None, None))
        assert np.abs(without - want).max() > 1e-2


def test_right_padding_logits_and_loss(case):
    tokens, valid, positions = _padded_batch(left=False)
    got = case.logits(tokens, positions, valid)
    labels = np.where(valid == 1, tokens, -100)
    with torch.no_grad():
        out = case.hf(
            torch.as_tensor(tokens.astype(np.int64)),
            attention_mask=torch.as_tensor(valid),
            labels=torch.as_tensor(labels.astype(np.int64)),
        )
    real = valid == 1
    diff = np.abs(got - out.logits.numpy())[real].max()
    assert diff < ATOL, f"{case.variant}: max |logit diff| {diff}"
    # transformers shifts labels left by one and ignores -100.
    loss, _ = cross_entropy(got[:, :-1], tokens[:, 1:], valid[:, 1:])
    assert abs(float(loss) - float(out.loss)) < 1e-5


def test_left_padding_with_explicit_positions(case):
    tokens, valid, positions = _padded_batch(left=True)
    got = case.logits(tokens, positions, valid)
    want = case.hf_logits(
        tokens,
        attention_mask=torch.as_tensor(valid),
        position_ids=torch.as_tensor(positions.astype(np.int64)),
    )
    diff = np.abs(got - want)[valid == 1].max()
    assert diff < ATOL, f"{case.variant}: max |logit diff| {diff}"


def test_greedy_generation_matches(case):
    """transformers decodes with its KV cache; llmjax both recomputes the whole window (the
    shape test_logits_match compiled) and decodes with its own KV cache."""
    prompt = random_tokens(2, PROMPT, seed=2)
    with torch.no_grad():
        want = case.hf.generate(
            torch.as_tensor(prompt.astype(np.int64)),
            attention_mask=torch.ones(prompt.shape, dtype=torch.long),
            max_new_tokens=NEW,
            do_sample=False,
            pad_token_id=0,
        ).numpy()
    window = np.zeros((2, PROMPT + NEW), np.int32)
    window[:, :PROMPT] = prompt
    for t in range(PROMPT, PROMPT + NEW):
        window[:, t] = case.logits(window)[:, t - 1].argmax(-1)
    np.testing.assert_array_equal(window, want)
    # The same 32 tokens with llmjax's own KV cache.
    cached = generate_tokens(
        build_model(case.loaded.config.model),
        {"params": case.loaded.params},
        [list(row) for row in prompt],
        max_new_tokens=NEW,
        key=jax.random.key(0),
        sampling=SamplingConfig(temperature=0.0),
        use_cache=True,
    )
    np.testing.assert_array_equal(cached.tokens, want[:, PROMPT:])


def test_export_round_trip(case, tmp_path):
    out = export_hf(case.loaded.config, case.loaded.params, tmp_path / "export")
    assert json.loads((out / "config.json").read_text())["model_type"] == case.model_type
    back = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
    tokens = random_tokens(2, 24, seed=3)
    with torch.no_grad():
        again = back.eval()(torch.as_tensor(tokens.astype(np.int64))).logits.numpy()
    np.testing.assert_allclose(again, case.hf_logits(tokens), atol=1e-6, rtol=0)
    assert load_hf(out).config.model == case.loaded.config.model
