"""Writing llmjax params as a Hugging Face checkpoint directory that `transformers` loads."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from llmjax.config import DTYPES, Config, ConfigError, ModelConfig
from llmjax.data import BPETokenizer, Tokenizer
from llmjax.hf.family import choose_family
from llmjax.hf.outdir import check_new, fresh_directory
from llmjax.hf.params import export_layout, write_tensors
from llmjax.hf.safetensors_io import write_safetensors
from llmjax.models.lora import merge_adapters

log = logging.getLogger(__name__)


def _token(tokenizer: BPETokenizer, i: int | None) -> str | None:
    return None if i is None else tokenizer.hf.id_to_token(i)


def _write_tokenizer(
    tokenizer: BPETokenizer, directory: Path, max_seq_len: int, chat_template: str | None
) -> None:
    """tokenizer.json (a byte or char tokenizer in its HF form, see Tokenizer.to_hf) and
    tokenizer_config.json."""
    (directory / "tokenizer.json").write_text(tokenizer.to_json())
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_seq_len,
        "bos_token": _token(tokenizer, tokenizer.bos_id),
        "eos_token": _token(tokenizer, tokenizer.eos_id),
        "pad_token": _token(tokenizer, tokenizer.pad_id),
        "chat_template": chat_template,
    }
    text = json.dumps({k: v for k, v in config.items() if v is not None}, indent=2)
    (directory / "tokenizer_config.json").write_text(text + "\n")


def export_hf(
    cfg: Config | ModelConfig,
    params: dict[str, Any],
    out: str | Path,
    *,
    tokenizer: Tokenizer | None = None,
    model_type: str | None = None,
    dtype: str | None = None,
    chat_template: str | None = None,
    eos_ids: tuple[int, ...] = (),
) -> Path:
    """Writes `out/` with config.json, generation_config.json, model.safetensors and tokenizer
    files (a byte or char tokenizer in the HF form that gives its ids), with `chat_template`
    (Jinja source) in tokenizer_config.json when given. `eos_ids` are the ids generation stops
    at (a converted chat model's list; default: the tokenizer's EOS).

    `model_type` picks the HF family (default: the first that holds the model exactly, else one
    that only adds zero biases); `dtype` casts the weights (default: the params' own). `out`
    must not exist. LoRA adapters are merged into their kernels (`export_peft` writes them
    apart instead).
    """
    model_cfg = cfg.model if isinstance(cfg, Config) else cfg
    if model_cfg.lora.rank:
        params, model_cfg = merge_adapters(params, model_cfg)
    if model_cfg.value_head:
        log.warning(
            "the value head (model.value_head: a reward model's score or a PPO policy's value) "
            "has no place in a Hugging Face causal LM and is not exported"
        )
        params = {k: v for k, v in params.items() if k != "value_head"}
        model_cfg = dataclasses.replace(model_cfg, value_head=False)
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not known; valid choices: {', '.join(DTYPES)}")
    check_new(out)
    family = choose_family(model_cfg, model_type)
    target, flat = export_layout(family, model_cfg, params)
    out_dtype = np.dtype(dtype or next(iter(flat.values())).dtype)
    tensors = write_tensors(family, target, flat, out_dtype)
    del flat
    hf_config = {
        "architectures": [family.architecture],
        "model_type": family.model_type,
        **family.config_to_hf(target),
        "tie_word_embeddings": target.tie_embeddings,
        "torch_dtype": out_dtype.name,
        "use_cache": True,
    }
    hf_tokenizer = None if tokenizer is None else tokenizer.to_hf()
    bpe = None if hf_tokenizer is None else BPETokenizer(hf_tokenizer)
    eos = list(eos_ids)
    if not eos and tokenizer is not None and tokenizer.eos_id is not None:
        eos = [tokenizer.eos_id]
    # Always written: transformers' defaults (e.g. GPT-2's 50256) may not exist in this vocab.
    special = dict(
        bos_token_id=None if tokenizer is None else tokenizer.bos_id,
        eos_token_id=(eos[0] if len(eos) == 1 else eos) if eos else None,
        pad_token_id=None if tokenizer is None else tokenizer.pad_id,
    )
    hf_config.update(special)
    if tokenizer is not None and bpe is None:
        log.warning(
            "the %s tokenizer has no Hugging Face form; %s gets no tokenizer.json",
            tokenizer.kind,
            out,
        )
    with fresh_directory(out) as tmp:
        write_safetensors(tensors, tmp)
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        generation = {k: v for k, v in special.items() if v is not None}
        if generation:  # what transformers' generate reads first (its eos_token_id list)
            (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        if bpe is not None:
            _write_tokenizer(bpe, tmp, target.max_seq_len, chat_template)
    return Path(out)
