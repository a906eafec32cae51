"""The chat template of a run: which one a fine-tuned model was trained with, kept in its run
directory so that chatting with it renders conversations exactly as training did.

    RUN/chat_template.json    {"template": "simple"}, or {"template": "hf", "special_tokens":
                              {"bos_token": ..., ...}} with the Jinja source in
    RUN/chat_template.jinja

A run with no chat_template.json may still carry a Hugging Face template: a
chat_template.jinja or a tokenizer_config.json with a "chat_template" (placed there by hand,
or by a converter). A template is chosen by a spec: "simple" (llmjax's role markers), "hf"
(the run's Hugging Face template) or the path of a Jinja file, a tokenizer_config.json or a
Hugging Face tokenizer directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from llmjax.data import BPETokenizer, Tokenizer
from llmjax.data.instruct import ChatTemplate, HFChatTemplate, SimpleTemplate
from llmjax.errors import ChatTemplateError, ConfigError

TEMPLATE_FILE = "chat_template.json"
JINJA_FILE = "chat_template.jinja"
HF_CONFIG_FILE = "tokenizer_config.json"
SPECS = ("simple", "hf")
SPEC_HELP = (
    "simple (llmjax's role markers), hf (the run's Hugging Face chat template), or the path "
    "of a Jinja template, a tokenizer_config.json or a Hugging Face tokenizer directory"
)


def template_files(template: ChatTemplate) -> dict[str, str]:
    """The run files that record `template` (names in RUN_FILES, texts to write)."""
    if isinstance(template, SimpleTemplate):
        return {TEMPLATE_FILE: json.dumps({"template": "simple"}, indent=1) + "\n"}
    if isinstance(template, HFChatTemplate):
        record = {"template": "hf", "special_tokens": dict(template.special_tokens)}
        return {
            TEMPLATE_FILE: json.dumps(record, indent=1) + "\n",
            JINJA_FILE: template.source,
        }
    raise ChatTemplateError(
        f"a {type(template).__name__} cannot be recorded in a run directory; use a "
        f"SimpleTemplate or an HFChatTemplate"
    )


def save_template(run_path: str | os.PathLike, template: ChatTemplate) -> None:
    """Writes the files of `template` into the run directory `run_path`."""
    from llmjax.files import write_atomic

    for name, text in template_files(template).items():
        write_atomic(Path(run_path) / name, text)


def has_hf_template(directory: Path) -> bool:
    """Whether `directory` holds a chat_template.jinja or a tokenizer_config.json with one."""
    if (directory / JINJA_FILE).is_file():
        return True
    config = directory / HF_CONFIG_FILE
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("chat_template") is not None
    except (OSError, ValueError, AttributeError):
        return True  # it claims to be one: reading it says what is wrong


def run_template(
    run_path: str | os.PathLike, tokenizer: Tokenizer | None = None
) -> ChatTemplate | None:
    """The template the run in `run_path` records (or its Hugging Face one); None if none."""
    directory = Path(run_path)
    record_file = directory / TEMPLATE_FILE
    if record_file.is_file():
        return _recorded(record_file)
    if has_hf_template(directory):
        return _with_tokens(HFChatTemplate.from_pretrained(directory), tokenizer)
    return None


def _recorded(record_file: Path) -> ChatTemplate:
    try:
        record: Any = json.loads(record_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ChatTemplateError(f"{record_file} is not JSON ({e}); restore it") from None
    kind = record.get("template") if isinstance(record, dict) else None
    if kind == "simple":
        return SimpleTemplate()
    if kind == "hf":
        jinja = record_file.parent / JINJA_FILE
        if not jinja.is_file():
            raise ChatTemplateError(
                f"{record_file} names a Hugging Face template but {jinja} is missing; restore "
                f"it, or chat with --template"
            )
        tokens = record.get("special_tokens") or {}
        if not isinstance(tokens, dict) or not all(isinstance(v, str) for v in tokens.values()):
            raise ChatTemplateError(f"{record_file}: 'special_tokens' is not a map of strings")
        return HFChatTemplate(jinja.read_text(encoding="utf-8"), tokens)
    raise ChatTemplateError(
        f"{record_file}: 'template' is {kind!r}; expected 'simple' or 'hf'. Restore the file, or "
        f"chat with --template"
    )


def choose_template(
    spec: str,
    run_path: str | os.PathLike,
    tokenizer: Tokenizer | None = None,
    *,
    option: str = "--template",
) -> ChatTemplate:
    """The template `spec` names (see the module docstring); `run_path` is the run whose
    Hugging Face template "hf" means. Raises ConfigError naming `option` if there is none."""
    if spec == "simple":
        return SimpleTemplate()
    directory = Path(run_path)
    if spec == "hf":
        if not has_hf_template(directory):
            raise ConfigError(
                f"{option} hf: {directory} has no Hugging Face chat template (no {JINJA_FILE}, "
                f"and no {HF_CONFIG_FILE} with a 'chat_template'); pass {option} simple, or the "
                f"path of a template"
            )
        return _with_tokens(HFChatTemplate.from_pretrained(directory), tokenizer)
    path = Path(spec).expanduser()
    if not path.exists():
        raise ConfigError(f"{option} {spec}: no such file or directory; pass {SPEC_HELP}")
    if path.is_dir() or path.name == HF_CONFIG_FILE or path.suffix == ".json":
        return _with_tokens(HFChatTemplate.from_pretrained(path), tokenizer)
    try:
        source = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{option} {spec} is not UTF-8 text, so not a Jinja template") from None
    return _with_tokens(HFChatTemplate(source), tokenizer)


def _with_tokens(template: HFChatTemplate, tokenizer: Tokenizer | None) -> HFChatTemplate:
    """The template with the tokenizer's BOS/EOS/PAD strings for the names its config lacks
    (a bare Jinja file names none), as transformers takes them from the tokenizer."""
    if not isinstance(tokenizer, BPETokenizer):
        return template
    ids = {
        "bos_token": tokenizer.bos_id,
        "eos_token": tokenizer.eos_id,
        "pad_token": tokenizer.pad_id,
    }
    tokens = {
        name: tokenizer.hf.id_to_token(i)
        for name, i in ids.items()
        if i is not None and name not in template.special_tokens
    }
    if not tokens:
        return template
    return HFChatTemplate(template.source, {**tokens, **template.special_tokens})
