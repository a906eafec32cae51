"""Configs to and from JSON: the config.json of every run directory."""

from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

from llmjax.config.run import Config
from llmjax.errors import ConfigError
from llmjax.files import write_atomic

# Options that moved: old dotted name -> current one. Saved configs and --set accept both.
RENAMED: dict[str, str] = {
    "optim.muon_adam_lr": "optim.muon.adam_lr",
    "optim.muon_ns_steps": "optim.muon.ns_steps",
}


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _from_dict(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object of fields, got {_json_type(data)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(
            f"{where}: unknown field(s) {sorted(unknown, key=str)}; valid fields: {sorted(names)}"
        )
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            value = _from_dict(hint, value, f"{where}.{key}")
        else:
            value = _checked(value, hint, f"{where}.{key}")
        kwargs[key] = value
    return cls(**kwargs)


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _checked(value: Any, hint: Any, where: str) -> Any:
    """`value` if JSON gave a value of type `hint` (an int where a float goes is one), else a
    ConfigError; the configs' own checks then see values of the types they compare."""
    options = (
        typing.get_args(hint)
        if typing.get_origin(hint) in (typing.Union, types.UnionType)
        else (hint,)
    )
    if value is None and type(None) in options:
        return value
    for option in options:
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if option is str and isinstance(value, str):
            return value
        if option not in _TYPE_NAMES and option is not type(None):
            return value  # a type JSON has no single form of: the config checks it
    wanted = " or ".join("null" if o is type(None) else _TYPE_NAMES.get(o, str(o)) for o in options)
    raise ConfigError(f"{where} must be {wanted}, got {_json_type(value)} {value!r}")


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number" if isinstance(value, int | float) else "a value")


def from_dict(data: dict[str, Any]) -> Config:
    """The Config a dict of sections describes (as `to_dict` or an older llmjax wrote it)."""
    return _from_dict(Config, migrate(data), "config")


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of `data` with options saved under their old names (RENAMED) moved to their
    current place, so that a run saved by an older llmjax still loads."""
    data = copy.deepcopy(data)
    for old, new in RENAMED.items():
        *old_sections, old_name = old.split(".")
        section = data
        for name in old_sections:
            section = section.get(name) if isinstance(section, dict) else None
        if not isinstance(section, dict) or old_name not in section:
            continue
        value = section.pop(old_name)
        *new_sections, new_name = new.split(".")
        target = data
        for name in new_sections:
            target = target.setdefault(name, {})
        target.setdefault(new_name, value)
    return data


def save_config(cfg: Config, path) -> None:
    """Writes config.json so that a reader sees the old file or the new one, never a torn one."""
    write_atomic(path, json.dumps(to_dict(cfg), indent=2) + "\n")


def load_config(path) -> Config:
    """The Config in a run's config.json; a file that is not one is a ConfigError naming it."""
    path = Path(path)
    fix = f"fix or restore {path.name} (llmjax train and llmjax convert write it)"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a config file (it is not UTF-8 text); {fix}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); {fix}") from None
    try:
        return from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}; {fix}") from None
