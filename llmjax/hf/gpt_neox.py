"""GPT-NeoX (`gpt_neox`: Pythia, GPT-NeoX-20B): parallel attention + MLP blocks, RoPE on part of
each head, LayerNorms and an ungated GELU MLP with biases, and q/k/v fused per head.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from llmjax.config import ModelConfig
from llmjax.hf.family import (
    HFError,
    HFFamily,
    TensorMap,
    features_off,
    linear,
    mismatch,
    register_hf,
    required,
    same,
)
from llmjax.hf.gpt2 import TANH_GELUS
from llmjax.hf.rope import rope_from_hf

# hidden_act -> llmjax MLP: "gelu" is the exact (erf) GELU, Pythia's.
MLP_FROM_HF = {"gelu": "gelu_exact", **dict.fromkeys(TANH_GELUS, "gelu")}


def _fused_qkv(hf: str, suffix: str, cfg: ModelConfig) -> TensorMap:
    """query_key_value packs, per head, [q | k | v] on its output axis: (N, 3, H) rows."""
    D, N, H = cfg.d_model, cfg.n_heads, cfg.dim_head
    paths = tuple(f"blocks/attention/{name}_{suffix}" for name in ("query", "key", "value"))
    if suffix == "bias":

        def to_llmjax(b: np.ndarray) -> tuple[np.ndarray, ...]:
            b_Nx3xH = b.reshape(N, 3, H)
            return tuple(b_Nx3xH[:, j] for j in range(3))

        def to_hf(*parts: np.ndarray) -> np.ndarray:
            return np.stack(parts, axis=1).reshape(-1)

        return TensorMap(hf, paths, (3 * N * H,), to_llmjax, to_hf)

    def w_to_llmjax(w: np.ndarray) -> tuple[np.ndarray, ...]:
        w_Nx3xHxD = w.reshape(N, 3, H, D)
        return tuple(np.transpose(w_Nx3xHxD[:, j], (2, 0, 1)) for j in range(3))  # (D, N, H)

    def w_to_hf(*kernels: np.ndarray) -> np.ndarray:
        w_Nx3xHxD = np.stack([np.transpose(k, (1, 2, 0)) for k in kernels], axis=1)
        return w_Nx3xHxD.reshape(3 * N * H, D)

    return TensorMap(hf, paths, (3 * N * H, D), w_to_llmjax, w_to_hf)


@register_hf("gpt_neox")
class GPTNeoX(HFFamily):
    """GPT-NeoX and Pythia; `use_parallel_residual=false` is the sequential pre-norm block."""

    architecture = "GPTNeoXForCausalLM"
    base_prefix = "gpt_neox."
    ignored = (
        r"(gpt_neox\.)?layers\.\d+\.attention\.(masked_)?bias",
        r"(gpt_neox\.)?layers\.\d+\.attention\.rotary_emb\.inv_freq",
    )
    export_rank = 30

    def config_from_hf(self, hf: dict[str, Any]) -> ModelConfig:
        t = self.model_type
        activation = hf.get("hidden_act", "gelu")
        if activation not in MLP_FROM_HF:
            raise HFError(
                f"config.json (model_type={t!r}) has hidden_act={activation!r}; llmjax converts "
                f"{', '.join(MLP_FROM_HF)}"
            )
        params = dict(hf.get("rope_parameters") or {})
        fraction = float(params.pop("partial_rotary_factor", hf.get("rotary_pct", 0.25)))
        params.setdefault("rope_theta", hf.get("rotary_emb_base", 10_000.0))
        theta, scaling = rope_from_hf({**hf, "rope_parameters": params}, t)
        attention = bool(hf.get("attention_bias", True))
        return ModelConfig(
            vocab_size=required(hf, "vocab_size", t),
            max_seq_len=required(hf, "max_position_embeddings", t),
            d_model=required(hf, "hidden_size", t),
            n_layers=required(hf, "num_hidden_layers", t),
            n_heads=required(hf, "num_attention_heads", t),
            d_ff=required(hf, "intermediate_size", t),
            mlp=MLP_FROM_HF[activation],
            norm="layernorm",
            norm_position="pre",
            norm_eps=hf.get("layer_norm_eps", 1e-5),
            parallel_block=bool(hf.get("use_parallel_residual", True)),
            position="rope",
            rope_theta=theta,
            rope_scaling=scaling,
            rotary_fraction=fraction,
            use_bias=True,  # LayerNorms and the MLP always have biases
            qkv_bias=attention,
            out_bias=attention,
            tie_embeddings=hf.get("tie_word_embeddings", False),
            init_std=hf.get("initializer_range", 0.02),
        )

    def config_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        return {
            "vocab_size": cfg.vocab_size,
            "max_position_embeddings": cfg.max_seq_len,
            "hidden_size": cfg.d_model,
            "intermediate_size": cfg.ffn_dim,
            "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads,
            "hidden_act": "gelu" if cfg.mlp == "gelu_exact" else "gelu_new",
            "layer_norm_eps": cfg.norm_eps,
            "initializer_range": cfg.init_std,
            "use_parallel_residual": cfg.parallel_block,
            "attention_bias": cfg.has_qkv_bias,
            # transformers 5 reads rope_parameters, 4 rotary_pct and rotary_emb_base.
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": cfg.rope_theta,
                "partial_rotary_factor": cfg.rotary_fraction,
            },
            "rotary_pct": cfg.rotary_fraction,
            "rotary_emb_base": cfg.rope_theta,
            "hidden_dropout": cfg.dropout,
            "attention_dropout": 0.0,
        }

    def tensors(self, cfg: ModelConfig) -> list[TensorMap]:
        V, D, F = cfg.vocab_size, cfg.d_model, cfg.ffn_dim
        N, H = cfg.n_heads, cfg.dim_head
        T, L, A = "gpt_neox.", "gpt_neox.layers.{i}.", "blocks/attention/"
        maps = [
            same(T + "embed_in.weight", "embed/embedding", (V, D)),
            same(T + "final_layer_norm.weight", "final_norm/scale", (D,)),
            same(T + "final_layer_norm.bias", "final_norm/bias", (D,)),
            same(L + "input_layernorm.weight", "blocks/attention_norm/scale", (D,)),
            same(L + "input_layernorm.bias", "blocks/attention_norm/bias", (D,)),
            same(L + "post_attention_layernorm.weight", "blocks/mlp_norm/scale", (D,)),
            same(L + "post_attention_layernorm.bias", "blocks/mlp_norm/bias", (D,)),
            _fused_qkv(L + "attention.query_key_value.weight", "kernel", cfg),
            linear(L + "attention.dense.weight", A + "out_kernel", (N, H), (D,)),
            linear(L + "mlp.dense_h_to_4h.weight", "blocks/mlp/fc_in/kernel", (D,), (F,)),
            same(L + "mlp.dense_h_to_4h.bias", "blocks/mlp/fc_in/bias", (F,)),
            linear(L + "mlp.dense_4h_to_h.weight", "blocks/mlp/fc_out/kernel", (F,), (D,)),
            same(L + "mlp.dense_4h_to_h.bias", "blocks/mlp/fc_out/bias", (D,)),
        ]
        if cfg.has_qkv_bias:
            maps.append(_fused_qkv(L + "attention.query_key_value.bias", "bias", cfg))
        if cfg.has_out_bias:
            maps.append(same(L + "attention.dense.bias", A + "out_bias", (D,)))
        if not cfg.tie_embeddings:
            maps.append(linear("embed_out.weight", "lm_head/kernel", (D,), (V,)))
        return maps

    def cannot_express(self, cfg: ModelConfig) -> list[str]:
        reasons = []
        for field, wanted in (
            ("arch", "transformer"),
            ("position", "rope"),
            ("norm", "layernorm"),
            ("norm_position", "pre"),
            ("residual", True),
            ("attention_window", None),
            ("qk_norm", False),
            ("embed_scale", False),
        ):
            reasons += mismatch(cfg, field, wanted, "GPT-NeoX")
        reasons += features_off(cfg, "GPT-NeoX", frozenset({"rotary_fraction", "parallel_block"}))
        if cfg.mlp not in ("gelu", "gelu_exact"):
            reasons.append(f"GPT-NeoX needs model.mlp='gelu_exact' or 'gelu', got {cfg.mlp!r}")
        if cfg.rope_scaling.kind != "none":
            reasons.append("llmjax exports GPT-NeoX without RoPE scaling")
        if cfg.kv_heads != cfg.n_heads:
            reasons.append(
                f"GPT-NeoX has one kv head per query head, this model has {cfg.kv_heads}"
            )
        if cfg.n_heads * cfg.dim_head != cfg.d_model:
            reasons.append("GPT-NeoX needs n_heads * head_dim == d_model")
        if cfg.qkv_bias != cfg.out_bias and cfg.has_qkv_bias != cfg.has_out_bias:
            reasons.append(
                "GPT-NeoX's attention_bias switches the q/k/v and output biases together"
            )
        return reasons

    def export_config(self, cfg: ModelConfig) -> ModelConfig:
        # LayerNorm and MLP biases always exist, and one attention_bias switch covers q/k/v and
        # the output: a missing one is exported as zeros.
        attention = cfg.has_qkv_bias or cfg.has_out_bias
        return dataclasses.replace(
            cfg, use_bias=True, qkv_bias=attention, out_bias=attention, mlp_bias=None
        )
