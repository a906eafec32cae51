"""OLMo 2 (`olmo2`): a Llama-shaped decoder whose norms follow each sublayer (x + norm(f(x)))
and whose QK-norm is one RMSNorm over the whole query (and key) projection, all heads together.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from llmjax.config import ModelConfig
from llmjax.hf.family import register_hf
from llmjax.hf.llama import Llama


@register_hf("olmo2")
class Olmo2(Llama):
    """OLMo 2: post-sublayer RMSNorms, QK-norm over all heads, `attention_bias` for q/k/v/o."""

    architecture = "Olmo2ForCausalLM"
    export_rank = 20
    norm_position = "post_branch"
    qk_norm = True
    features = frozenset({"qk_norm_scope"})

    def norm_tensors(self) -> dict[str, str]:
        return {
            "attention_post_norm": "post_attention_layernorm",
            "mlp_post_norm": "post_feedforward_layernorm",
        }

    def features_from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        return {"qk_norm_scope": "all"}

    def biases_from_hf(self, hf: dict[str, Any]) -> dict[str, bool | None]:
        attention = bool(hf.get("attention_bias", False))
        return {"qkv_bias": attention or None, "out_bias": attention or None}

    def extra_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        return {"attention_bias": cfg.has_qkv_bias}

    def variant_cannot_express(self, cfg: ModelConfig) -> list[str]:
        reasons = super().variant_cannot_express(cfg)
        reasons += [] if cfg.qk_norm_scope == "all" else ["OLMo 2 needs model.qk_norm_scope='all'"]
        if cfg.has_mlp_bias:
            reasons.append("OLMo 2 has no MLP biases")
        return reasons

    def export_config(self, cfg: ModelConfig) -> ModelConfig:
        attention = cfg.has_qkv_bias or cfg.has_out_bias
        return dataclasses.replace(
            cfg,
            use_bias=False,
            qkv_bias=attention or None,
            out_bias=attention or None,
            mlp_bias=None,
        )
