"""model.value_head: a scalar head on the final hidden state (reward models, PPO's value)."""

import dataclasses
import logging

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from llmjax.config import PRESETS, apply_overrides
from llmjax.models import build_model, init_model, logical_axes
from llmjax.models.lora import merge_adapters, split_adapters, with_fresh_adapters
from llmjax.runs import init_from_config, load_run
from llmjax.train.fit import fit


def _tiny(*overrides):
    return apply_overrides(PRESETS["test-tiny"], list(overrides))


def test_head_scores_each_token_from_the_final_hidden_state():
    cfg = _tiny("model.value_head=true")
    params, _ = init_model(cfg.model, jax.random.key(0))
    assert params["value_head"]["kernel"].shape == (cfg.model.d_model, 1)
    assert logical_axes(cfg.model)["params"]["value_head"]["kernel"] == P("embed", None)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: x + rng.normal(0, 0.1, x.shape).astype(x.dtype), params)
    tokens = rng.integers(0, cfg.model.vocab_size, (2, 7)).astype(np.int32)
    out = build_model(cfg.model).apply({"params": params}, tokens, return_hidden=True)
    want = out.hidden @ params["value_head"]["kernel"][:, 0] + params["value_head"]["bias"][0]
    assert out.aux["value"].shape == (2, 7) and out.aux["value"].dtype == np.float32
    np.testing.assert_allclose(out.aux["value"], want, rtol=1e-5, atol=1e-6)
    # The head reads the hidden state only: the logits are those of the model without it.
    base = {k: v for k, v in params.items() if k != "value_head"}
    plain = build_model(_tiny().model).apply({"params": base}, tokens)
    np.testing.assert_array_equal(out.logits, plain.logits)


def test_lora_trains_the_head_and_merging_keeps_it():
    cfg = _tiny("model.value_head=true", "model.lora.rank=2")
    params, _ = init_model(cfg.model, jax.random.key(0))
    base, added = split_adapters(params)
    assert "value_head" in added and "value_head" not in base
    merged, merged_cfg = merge_adapters(params, cfg.model)
    assert merged_cfg.value_head and "value_head" in merged
    fresh = with_fresh_adapters(base, cfg.model, seed=0)
    np.testing.assert_array_equal(fresh["value_head"]["kernel"], 0.0)

    from llmjax.train.setup import build_training

    training = build_training(cfg)
    mask = training.trainable
    assert mask["value_head"]["kernel"] and mask["value_head"]["bias"]
    assert not mask["embed"]["embedding"]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("data") / "text.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 300)
    cfg = _tiny(f"data.path={corpus}", "train.steps=4", "train.eval_every=4")
    out = tmp_path_factory.mktemp("runs") / "base"
    fit(cfg, out, progress=False)
    return out


def test_a_run_with_a_head_starts_from_a_run_without_one(base_run):
    from llmjax.runs.init_from import open_source, restore_params
    from llmjax.train.trainer import Trainer

    cfg = apply_overrides(init_from_config(base_run), ["model.value_head=true"])
    state = Trainer(cfg).init_state()
    params, _, step = restore_params(
        open_source(base_run), cfg.model, state.params, state.model_state
    )
    source = load_run(base_run).params
    assert step == 4
    np.testing.assert_array_equal(params["value_head"]["kernel"], 0.0)
    np.testing.assert_array_equal(params["embed"]["embedding"], source["embed"]["embedding"])


def test_export_drops_the_head_with_a_warning(base_run, tmp_path, caplog):
    from llmjax.hf import export_hf

    run = load_run(base_run)
    cfg = dataclasses.replace(run.config.model, value_head=True)
    params = {**run.params, "value_head": {"kernel": np.ones((cfg.d_model, 1)), "bias": [0.0]}}
    with caplog.at_level(logging.WARNING):
        export_hf(cfg, params, tmp_path / "hf", tokenizer=run.tokenizer)
    assert "value head" in caplog.text
    assert (tmp_path / "hf" / "config.json").is_file()


def test_score_reads_the_head_at_each_sequences_last_token():
    from llmjax.align import score_tokens

    cfg = _tiny("model.value_head=true")
    params, _ = init_model(cfg.model, jax.random.key(0))
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda x: x + rng.normal(0, 0.1, x.shape).astype(x.dtype), params)
    model = build_model(cfg.model)
    seqs = [rng.integers(0, 200, n).astype(np.int32) for n in (3, 9, 1, 17)]
    got = score_tokens(model, {"params": params}, seqs, batch_size=3, pad_multiple=8)
    # One causal pass over the right-padded rows: position n - 1 sees only a row's own tokens.
    padded = np.zeros((len(seqs), 17), np.int32)
    for i, s in enumerate(seqs):
        padded[i, : len(s)] = s
    values = model.apply({"params": params}, padded).aux["value"]
    want = [values[i, len(s) - 1] for i, s in enumerate(seqs)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="no value head"):
        score_tokens(build_model(_tiny().model), {"params": params}, seqs)
