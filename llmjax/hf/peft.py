"""LoRA adapters in PEFT's format (`adapter_config.json` + `adapter_model.safetensors`), for the
Hugging Face base an export writes beside them.

PEFT's LoRA on a torch module computes `W x + (alpha / r) B A x` with `lora_A.weight` (r, in) and
`lora_B.weight` (out, r): llmjax's A (*in, r) and B (r, *out) flattened and transposed, so the
adapted modules are exactly the HF modules the family maps each adapted kernel to. GPT-2 fuses
q, k and v into one `c_attn`: its adapter stacks the A's of the adapted parts (rank r per part)
and places each B in its part's rows, with `rank_pattern` and `alpha_pattern` keeping alpha / r.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np
from safetensors.numpy import save_file

from llmjax.config import ModelConfig
from llmjax.hf.family import HFError, choose_family
from llmjax.hf.outdir import check_new, fresh_directory
from llmjax.hf.params import flatten
from llmjax.models.lora import lora_targets, without_lora

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."

_LAYER = re.compile(r"^blocks(?:_(\d+))?/(.*)$")


def _adapter_tensors(
    cfg: ModelConfig, params: dict[str, Any], family, dtype: np.dtype
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """(PEFT tensor name -> array, module name -> rank for modules whose rank is not r)."""
    flat = {p: np.asarray(jax.device_get(x)) for p, x in flatten(params).items()}
    r = cfg.lora.rank
    # (layer or None, path inside a layer) -> (A, B) as (fan_in, r) and (r, fan_out) matrices.
    adapters: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}
    for target in lora_targets(cfg):
        a_path, b_path = target.adapters
        a, b = flat[a_path], flat[b_path]
        match = _LAYER.match(target.path)
        if match is None:
            raise HFError(f"PEFT export covers layer weights only, not {target.path}")
        inner = "blocks/" + match.group(2)
        layers = [int(match.group(1))] if match.group(1) is not None else range(cfg.n_layers)
        for i in layers:
            ai, bi = (a, b) if match.group(1) is not None else (a[i], b[i])
            adapters[(i, inner)] = (ai.reshape(target.fan_in, r), bi.reshape(r, target.fan_out))
    export_cfg = family.export_config(
        dataclasses.replace(without_lora(cfg), vocab_multiple=1, scan_layers=True)
    )
    tensors: dict[str, np.ndarray] = {}
    ranks: dict[str, int] = {}
    used = set()
    for m in family.tensors(export_cfg):
        if not m.per_layer or "{e}" in m.hf or not m.hf.endswith(".weight"):
            continue  # LoRA adapts the attention and dense MLP kernels, not experts
        for i in range(cfg.n_layers):
            parts = [adapters.get((i, p)) for p in m.paths]
            if not any(part is not None for part in parts):
                continue
            module = m.hf.format(i=i).removesuffix(".weight")
            fan_outs = [None]  # one kernel: B's own output size
            if len(m.paths) > 1:  # fused: the output axis is the parts side by side
                fan_outs = [_fan_out(export_cfg, p) for p in m.paths]
            stacked_a, blocks_b = [], []
            offset = 0
            for part, fan_out in zip(parts, fan_outs, strict=True):
                if part is not None:
                    stacked_a.append(part[0].T)
                    blocks_b.append((offset, part[1].T))
                offset += fan_out if fan_out is not None else part[1].shape[1]
            rank = r * len(stacked_a)
            lora_b = np.zeros((offset, rank), np.float32)
            for j, (start, b_t) in enumerate(blocks_b):
                lora_b[start : start + b_t.shape[0], j * r : (j + 1) * r] = b_t
            tensors[f"{PREFIX}{module}.lora_A.weight"] = np.concatenate(stacked_a).astype(dtype)
            tensors[f"{PREFIX}{module}.lora_B.weight"] = lora_b.astype(dtype)
            if rank != r:
                ranks[module] = rank
            used.update((i, p) for p in m.paths)
    missing = sorted(p for (_, p) in set(adapters) - used)
    if missing:
        raise HFError(f"{family.model_type} has no module for the adapters of {', '.join(missing)}")
    return tensors, ranks


def _fan_out(cfg: ModelConfig, path: str) -> int:
    if path.endswith(("query_kernel", "query_bias")):
        return cfg.n_heads * cfg.dim_head
    return cfg.kv_heads * cfg.dim_head


def export_peft(
    cfg: ModelConfig,
    params: dict[str, Any],
    out: str | Path,
    *,
    model_type: str | None = None,
    base_model: str = "",
    dtype: str | None = None,
) -> Path:
    """Writes `out/` with adapter_config.json and adapter_model.safetensors: the LoRA adapters
    of `params` for the HF export of the base (`export_hf` of the unmerged params' base).

    `base_model` is written as base_model_name_or_path (where PEFT finds the base); `out` must
    not exist.
    """
    if not cfg.lora.rank:
        raise HFError("the model has no LoRA adapters (model.lora.rank=0); nothing to export")
    check_new(out)
    family = choose_family(without_lora(cfg), model_type)
    out_dtype = np.dtype(dtype or "float32")
    tensors, ranks = _adapter_tensors(cfg, params, family, out_dtype)
    modules = sorted({name.removeprefix(PREFIX).rsplit(".", 2)[0] for name in tensors})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model or None,
        "r": cfg.lora.rank,
        "lora_alpha": cfg.lora.alpha,
        "lora_dropout": cfg.lora.dropout,
        # Full module names: exactly the adapted modules, also when only some layers are.
        "target_modules": modules,
        "rank_pattern": {re.escape(m): rank for m, rank in ranks.items()},
        "alpha_pattern": {
            re.escape(m): cfg.lora.alpha * rank / cfg.lora.rank for m, rank in ranks.items()
        },
        "fan_in_fan_out": family.model_type == "gpt2",  # GPT-2's Conv1D stores (in, out)
        "bias": "none",
        "modules_to_save": None,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
    }
    with fresh_directory(out) as tmp:
        # safetensors writes an array's buffer as it lies: transposes must be made contiguous.
        tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), {"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return Path(out)
