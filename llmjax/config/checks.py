"""The small checks every config section uses; each failure is a ConfigError saying the fix."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

from llmjax.errors import ConfigError


def check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check_positive(obj: Any, *names: str, section: str | None = None) -> None:
    """Each named field is None or a positive integer."""
    owner = section or type(obj).__name__
    for name in names:
        value = getattr(obj, name)
        if value is not None:
            check(
                isinstance(value, int) and value > 0,
                f"{owner}.{name} must be a positive integer, got {value!r}",
            )


def check_finite(obj: Any, *names: str, section: str | None = None) -> None:
    """Each named field is None or a finite number: inf and nan pass comparisons such as
    `lr > 0` (or fail them with a message about the range), so they are refused first."""
    owner = section or type(obj).__name__
    defaults = {f.name: f.default for f in dataclasses.fields(obj)}
    for name in names:
        value = getattr(obj, name)
        if value is None:
            continue
        number = isinstance(value, int | float) and not isinstance(value, bool)
        default = defaults.get(name, dataclasses.MISSING)
        hint = "" if default in (dataclasses.MISSING, None) else f" (the default is {default!r})"
        check(
            number and math.isfinite(value),
            f"{owner}.{name} must be a finite number, got {value!r}; set a finite value{hint}",
        )


def check_choice(option: str, value: str, choices: Iterable[str]) -> None:
    """`value` is one of a fixed set of `choices` (registered names are checked where they
    are built, by the registry itself)."""
    choices = list(choices)
    check(
        value in choices,
        f"{option}={value!r} is not known; valid choices: {', '.join(choices)}",
    )


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
