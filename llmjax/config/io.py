"""Configs to and from JSON: the config.json of every run directory."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import typing
from pathlib import Path
from typing import Any

from llmjax.config.run import Config
from llmjax.errors import ConfigError

# Options that moved: old dotted name -> current one. Saved configs and --set accept both.
RENAMED: dict[str, str] = {
    "optim.muon_adam_lr": "optim.muon.adam_lr",
    "optim.muon_ns_steps": "optim.muon.ns_steps",
}


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(
            f"{where}: unknown field(s) {sorted(unknown)}; valid fields: {sorted(names)}"
        )
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = _from_dict(hint, value, f"{where}.{key}")
        kwargs[key] = value
    return cls(**kwargs)


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
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(to_dict(cfg), f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def load_config(path) -> Config:
    with open(path) as f:
        return from_dict(json.load(f))
