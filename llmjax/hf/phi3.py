"""Phi-3 (`phi3`: Phi-3, Phi-3.5 and Phi-4 mini): Llama's block with q/k/v fused in one
projection and gate/up in another (split on load, fused again on export), partial RoPE, and a
sliding window in every layer when config.json sets one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from llmjax.config import ModelConfig
from llmjax.hf.family import TensorMap, register_hf
from llmjax.hf.llama import Llama


def _stacked(hf: str, paths: tuple[str, ...], widths: tuple[tuple[int, ...], ...], d_in: int):
    """A torch Linear weight whose output rows stack several llmjax kernels (d_in, *width)."""
    sizes = [int(np.prod(w)) for w in widths]
    bounds = np.cumsum([0, *sizes])

    def to_llmjax(w: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(
            w[lo:hi].T.reshape(d_in, *width)
            for lo, hi, width in zip(bounds[:-1], bounds[1:], widths, strict=True)
        )

    def to_hf(*kernels: np.ndarray) -> np.ndarray:
        return np.concatenate([k.reshape(d_in, -1).T for k in kernels], axis=0)

    return TensorMap(hf, paths, (int(bounds[-1]), d_in), to_llmjax, to_hf)


@register_hf("phi3")
class Phi3(Llama):
    """Phi-3: no biases, fused qkv_proj and gate_up_proj, optional partial rotary."""

    architecture = "Phi3ForCausalLM"
    export_rank = 40
    features = frozenset({"rotary_fraction"})

    def config_from_hf(self, hf: dict[str, Any]) -> ModelConfig:
        params = dict(hf.get("rope_parameters") or {})
        fraction = params.pop("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
        plain = {**hf, "rope_parameters": params, "partial_rotary_factor": 1.0}
        return dataclasses.replace(super().config_from_hf(plain), rotary_fraction=float(fraction))

    def window_from_hf(self, hf: dict[str, Any]) -> int | None:
        return hf.get("sliding_window")

    def biases_from_hf(self, hf: dict[str, Any]) -> dict[str, bool | None]:
        return {}

    def extra_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        return {
            "sliding_window": cfg.attention_window,
            "partial_rotary_factor": cfg.rotary_fraction,
            "original_max_position_embeddings": cfg.max_seq_len,
        }

    def variant_cannot_express(self, cfg: ModelConfig) -> list[str]:
        reasons = []
        if cfg.has_qkv_bias or cfg.has_out_bias or cfg.has_mlp_bias:
            reasons.append("Phi-3 has no attention or MLP biases")
        if cfg.n_heads * cfg.dim_head != cfg.d_model:
            reasons.append("Phi-3 needs n_heads * head_dim == d_model")
        return reasons

    def export_config(self, cfg: ModelConfig) -> ModelConfig:
        return cfg

    def tensors(self, cfg: ModelConfig) -> list[TensorMap]:
        D, F = cfg.d_model, cfg.ffn_dim
        N, K, H = cfg.n_heads, cfg.kv_heads, cfg.dim_head
        L, A = "model.layers.{i}.", "blocks/attention/"
        fused = {  # the separate projections Llama maps, replaced by the fused tensors
            L + f"self_attn.{x}_proj.weight" for x in "qkv"
        } | {L + f"mlp.{x}_proj.weight" for x in ("gate", "up")}
        maps = [m for m in super().tensors(cfg) if m.hf not in fused]
        return [
            *maps,
            _stacked(
                L + "self_attn.qkv_proj.weight",
                (A + "query_kernel", A + "key_kernel", A + "value_kernel"),
                ((N, H), (K, H), (K, H)),
                D,
            ),
            _stacked(
                L + "mlp.gate_up_proj.weight",
                ("blocks/mlp/gate/kernel", "blocks/mlp/up/kernel"),
                ((F,), (F,)),
                D,
            ),
        ]
