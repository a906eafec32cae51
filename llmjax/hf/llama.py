"""The Llama family: Llama 2/3 (`llama`), Mistral (sliding window) and Qwen2 (q/k/v biases).

All three are pre-RMSNorm, SwiGLU, RoPE decoders with grouped-query attention; llmjax's RoPE
already rotates the two halves of each head as transformers does, so q/k weights are copied
without a permutation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from llmjax.config import ModelConfig
from llmjax.hf.family import (
    HFError,
    HFFamily,
    TensorMap,
    bias,
    features_off,
    linear,
    mismatch,
    register_hf,
    required,
    same,
)
from llmjax.hf.rope import rope_cannot_express, rope_from_hf, rope_to_hf


@register_hf("llama")
class Llama(HFFamily):
    """Llama 2 and 3 (3.1/3.2 "llama3" RoPE scaling), and models saved as `llama`."""

    architecture = "LlamaForCausalLM"
    base_prefix = "model."
    ignored = (r"(model\.)?layers\.\d+\.self_attn\.rotary_emb\.inv_freq",)
    export_rank = 0
    # ---- the block as the family builds it (subclasses change what their family changes)
    mlp = "swiglu"
    norm = "rmsnorm"
    norm_position = "pre"
    activation_key = "hidden_act"  # the config.json key naming the MLP's activation
    activations: tuple[str, ...] = ("silu",)  # values that mean it (the first is exported)
    qk_norm = False  # per-head RMSNorm of q and k before RoPE (self_attn.q_norm / k_norm)
    embed_scale = False
    tied_default = False  # tie_word_embeddings when config.json leaves it out
    features: frozenset[str] = frozenset()  # the BLOCK_FEATURES it stores (family.py)

    def norm_tensors(self) -> dict[str, str]:
        """llmjax block norm -> the HF layer's norm module holding it."""
        return {"attention_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}

    def features_from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        """ModelConfig fields of the family's `features`, read from config.json."""
        return {}

    def features_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        return {}

    # ---- the parts the variants change
    def window_from_hf(self, hf: dict[str, Any]) -> int | None:
        return None

    def biases_from_hf(self, hf: dict[str, Any]) -> dict[str, bool | None]:
        attention = bool(hf.get("attention_bias", False))
        return {
            "qkv_bias": attention or None,
            "out_bias": attention or None,
            "mlp_bias": bool(hf.get("mlp_bias", False)) or None,
        }

    def extra_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        return {"attention_bias": cfg.has_qkv_bias, "mlp_bias": cfg.has_mlp_bias}

    def variant_cannot_express(self, cfg: ModelConfig) -> list[str]:
        return mismatch(cfg, "attention_window", None, "Llama")

    def export_config(self, cfg: ModelConfig) -> ModelConfig:
        # One `attention_bias` switch covers q, k, v and o: a missing one is exported as zeros.
        attention = cfg.has_qkv_bias or cfg.has_out_bias
        return dataclasses.replace(
            cfg,
            use_bias=False,
            qkv_bias=attention or None,
            out_bias=attention or None,
            mlp_bias=cfg.has_mlp_bias or None,
        )

    # ---- shared by the family
    def config_from_hf(self, hf: dict[str, Any]) -> ModelConfig:
        t = self.model_type
        activation = hf.get(self.activation_key, self.activations[0])
        if activation not in self.activations:
            raise HFError(
                f"config.json (model_type={t!r}) has {self.activation_key}={activation!r}; "
                f"llmjax's {self.mlp} MLP uses {' or '.join(self.activations)}"
            )
        d_model = required(hf, "hidden_size", t)
        n_heads = required(hf, "num_attention_heads", t)
        n_kv = hf.get("num_key_value_heads") or n_heads
        head_dim = hf.get("head_dim") or d_model // n_heads
        theta, scaling = rope_from_hf(hf, t)
        return ModelConfig(
            vocab_size=required(hf, "vocab_size", t),
            max_seq_len=required(hf, "max_position_embeddings", t),
            d_model=d_model,
            n_layers=required(hf, "num_hidden_layers", t),
            n_heads=n_heads,
            n_kv_heads=None if n_kv == n_heads else n_kv,
            head_dim=None if head_dim * n_heads == d_model else head_dim,
            d_ff=required(hf, "intermediate_size", t),
            mlp=self.mlp,
            norm=self.norm,
            norm_position=self.norm_position,
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            position="rope",
            rope_theta=theta,
            rope_scaling=scaling,
            qk_norm=self.qk_norm,
            embed_scale=self.embed_scale,
            use_bias=False,
            **self.biases_from_hf(hf),
            tie_embeddings=hf.get("tie_word_embeddings", self.tied_default),
            init_std=hf.get("initializer_range", 0.02),
            **{"attention_window": self.window_from_hf(hf), **self.features_from_hf(hf)},
        )

    def config_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        return {
            "vocab_size": cfg.vocab_size,
            "max_position_embeddings": cfg.max_seq_len,
            "hidden_size": cfg.d_model,
            "intermediate_size": cfg.ffn_dim,
            "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": cfg.kv_heads,
            "head_dim": cfg.dim_head,
            self.activation_key: self.activations[0],
            "rms_norm_eps": cfg.norm_eps,
            "initializer_range": cfg.init_std,
            **rope_to_hf(cfg),
            **self.extra_to_hf(cfg),
            **self.features_to_hf(cfg),
        }

    def tensors(self, cfg: ModelConfig) -> list[TensorMap]:
        V, D, F = cfg.vocab_size, cfg.d_model, cfg.ffn_dim
        N, K, H = cfg.n_heads, cfg.kv_heads, cfg.dim_head
        L, A = "model.layers.{i}.", "blocks/attention/"
        maps = [
            same("model.embed_tokens.weight", "embed/embedding", (V, D)),
            same("model.norm.weight", "final_norm/scale", (D,)),
            *(
                same(L + f"{hf}.weight", f"blocks/{norm}/scale", (D,))
                for norm, hf in self.norm_tensors().items()
            ),
            linear(L + "self_attn.q_proj.weight", A + "query_kernel", (D,), (N, H)),
            linear(L + "self_attn.k_proj.weight", A + "key_kernel", (D,), (K, H)),
            linear(L + "self_attn.v_proj.weight", A + "value_kernel", (D,), (K, H)),
            linear(L + "self_attn.o_proj.weight", A + "out_kernel", (N, H), (D,)),
            linear(L + "mlp.gate_proj.weight", "blocks/mlp/gate/kernel", (D,), (F,)),
            linear(L + "mlp.up_proj.weight", "blocks/mlp/up/kernel", (D,), (F,)),
            linear(L + "mlp.down_proj.weight", "blocks/mlp/down/kernel", (F,), (D,)),
        ]
        if cfg.qk_norm and cfg.qk_norm_scope == "all":  # one scale per value of all heads
            maps += [
                bias(L + "self_attn.q_norm.weight", A + "query_norm/scale", (N, H)),
                bias(L + "self_attn.k_norm.weight", A + "key_norm/scale", (K, H)),
            ]
        elif cfg.qk_norm:
            maps += [
                same(L + "self_attn.q_norm.weight", A + "query_norm/scale", (H,)),
                same(L + "self_attn.k_norm.weight", A + "key_norm/scale", (H,)),
            ]
        if cfg.has_qkv_bias:
            maps += [
                bias(L + "self_attn.q_proj.bias", A + "query_bias", (N, H)),
                bias(L + "self_attn.k_proj.bias", A + "key_bias", (K, H)),
                bias(L + "self_attn.v_proj.bias", A + "value_bias", (K, H)),
            ]
        if cfg.has_out_bias:
            maps.append(same(L + "self_attn.o_proj.bias", A + "out_bias", (D,)))
        if cfg.has_mlp_bias:
            maps += [
                same(L + "mlp.gate_proj.bias", "blocks/mlp/gate/bias", (F,)),
                same(L + "mlp.up_proj.bias", "blocks/mlp/up/bias", (F,)),
                same(L + "mlp.down_proj.bias", "blocks/mlp/down/bias", (D,)),
            ]
        if not cfg.tie_embeddings:
            maps.append(linear("lm_head.weight", "lm_head/kernel", (D,), (V,)))
        return maps

    def cannot_express(self, cfg: ModelConfig) -> list[str]:
        name = type(self).__name__
        reasons = []
        for field, wanted in (
            ("arch", "transformer"),
            ("position", "rope"),
            ("norm", self.norm),
            ("mlp", self.mlp),
            ("norm_position", self.norm_position),
            ("residual", True),
            ("qk_norm", self.qk_norm),
            ("embed_scale", self.embed_scale),
        ):
            reasons += mismatch(cfg, field, wanted, name)
        reasons += self.moe_cannot_express(cfg) + features_off(cfg, name, self.features)
        return reasons + rope_cannot_express(cfg) + self.variant_cannot_express(cfg)

    def moe_cannot_express(self, cfg: ModelConfig) -> list[str]:
        if cfg.moe.enabled:
            return [f"{type(self).__name__} has dense MLPs only, this model has "
                    f"model.moe.n_experts={cfg.moe.n_experts}"]  # fmt: skip
        return []


@register_hf("mistral")
class Mistral(Llama):
    """Mistral: Llama without biases, with an optional sliding attention window."""

    architecture = "MistralForCausalLM"
    export_rank = 1

    def window_from_hf(self, hf: dict[str, Any]) -> int | None:
        return hf.get("sliding_window")

    def biases_from_hf(self, hf: dict[str, Any]) -> dict[str, bool | None]:
        return {}

    def extra_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        return {"sliding_window": cfg.attention_window}

    def variant_cannot_express(self, cfg: ModelConfig) -> list[str]:
        if cfg.has_qkv_bias or cfg.has_out_bias or cfg.has_mlp_bias:
            return ["Mistral has no attention or MLP biases"]
        return []

    def export_config(self, cfg: ModelConfig) -> ModelConfig:
        return cfg


@register_hf("qwen2")
class Qwen2(Llama):
    """Qwen2 / Qwen2.5: biases on q, k and v only; a sliding window if every layer uses it."""

    architecture = "Qwen2ForCausalLM"
    export_rank = 2

    def window_from_hf(self, hf: dict[str, Any]) -> int | None:
        n_layers = required(hf, "num_hidden_layers", "qwen2")
        window = hf.get("sliding_window") if hf.get("use_sliding_window", False) else None
        layer_types = hf.get("layer_types") or [
            "sliding_attention"
            if window is not None and i >= hf.get("max_window_layers", n_layers)
            else "full_attention"
            for i in range(n_layers)
        ]
        kinds = set(layer_types)
        if kinds == {"full_attention"}:
            return None
        if kinds == {"sliding_attention"} and window is not None:
            return window
        raise HFError(
            f"this Qwen2 checkpoint has layer_types={layer_types} with use_sliding_window="
            f"{hf.get('use_sliding_window', False)} and sliding_window={hf.get('sliding_window')}; "
            f"llmjax runs either full attention in every layer or the same window in every layer"
        )

    def biases_from_hf(self, hf: dict[str, Any]) -> dict[str, bool | None]:
        return {"qkv_bias": True}

    def extra_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        window = cfg.attention_window
        return {
            "use_sliding_window": window is not None,
            "sliding_window": window,
            "max_window_layers": 0 if window is not None else cfg.n_layers,
            "layer_types": ["sliding_attention" if window is not None else "full_attention"]
            * cfg.n_layers,
        }

    def variant_cannot_express(self, cfg: ModelConfig) -> list[str]:
        if cfg.has_out_bias or cfg.has_mlp_bias:
            return ["Qwen2 has biases on q, k and v only (none on o_proj or the MLP)"]
        return []

    def export_config(self, cfg: ModelConfig) -> ModelConfig:
        return dataclasses.replace(cfg, use_bias=False, qkv_bias=True, out_bias=None, mlp_bias=None)
