"""Qwen3 (`qwen3`): Qwen2's layout with QK-norm, and `attention_bias` switching q/k/v/o biases.

Qwen3 normalizes each query and key head with its own RMSNorm over the head dimension before
RoPE, which is llmjax's `model.qk_norm` as it stands (one scale [head_dim] shared by the heads).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from llmjax.config import ModelConfig
from llmjax.hf.family import register_hf
from llmjax.hf.llama import Qwen2


@register_hf("qwen3")
class Qwen3(Qwen2):
    """Qwen3 dense models: no biases by default (one switch for q, k, v and o), no MLP bias."""

    architecture = "Qwen3ForCausalLM"
    export_rank = 3
    qk_norm = True

    def biases_from_hf(self, hf: dict[str, Any]) -> dict[str, bool | None]:
        attention = bool(hf.get("attention_bias", False))
        return {"qkv_bias": attention or None, "out_bias": attention or None}

    def extra_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        return {**super().extra_to_hf(cfg), "attention_bias": cfg.has_qkv_bias}

    def variant_cannot_express(self, cfg: ModelConfig) -> list[str]:
        if cfg.has_mlp_bias:
            return ["Qwen3 has no MLP biases"]
        return []

    def export_config(self, cfg: ModelConfig) -> ModelConfig:
        attention = cfg.has_qkv_bias or cfg.has_out_bias
        return dataclasses.replace(
            cfg,
            use_bias=False,
            qkv_bias=attention or None,
            out_bias=attention or None,
            mlp_bias=None,
        )
