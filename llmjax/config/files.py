"""Config files (`llmjax train --config FILE`): YAML or JSON over a base config, checked key by
key before anything is built, with the line of a bad key; and the full config as text
(`llmjax config show`), which reads back to the same config.

    cfg = read_config_file("run.yaml", base=get_preset("nano"))   # the file's fields win
    print(config_text(cfg, "yaml"))
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import typing
from pathlib import Path
from typing import Any

from llmjax.config.io import _checked, _json_type, from_dict, migrate, to_dict
from llmjax.config.run import Config
from llmjax.errors import ConfigError

FORMATS = ("yaml", "json")
# YAML 1.1 (PyYAML) reads `1e-3` as a string: its floats need a dot and a signed exponent.
# Where a number goes, such a string is read as the number the writer meant.
_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def read_config_file(path: str | Path, base: Config | None = None) -> Config:
    """The config a YAML or JSON file describes: its sections and fields replace those of
    `base` (default: Config()); a file a run saved (config.json) gives that run's config.
    An unknown key, a value of the wrong type, or a value the config refuses is a ConfigError
    naming the file, the key, its line and the fix."""
    path = Path(path)
    text = _read(path)
    data, lines = _parse(text, path)
    if data is None:
        raise ConfigError(
            f"{path} is empty; write config sections in it (model:, data:, optim:, train: ...; "
            f"`llmjax config show` prints them all) or drop --config"
        )
    data = _checked_section(Config, migrate(data) if isinstance(data, dict) else data, (),
                            path, lines)  # fmt: skip
    merged = _merge(to_dict(Config() if base is None else base), data)
    try:
        return from_dict(merged)
    except ConfigError as e:  # a value out of range: the section's own check says why
        raise ConfigError(f"{_where(path, lines, _named_key(str(e), lines))}: {e}") from None


def config_text(cfg: Config, fmt: str = "yaml") -> str:
    """Every field of `cfg` as YAML or JSON, in the dataclasses' order; `read_config_file`
    reads it back to `cfg`."""
    data = to_dict(cfg)
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    raise ConfigError(f"config format {fmt!r} is not known; valid formats: {', '.join(FORMATS)}")


def _read(path: Path) -> str:
    if path.is_dir():
        hint = f"; pass {path / 'config.json'}" if (path / "config.json").is_file() else ""
        raise ConfigError(f"--config {path} is a directory, not a config file{hint}")
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist; check the path (`llmjax config show > "
            f"{path.name}` writes a full config to start from)"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a config file (it is not UTF-8 text)") from None


def _parse(text: str, path: Path) -> tuple[Any, dict[tuple[str, ...], int]]:
    """(the file's data, the line of each key path). JSON files are read as JSON; others as
    YAML (yaml.safe_load: tags that build Python objects are refused)."""
    import yaml

    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(
                f"{path} line {e.lineno}: not valid JSON ({e.msg}); fix the syntax there"
            ) from None
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path} line {mark.line + 1}" if mark is not None else str(path)
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            message = f"{where}: not valid YAML ({problem}); fix the syntax there"
            raise ConfigError(message) from None
    return data, _key_lines(text)


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """The line (from 1) of each key path in a YAML or JSON text (JSON parses as YAML); empty
    where the text does not parse as YAML."""
    import yaml

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: Any, prefix: tuple[str, ...]) -> None:
        if not isinstance(node, yaml.MappingNode):
            return
        for key, value in node.value:
            path = (*prefix, str(key.value))
            lines[path] = key.start_mark.line + 1
            walk(value, path)

    walk(root, ())
    return lines


def _where(path: Path, lines: dict[tuple[str, ...], int], key: tuple[str, ...] | None) -> str:
    line = lines.get(key) if key else None
    return f"{path} line {line}" if line else str(path)


def _named_key(message: str, lines: dict[tuple[str, ...], int]) -> tuple[str, ...] | None:
    """The key of the file that a config check's message names first (longest match)."""
    named = [k for k in lines if re.search(rf"\b{re.escape('.'.join(k))}\b", message)]
    return max(named, key=len) if named else None


def _checked_section(
    cls: type, data: Any, prefix: tuple[str, ...], path: Path, lines: dict
) -> dict[str, Any]:
    """`data` checked against the fields of dataclass `cls`: every key known, every value of
    its field's type; floats written as YAML 1.1 strings ("1e-3") become numbers."""
    name = ".".join(prefix) or "the config"
    if not isinstance(data, dict):
        raise ConfigError(
            f"{_where(path, lines, prefix or None)}: {name} must be a mapping of fields "
            f"(key: value lines), got {_json_type(data)} {data!r}; e.g. `train:` followed by "
            f"`  steps: 100`"
        )
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    checked: dict[str, Any] = {}
    for key, value in data.items():
        key_path = (*prefix, str(key))
        dotted = ".".join(key_path)
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            guess = f"did you mean {'.'.join((*prefix, close[0]))}? " if close else ""
            raise ConfigError(
                f"{_where(path, lines, key_path)}: unknown key {dotted!r}; {guess}valid keys "
                f"{'of ' + name if prefix else 'at the top'}: {', '.join(fields)}. Rename or "
                f"remove it"
            )
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            checked[key] = _checked_section(hint, value, key_path, path, lines)
            continue
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value) and _takes_float(hint):
            value = float(value)
        try:
            checked[key] = _checked(value, hint, dotted)
        except ConfigError as e:
            raise ConfigError(
                f"{_where(path, lines, key_path)}: {e}; write a value of that type there"
            ) from None
    return checked


def _takes_float(hint: Any) -> bool:
    return hint is float or float in typing.get_args(hint)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
