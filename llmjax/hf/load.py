"""Loading a Hugging Face checkpoint directory as an llmjax config, params and tokenizer."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from llmjax.config import DTYPES, Config, ConfigError, DataConfig
from llmjax.data import BPETokenizer
from llmjax.hf.family import HFError, get_family
from llmjax.hf.params import read_params, unflatten
from llmjax.hf.safetensors_io import SafetensorsCheckpoint
from llmjax.models import build_model
from llmjax.runs.generation import EOS_KEY, eos_ids_from, read_json_key

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
TOKENIZER_FILE = "tokenizer.json"
# Converted runs evaluate in windows of at most this many tokens (Llama 3 declares 131072).
DEFAULT_EVAL_SEQ_LEN = 1024


@dataclass
class HFModel:
    """A Hugging Face checkpoint in llmjax form: params in the scan layout."""

    config: Config
    params: dict[str, Any]
    tokenizer: BPETokenizer | None
    model_type: str
    eos_ids: tuple[int, ...] = ()  # where generation stops (read_eos_ids)

    @property
    def model(self):
        return build_model(self.config.model)


def read_hf_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    if not Path(directory).exists():
        raise HFError(missing_directory_message(str(directory)))
    if not path.is_file():
        raise HFError(
            f"no {CONFIG_FILE} in {directory}; pass a Hugging Face checkpoint directory "
            f"(config.json + model.safetensors, as save_pretrained writes)"
        )
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HFError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(hf, dict) or "model_type" not in hf:
        raise HFError(f"{path} has no model_type; it is not a transformers config")
    return hf


def missing_directory_message(name: str) -> str:
    """Says that `name` is no directory here, and how to download a Hub model of that name."""
    local = Path(name.rstrip("/")).name or "model"
    return (
        f"{name} is not a directory here; llmjax converts a checkpoint on disk and downloads "
        f"nothing. If {name} is a model on the Hugging Face Hub, download it first, e.g. "
        f"`huggingface-cli download {name} --local-dir {local}` (or `hf download {name} "
        f"--local-dir {local}`), then pass that directory"
    )


def read_eos_ids(directory: Path, hf: dict[str, Any], vocab_size: int) -> tuple[int, ...]:
    """The ids transformers' `generate` stops at: generation_config.json's eos_token_id when
    that file sets one, else config.json's (each an id or a list of ids)."""
    found, value = read_json_key(directory / GENERATION_CONFIG_FILE, EOS_KEY)
    where = directory / (GENERATION_CONFIG_FILE if found else CONFIG_FILE)
    try:
        return eos_ids_from(value if found else hf.get(EOS_KEY), vocab_size, str(where))
    except ValueError as e:
        raise HFError(str(e)) from None


def load_tokenizer_file(path: str | Path, vocab_size: int) -> BPETokenizer:
    tokenizer = BPETokenizer.from_file(path)
    if tokenizer.vocab_size > vocab_size:
        raise HFError(
            f"{path} has {tokenizer.vocab_size} token ids but the model only {vocab_size} "
            f"embedding rows; this tokenizer does not belong to this model"
        )
    return tokenizer


def load_hf(directory: str | Path, *, dtype: str = "float32") -> HFModel:
    """Reads `config.json`, the safetensors weights and (if present) `tokenizer.json`.

    `dtype` is both the parameter and the compute dtype; float32 matches transformers' logits
    to ~1e-5, bfloat16 halves the memory.
    """
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not known; valid choices: {', '.join(DTYPES)}")
    directory = Path(directory)
    hf = read_hf_config(directory)
    family = get_family(hf["model_type"], where=str(directory / CONFIG_FILE))
    try:
        model_cfg = family.config_from_hf(hf)
    except HFError as e:
        raise HFError(f"{directory / CONFIG_FILE}: {e}") from e
    except (ConfigError, TypeError, ValueError) as e:
        # A value of the wrong type or range (e.g. "n_embd": "768"): the config names the
        # option, the file is named here.
        raise HFError(
            f"{directory / CONFIG_FILE} does not describe a model llmjax can build: {e}; fix "
            f"that value, or use the config.json the checkpoint was saved with"
        ) from e
    model_cfg = dataclasses.replace(model_cfg, dtype=dtype, param_dtype=dtype)
    with SafetensorsCheckpoint(directory) as ckpt:
        flat = read_params(family, model_cfg, ckpt)
    params = unflatten({path: jnp.asarray(x) for path, x in flat.items()})
    del flat
    tokenizer = None
    data = DataConfig(seq_len=min(model_cfg.max_seq_len, DEFAULT_EVAL_SEQ_LEN))
    if (directory / TOKENIZER_FILE).is_file():
        tokenizer = load_tokenizer_file(directory / TOKENIZER_FILE, model_cfg.vocab_size)
        data = dataclasses.replace(data, tokenizer=str((directory / TOKENIZER_FILE).absolute()))
    eos_ids = read_eos_ids(directory, hf, model_cfg.vocab_size)
    return HFModel(
        Config(model=model_cfg, data=data), params, tokenizer, family.model_type, eos_ids
    )
