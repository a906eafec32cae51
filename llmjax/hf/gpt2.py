"""GPT-2 (`GPT2LMHeadModel`): learned positions, pre-LayerNorm, tanh-GELU MLP, fused qkv."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from llmjax.config import ModelConfig
from llmjax.hf.family import (
    HFError,
    HFFamily,
    TensorMap,
    conv1d,
    features_off,
    linear,
    mismatch,
    register_hf,
    required,
    same,
)

# transformers' names for the tanh approximation of GELU, which is what llmjax's "gelu" MLP uses.
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def _fused_qkv(hf: str, prefix: str, shape: tuple[int, ...], cfg: ModelConfig) -> TensorMap:
    """c_attn packs q, k and v side by side on its output axis: (..., 3*N*H)."""
    N, H = cfg.n_heads, cfg.dim_head
    lead = shape[:-1]
    paths = tuple(f"blocks/attention/{name}_{prefix}" for name in ("query", "key", "value"))

    def to_llmjax(x: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(x[..., j * N * H : (j + 1) * N * H].reshape(*lead, N, H) for j in range(3))

    def to_hf(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        return np.concatenate([t.reshape(*lead, N * H) for t in (q, k, v)], axis=-1)

    return TensorMap(hf, paths, tuple(shape), to_llmjax, to_hf)


@register_hf("gpt2")
class GPT2(HFFamily):
    """GPT-2 and checkpoints of its shape (DistilGPT2, GPT-2 medium/large/xl)."""

    architecture = "GPT2LMHeadModel"
    base_prefix = "transformer."
    # The causal-mask buffers older checkpoints saved with the weights.
    ignored = (r"(transformer\.)?h\.\d+\.attn\.(masked_)?bias",)
    export_rank = 0

    def config_from_hf(self, hf: dict[str, Any]) -> ModelConfig:
        activation = hf.get("activation_function", "gelu_new")
        if activation not in TANH_GELUS:
            raise HFError(
                f"GPT-2 config.json has activation_function={activation!r}; llmjax's GPT-2 MLP "
                f"is the tanh GELU ({', '.join(TANH_GELUS)})"
            )
        if hf.get("scale_attn_by_inverse_layer_idx", False) or not hf.get(
            "scale_attn_weights", True
        ):
            raise HFError(
                "GPT-2 config.json changes the attention scale (scale_attn_by_inverse_layer_idx "
                "or scale_attn_weights=false); llmjax always scales by 1/sqrt(head_dim)"
            )
        return ModelConfig(
            vocab_size=required(hf, "vocab_size", "gpt2"),
            max_seq_len=required(hf, "n_positions", "gpt2"),
            d_model=required(hf, "n_embd", "gpt2"),
            n_layers=required(hf, "n_layer", "gpt2"),
            n_heads=required(hf, "n_head", "gpt2"),
            d_ff=hf.get("n_inner") or 4 * required(hf, "n_embd", "gpt2"),
            mlp="gelu",
            norm="layernorm",
            norm_position="pre",
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            position="learned",
            use_bias=True,
            tie_embeddings=hf.get("tie_word_embeddings", True),
            init_std=hf.get("initializer_range", 0.02),
        )

    def config_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        return {
            "vocab_size": cfg.vocab_size,
            "n_positions": cfg.max_seq_len,
            "n_embd": cfg.d_model,
            "n_layer": cfg.n_layers,
            "n_head": cfg.n_heads,
            "n_inner": cfg.ffn_dim,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": cfg.norm_eps,
            "initializer_range": cfg.init_std,
            "resid_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout,
            "attn_pdrop": 0.0,  # llmjax has no dropout on attention probabilities
            "scale_attn_weights": True,
        }

    def tensors(self, cfg: ModelConfig) -> list[TensorMap]:
        V, P, D, F = cfg.vocab_size, cfg.max_seq_len, cfg.d_model, cfg.ffn_dim
        N, H = cfg.n_heads, cfg.dim_head
        T, L = "transformer.", "transformer.h.{i}."
        maps = [
            same(T + "wte.weight", "embed/embedding", (V, D)),
            same(T + "wpe.weight", "pos_embed/embedding", (P, D)),
            same(T + "ln_f.weight", "final_norm/scale", (D,)),
            same(T + "ln_f.bias", "final_norm/bias", (D,)),
            same(L + "ln_1.weight", "blocks/attention_norm/scale", (D,)),
            same(L + "ln_1.bias", "blocks/attention_norm/bias", (D,)),
            _fused_qkv(L + "attn.c_attn.weight", "kernel", (D, 3 * N * H), cfg),
            _fused_qkv(L + "attn.c_attn.bias", "bias", (3 * N * H,), cfg),
            conv1d(L + "attn.c_proj.weight", "blocks/attention/out_kernel", (N, H), (D,)),
            same(L + "attn.c_proj.bias", "blocks/attention/out_bias", (D,)),
            same(L + "ln_2.weight", "blocks/mlp_norm/scale", (D,)),
            same(L + "ln_2.bias", "blocks/mlp_norm/bias", (D,)),
            conv1d(L + "mlp.c_fc.weight", "blocks/mlp/fc_in/kernel", (D,), (F,)),
            same(L + "mlp.c_fc.bias", "blocks/mlp/fc_in/bias", (F,)),
            conv1d(L + "mlp.c_proj.weight", "blocks/mlp/fc_out/kernel", (F,), (D,)),
            same(L + "mlp.c_proj.bias", "blocks/mlp/fc_out/bias", (D,)),
        ]
        if not cfg.tie_embeddings:
            maps.append(linear("lm_head.weight", "lm_head/kernel", (D,), (V,)))
        return maps

    def cannot_express(self, cfg: ModelConfig) -> list[str]:
        reasons = []
        for field, wanted in (
            ("arch", "transformer"),
            ("position", "learned"),
            ("norm", "layernorm"),
            ("mlp", "gelu"),
            ("norm_position", "pre"),
            ("residual", True),
            ("attention_window", None),
            ("qk_norm", False),
            ("embed_scale", False),
        ):
            reasons += mismatch(cfg, field, wanted, "GPT-2")
        if cfg.moe.enabled:
            reasons.append(f"GPT-2 has dense MLPs only, this model has model.moe.n_experts="
                           f"{cfg.moe.n_experts}")  # fmt: skip
        reasons += features_off(cfg, "GPT-2")
        if cfg.kv_heads != cfg.n_heads:
            reasons.append(f"GPT-2 has one kv head per query head, this model has {cfg.kv_heads}")
        if cfg.n_heads * cfg.dim_head != cfg.d_model:
            reasons.append("GPT-2 needs n_heads * head_dim == d_model")
        return reasons

    def export_config(self, cfg: ModelConfig) -> ModelConfig:
        # GPT-2 has every bias; a bias-free llmjax model exports them as zeros.
        return dataclasses.replace(cfg, use_bias=True, qkv_bias=None, out_bias=None, mlp_bias=None)
