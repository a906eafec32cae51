"""`llmjax presets [NAME]`: the named configs, or one of them in full."""

from __future__ import annotations

import argparse

from llmjax.config import PRESET_DESCRIPTIONS, PRESETS, config_text, get_preset
from llmjax.config.files import FORMATS


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "presets",
        help="list the named configs, or show one",
        description="List the named configs (name, parameters, description), or print one "
        "in full as `llmjax config show --preset NAME` does.",
    )
    p.add_argument("name", nargs="?", default=None, help="a preset to print in full")
    p.add_argument("--format", choices=FORMATS, default="yaml", help="for NAME (default: yaml)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.name is not None:
        print(config_text(get_preset(args.name), args.format), end="")
        return 0
    print("\n".join(preset_table()))
    return 0


def preset_table() -> list[str]:
    """Aligned lines: name, parameters (at the preset's model.vocab_size; a run sets the
    vocabulary from its tokenizer) and the one-line description of every preset."""
    from llmjax.scaling import param_counts

    rows = [("name", "params", "description")]
    for name, cfg in PRESETS.items():
        params = _count(param_counts(cfg.model).total)
        rows.append((name, params, PRESET_DESCRIPTIONS.get(name, "")))
    name_w = max(len(r[0]) for r in rows)
    params_w = max(len(r[1]) for r in rows)
    return [f"{n:<{name_w}}  {p:>{params_w}}  {d}".rstrip() for n, p, d in rows]


def _count(n: int) -> str:
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)
