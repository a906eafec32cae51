"""LoRA adapters exported in PEFT's format: `peft` loads them on the exported base and gives
llmjax's logits; a LoRA run converts merged or as base + adapter."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from llmjax.cli import main
from llmjax.config import LoraConfig, ModelConfig
from llmjax.hf import HFError, export_hf, export_peft
from llmjax.models import build_model
from llmjax.models.lora import split_adapters, without_lora
from tests.hf_helpers import random_params, random_tokens

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

GPT2 = ModelConfig(vocab_size=64, max_seq_len=32, d_model=32, n_layers=2, n_heads=4)
LLAMA = ModelConfig(
    vocab_size=64,
    max_seq_len=32,
    d_model=32,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    d_ff=64,
    mlp="swiglu",
    norm="rmsnorm",
    position="rope",
    use_bias=False,
    tie_embeddings=False,
)


def _peft_logits(base_dir, adapter_dir, tokens):
    model = transformers.AutoModelForCausalLM.from_pretrained(base_dir, attn_implementation="eager")
    model = peft.PeftModel.from_pretrained(model, adapter_dir).eval()
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens, np.int64))).logits.numpy()


@pytest.mark.parametrize(
    "base, lora",
    [
        (LLAMA, LoraConfig(rank=4, alpha=8.0)),
        (LLAMA, LoraConfig(rank=2, alpha=16.0, targets="query|value|down")),
        (dataclasses.replace(LLAMA, scan_layers=False), LoraConfig(4, targets="blocks_1/")),
        (GPT2, LoraConfig(rank=4, alpha=8.0)),
        (GPT2, LoraConfig(rank=2, targets="key|fc_out")),  # part of the fused c_attn
    ],
    ids=["llama-all", "llama-qvd", "llama-one-layer", "gpt2-all", "gpt2-key-fc_out"],
)
def test_peft_loads_the_adapter_on_the_exported_base_with_llmjax_logits(base, lora, tmp_path):
    cfg = dataclasses.replace(base, lora=lora)
    params = random_params(cfg, 0)
    tokens = random_tokens(2, 16, vocab_size=64)
    ours = np.asarray(build_model(cfg).apply({"params": params}, tokens).logits)
    base_params, _ = split_adapters(params)
    base_only = np.asarray(
        build_model(without_lora(cfg)).apply({"params": base_params}, tokens).logits
    )
    assert np.abs(ours - base_only).max() > 1e-2  # the adapters matter
    export_hf(without_lora(cfg), base_params, tmp_path / "base")
    export_peft(cfg, params, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == lora.rank
    np.testing.assert_allclose(
        _peft_logits(tmp_path / "base", tmp_path / "adapter", tokens), ours, atol=1e-4, rtol=0
    )
    # Merged into the weights instead, transformers alone gives the same logits.
    merged = export_hf(cfg, params, tmp_path / "merged")
    model = transformers.AutoModelForCausalLM.from_pretrained(merged, attn_implementation="eager")
    with torch.no_grad():
        theirs = model(torch.as_tensor(np.asarray(tokens, np.int64))).logits.numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)


def test_a_lora_run_converts_as_base_plus_adapter(tmp_path, capsys):
    from llmjax.config import PRESETS, apply_overrides
    from llmjax.train.fit import fit

    cfg = apply_overrides(
        PRESETS["test-tiny"],
        ["train.steps=2", "model.lora.rank=2", "optim.lr=0.05", "optim.warmup_steps=0"],
    )
    result = fit(cfg, tmp_path / "run", progress=False)
    assert (
        main(
            [
                "convert",
                "--to-hf",
                str(tmp_path / "run"),
                "--out",
                str(tmp_path / "hf"),
                "--adapter",
            ]
        )
        == 0
    )
    assert (tmp_path / "hf" / "config.json").is_file()
    assert (tmp_path / "hf" / "adapter" / "adapter_model.safetensors").is_file()
    tokens = random_tokens(2, 16, vocab_size=250)
    ours = np.asarray(
        build_model(result.config.model).apply({"params": result.state.params}, tokens).logits
    )
    theirs = _peft_logits(tmp_path / "hf", tmp_path / "hf" / "adapter", tokens)
    np.testing.assert_allclose(theirs, ours[..., : theirs.shape[-1]], atol=1e-4, rtol=0)
    capsys.readouterr()
    plain = tmp_path / "plain"
    assert main(["convert", "--to-hf", str(tmp_path / "hf"), "--out", str(plain)]) == 2
    fit(apply_overrides(PRESETS["test-tiny"], ["train.steps=1"]), plain, progress=False)
    capsys.readouterr()
    assert main(["convert", "--to-hf", str(plain), "--out", str(tmp_path / "x"), "--adapter"]) == 2
    assert "has no LoRA adapters" in capsys.readouterr().err


def test_export_peft_refuses_a_model_without_adapters(tmp_path):
    with pytest.raises(HFError, match="no LoRA adapters"):
        export_peft(GPT2, random_params(GPT2, 0), tmp_path / "a")
    assert jax.device_count() >= 1
