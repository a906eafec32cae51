"""A run's generation_config.json: the token ids generation stops at, as Hugging Face keeps them.

Chat models end a reply with a token other than the tokenizer's EOS (Llama-3-Instruct's
<|eot_id|>, Qwen's <|im_end|>), and their `config.json` / `generation_config.json` list every
such id under `eos_token_id`. A run converted from one keeps that list here, so `generate`
stops where transformers' `generate` does; a run without the file stops at its tokenizer's EOS.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

EOS_KEY = "eos_token_id"


def eos_ids_from(value: Any, vocab_size: int, where: str) -> tuple[int, ...]:
    """`eos_token_id` (an id, a list of ids, or null) as a tuple of ids in the vocabulary."""
    if value is None:
        return ()
    ids = value if isinstance(value, list) else [value]
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab_size:
            raise ValueError(
                f"{where}: {EOS_KEY}={value!r} is not a token id or list of token ids in "
                f"0..{vocab_size - 1}; fix the value or remove it"
            )
    return tuple(dict.fromkeys(ids))  # in order, without repeats


def read_json_key(path: Path, key: str) -> tuple[bool, Any]:
    """(found, value) of `key` in the JSON object at `path` (not found: no file or no key)."""
    if not path.is_file():
        return False, None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(payload, dict) or key not in payload:
        return False, None
    return True, payload[key]


def read_eos_ids(path: Path, vocab_size: int) -> tuple[int, ...]:
    """The stop ids a run's generation_config.json lists (none without the file)."""
    _, value = read_json_key(path, EOS_KEY)
    return eos_ids_from(value, vocab_size, str(path))


def generation_config_text(eos_ids: tuple[int, ...]) -> str:
    """What generation_config.json holds for these stop ids."""
    return json.dumps({EOS_KEY: list(eos_ids)}, indent=2) + "\n"
