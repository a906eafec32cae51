"""`section.field=value` overrides (the CLI's --set), parsed by each field's type."""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from typing import Any

from llmjax.config.io import RENAMED
from llmjax.config.run import Config
from llmjax.errors import ConfigError

log = logging.getLogger(__name__)

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_NONE = {"none", "null"}


def _parse_value(text: str, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if text.strip().lower() in _NONE and type(None) in typing.get_args(annotation):
            return None
        errors = []
        for option in options:
            try:
                return _parse_value(text, option, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError("; ".join(errors))
    if annotation is bool:
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"{where} expects a boolean (true/false), got {text!r}")
    if annotation is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{where} expects an integer, got {text!r}") from None
    if annotation is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{where} expects a number, got {text!r}") from None
    if annotation is str:
        return text
    raise ConfigError(f"{where} cannot be set from the command line (type {annotation})")


def _replace_path(obj: Any, path: list[str], text: str, full: str) -> Any:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    head = path[0]
    if head not in names:
        raise ConfigError(
            f"unknown option {full!r}: {type(obj).__name__} has no field {head!r}; "
            f"valid fields: {', '.join(names)}"
        )
    current = getattr(obj, head)
    if len(path) == 1:
        if dataclasses.is_dataclass(current):
            raise ConfigError(f"{full!r} is a section; set one of its fields, e.g. {full}.<field>")
        value = _parse_value(text, hints[head], full)
    else:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"{'.'.join(full.split('.')[: -len(path) + 1])!r} has no sub-fields")
        value = _replace_path(current, path[1:], text, full)
    return dataclasses.replace(obj, **{head: value})


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """Applies `section.field=value` strings (e.g. `model.n_layers=6`) with type checks.

    An option under a name it had before (see RENAMED) is set under its current name.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.field=value")
        key, text = (part.strip() for part in item.split("=", 1))
        if key in RENAMED:
            log.warning("%s is now called %s; setting that", key, RENAMED[key])
            key = RENAMED[key]
        cfg = _replace_path(cfg, key.split("."), text, key)
    return cfg
