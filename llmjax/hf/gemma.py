"""The Gemma families: Gemma (`gemma`), Gemma 2 (`gemma2`) and Gemma 3's text model
(`gemma3_text`).

All are Llama-shaped decoders with Gemma's block: embeddings scaled by sqrt(d_model), RMSNorm
stored as an offset from one (x / rms(x) * (1 + w)), and a tanh-GELU gated MLP (GeGLU). Gemma 2
adds a norm after each sublayer as well as before (four per layer), attention and final logit
soft caps, a logit scale of its own (query_pre_attn_scalar) and local (sliding-window) layers
alternating with global ones; Gemma 3 drops the caps and adds QK-norm and a RoPE base of their
own for the local layers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from llmjax.config import ModelConfig, RopeScaling
from llmjax.hf.family import HFError, register_hf, required
from llmjax.hf.llama import Llama
from llmjax.hf.rope import rope_to_hf

# transformers' names of the tanh GELU ("gelu" is Gemma's legacy name for it, see GemmaConfig).
GEMMA_GELUS = ("gelu_pytorch_tanh", "gelu_new", "gelu_fast", "gelu")


@register_hf("gemma")
class Gemma(Llama):
    """Gemma 1 (2B/7B): GeGLU, offset RMSNorm, scaled embeddings; `attention_bias` switches
    q/k/v/o biases; embeddings tied."""

    architecture = "GemmaForCausalLM"
    export_rank = 10
    mlp = "geglu"
    norm = "rmsnorm_plus1"
    activations = GEMMA_GELUS
    embed_scale = True
    tied_default = True

    def biases_from_hf(self, hf: dict[str, Any]) -> dict[str, bool | None]:
        attention = bool(hf.get("attention_bias", False))
        return {"qkv_bias": attention or None, "out_bias": attention or None}

    def extra_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        return {"attention_bias": cfg.has_qkv_bias}

    def variant_cannot_express(self, cfg: ModelConfig) -> list[str]:
        reasons = [] if "global_every" in self.features else super().variant_cannot_express(cfg)
        if cfg.has_mlp_bias:
            reasons.append(f"{type(self).__name__} has no MLP biases")
        return reasons

    def export_config(self, cfg: ModelConfig) -> ModelConfig:
        # One `attention_bias` switch covers q, k, v and o: a missing one is exported as zeros.
        attention = cfg.has_qkv_bias or cfg.has_out_bias
        return dataclasses.replace(
            cfg,
            use_bias=False,
            qkv_bias=attention or None,
            out_bias=attention or None,
            mlp_bias=None,
        )


def layers_from_hf(hf: dict[str, Any], model_type: str, default_every: int) -> dict[str, Any]:
    """attention_window and global_every from `layer_types` (or the family's default
    alternation when a config predates it) and `sliding_window`."""
    n_layers = required(hf, "num_hidden_layers", model_type)
    window = hf.get("sliding_window")
    every = hf.get("sliding_window_pattern", default_every)
    layer_types = hf.get("layer_types") or [
        "sliding_attention" if (i + 1) % every else "full_attention" for i in range(n_layers)
    ]
    local = [kind == "sliding_attention" for kind in layer_types]
    if not any(local):
        return {"attention_window": None, "global_every": None}
    if window is None:
        raise HFError(
            f"config.json (model_type={model_type!r}) has sliding_attention layers but no "
            f"sliding_window"
        )
    if all(local):
        return {"attention_window": window, "global_every": None}
    every = local.index(False) + 1
    if local != [(i + 1) % every != 0 for i in range(n_layers)]:
        raise HFError(
            f"config.json (model_type={model_type!r}) has layer_types={layer_types}; llmjax "
            f"runs a global layer every k layers (layers k-1, 2k-1, ...) and local ones between"
        )
    return {"attention_window": window, "global_every": every}


def layers_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    layer_types = [
        "sliding_attention" if cfg.is_local(i) else "full_attention" for i in range(cfg.n_layers)
    ]
    return {"sliding_window": cfg.attention_window, "layer_types": layer_types}


@register_hf("gemma2")
class Gemma2(Gemma):
    """Gemma 2: Gemma's block with norms before and after each sublayer, attention and final
    logit soft caps, query_pre_attn_scalar, and local layers alternating with global ones."""

    architecture = "Gemma2ForCausalLM"
    export_rank = 11
    norm_position = "sandwich"
    activation_key = "hidden_activation"
    features = frozenset(
        {"attn_logit_softcap", "final_logit_softcap", "attn_scale_dim", "global_every"}
    )
    default_every = 2  # Gemma 2's alternation: local, global, local, ...

    def norm_tensors(self) -> dict[str, str]:
        return {
            "attention_norm": "input_layernorm",
            "attention_post_norm": "post_attention_layernorm",
            "mlp_norm": "pre_feedforward_layernorm",
            "mlp_post_norm": "post_feedforward_layernorm",
        }

    def window_from_hf(self, hf: dict[str, Any]) -> int | None:
        return None  # set with global_every in features_from_hf

    def features_from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        t = self.model_type
        head_dim = hf.get("head_dim") or required(hf, "hidden_size", t) // required(
            hf, "num_attention_heads", t
        )
        scale_dim = hf.get("query_pre_attn_scalar", head_dim)
        out = {
            **layers_from_hf(hf, t, self.default_every),
            "attn_scale_dim": None if scale_dim == head_dim else float(scale_dim),
        }
        if "attn_logit_softcap" in self.features:
            out["attn_logit_softcap"] = hf.get("attn_logit_softcapping")
            out["final_logit_softcap"] = hf.get("final_logit_softcapping")
        return out

    def features_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        scale_dim = cfg.attn_scale_dim or cfg.dim_head
        out = {
            **layers_to_hf(cfg),
            "query_pre_attn_scalar": int(scale_dim) if float(scale_dim).is_integer() else scale_dim,
        }
        if "attn_logit_softcap" in self.features:
            out["attn_logit_softcapping"] = cfg.attn_logit_softcap
            out["final_logit_softcapping"] = cfg.final_logit_softcap
        return out


@register_hf("gemma3_text")
class Gemma3Text(Gemma2):
    """Gemma 3's text decoder (Gemma3ForCausalLM: 1B, and the language model of the larger
    ones): Gemma 2's block with QK-norm (offset RMSNorm per head), one global layer in six by
    default, and RoPE bases of their own for local (10k) and global (1M, maybe scaled) layers."""

    architecture = "Gemma3ForCausalLM"
    export_rank = 12
    qk_norm = True
    features = Gemma2.features | {"rope_local_theta"}
    default_every = 6

    def config_from_hf(self, hf: dict[str, Any]) -> ModelConfig:
        t = self.model_type
        params = hf.get("rope_parameters") or {}
        if "full_attention" in params:  # transformers 5: RoPE parameters per layer type
            global_rope = dict(params["full_attention"])
            local_rope = dict(params.get("sliding_attention") or {})
        else:  # transformers 4: the global RoPE and a local base
            global_rope = {"rope_theta": hf.get("rope_theta", 1_000_000.0)}
            global_rope.update(hf.get("rope_scaling") or {})
            local_rope = {"rope_theta": hf.get("rope_local_base_freq", 10_000.0)}
        if local_rope.get("rope_type", "default") != "default":
            raise HFError(
                f"config.json (model_type={t!r}) scales the local layers' RoPE "
                f"({local_rope.get('rope_type')!r}); llmjax's local layers use plain RoPE"
            )
        local_theta = float(local_rope.get("rope_theta", 10_000.0))
        plain = {**hf, "rope_parameters": global_rope, "rope_scaling": None}
        cfg = super().config_from_hf(plain)
        if cfg.global_every is not None:
            return dataclasses.replace(cfg, rope_local_theta=local_theta)
        if cfg.attention_window is not None:  # every layer local
            return dataclasses.replace(cfg, rope_theta=local_theta, rope_scaling=RopeScaling())
        return cfg

    def features_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        global_rope = {"rope_type": "default", **(rope_to_hf(cfg)["rope_scaling"] or {})}
        global_rope["rope_theta"] = cfg.rope_theta
        local_theta = cfg.rope_local_theta or cfg.rope_theta
        return {
            **super().features_to_hf(cfg),
            "rope_parameters": {
                "full_attention": global_rope,
                "sliding_attention": {"rope_type": "default", "rope_theta": local_theta},
            },
            "rope_local_base_freq": local_theta,  # transformers 4
        }

    def cannot_express(self, cfg: ModelConfig) -> list[str]:
        reasons = super().cannot_express(cfg)
        every_layer_local = cfg.global_every is None and cfg.attention_window is not None
        if every_layer_local and cfg.rope_scaling.kind != "none":
            reasons.append("Gemma 3's local layers use plain RoPE (no rope_scaling)")
        return reasons
