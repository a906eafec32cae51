"""RoPE settings between transformers' configs (`rope_theta`, `rope_scaling` /
`rope_parameters`) and llmjax's `RopeScaling`, for the kinds whose formulas match."""

from __future__ import annotations

import math
from typing import Any

from llmjax.config import ModelConfig, RopeScaling
from llmjax.hf.family import HFError, required

# transformers' rope_type -> llmjax RopeScaling.kind, for the kinds whose formulas match.
ROPE_FROM_HF = {
    "default": "none",
    "linear": "linear",
    "llama3": "llama3",
    "yarn": "yarn",
    "dynamic": "dynamic",
}
ROPE_TO_HF = {kind: rope_type for rope_type, kind in ROPE_FROM_HF.items()}


def rope_from_hf(hf: dict[str, Any], model_type: str) -> tuple[float, RopeScaling]:
    """(theta, scaling) from `rope_theta` + `rope_scaling` (transformers 4) or
    `rope_parameters` (transformers 5)."""
    params = {**(hf.get("rope_scaling") or {}), **(hf.get("rope_parameters") or {})}
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10_000.0)))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ROPE_FROM_HF:
        raise HFError(
            f"config.json (model_type={model_type!r}) uses RoPE scaling {rope_type!r}; llmjax "
            f"converts: {', '.join(ROPE_FROM_HF)}"
        )
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise HFError("partial_rotary_factor != 1 (RoPE on part of each head) is not supported")
    kind = ROPE_FROM_HF[rope_type]
    if kind == "none":
        return theta, RopeScaling()
    factor = float(required(params, "factor", model_type))
    if kind in ("linear", "dynamic"):
        # transformers' dynamic NTK scales from max_position_embeddings, llmjax's max_seq_len.
        return theta, RopeScaling(kind, factor)
    if kind == "yarn":
        return theta, _yarn_from_hf(hf, params, factor, model_type)
    return theta, RopeScaling(
        kind,
        factor,
        original_max_seq_len=int(required(params, "original_max_position_embeddings", model_type)),
        low_freq_factor=float(required(params, "low_freq_factor", model_type)),
        high_freq_factor=float(required(params, "high_freq_factor", model_type)),
    )


def _yarn_from_hf(hf: dict[str, Any], params: dict[str, Any], factor: float, model_type: str):
    """YaRN as transformers reads it: the original context from a top-level
    original_max_position_embeddings (Phi-3), else the rope dict's, else max_position_embeddings;
    beta_fast / beta_slow default to 32 / 1. llmjax scales cos/sin by 0.1 ln(factor) + 1 and
    truncates the ramp: other attention factors are refused."""
    original = hf.get("original_max_position_embeddings") or params.get(
        "original_max_position_embeddings"
    )
    original = original or required(hf, "max_position_embeddings", model_type)

    def mscale(scale: float = 1.0) -> float:  # transformers' get_mscale
        return 0.1 * scale * math.log(factor) + 1.0 if factor > 1 else 1.0

    default_attention = mscale()
    attention = params.get("attention_factor")
    if attention is None and params.get("mscale") and params.get("mscale_all_dim"):
        attention = mscale(params["mscale"]) / mscale(params["mscale_all_dim"])
    if attention is not None and not math.isclose(attention, default_attention, rel_tol=1e-6):
        raise HFError(
            f"config.json (model_type={model_type!r}) sets a YaRN attention factor of "
            f"{attention} (attention_factor, or mscale / mscale_all_dim); llmjax's YaRN scales "
            f"cos/sin by 0.1 ln(factor) + 1 = {default_attention:.6g} only"
        )
    if params.get("truncate", True) is False:
        raise HFError(
            f"config.json (model_type={model_type!r}) sets YaRN truncate=false; llmjax rounds "
            f"the ramp's ends to whole dimensions (truncate=true) only"
        )
    return RopeScaling(
        "yarn",
        factor,
        original_max_seq_len=int(original),
        beta_fast=float(params.get("beta_fast") or 32.0),
        beta_slow=float(params.get("beta_slow") or 1.0),
    )


def rope_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """`rope_theta` and `rope_scaling`, the keys both transformers 4 and 5 read."""
    s = cfg.rope_scaling
    out: dict[str, Any] = {"rope_theta": cfg.rope_theta, "rope_scaling": None}
    if s.kind in ("linear", "dynamic"):
        out["rope_scaling"] = {"rope_type": s.kind, "factor": s.factor}
    elif s.kind == "llama3":
        out["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": s.factor,
            "original_max_position_embeddings": s.original_max_seq_len or cfg.max_seq_len,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
        }
    elif s.kind == "yarn":
        out["rope_scaling"] = {
            "rope_type": "yarn",
            "factor": s.factor,
            "original_max_position_embeddings": s.original_max_seq_len,
            "beta_fast": s.beta_fast,
            "beta_slow": s.beta_slow,
        }
    return out


def rope_cannot_express(cfg: ModelConfig) -> list[str]:
    """Why transformers cannot hold cfg's RoPE scaling (empty when it can)."""
    s = cfg.rope_scaling
    if s.kind not in ROPE_TO_HF:
        return [
            f"RoPE scaling {s.kind!r} has no transformers equivalent here (exportable: "
            f"{', '.join(ROPE_TO_HF)})"
        ]
    if s.kind == "dynamic" and s.original_max_seq_len not in (None, cfg.max_seq_len):
        return [
            f"transformers' dynamic NTK scales from max_position_embeddings, so "
            f"model.rope_scaling.original_max_seq_len ({s.original_max_seq_len}) must equal "
            f"model.max_seq_len ({cfg.max_seq_len}) or be unset"
        ]
    return []
