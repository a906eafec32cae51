"""`llmjax config show`: the full config a preset, a config file and overrides resolve to."""

from __future__ import annotations

import argparse

from llmjax.config import apply_overrides, config_text, get_preset, read_config_file
from llmjax.config.files import FORMATS


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config",
        help="show the full config of a preset, a config file and overrides",
        description="Print every field of a config, as `llmjax train` would start from it "
        "(before its tokenizer sets model.vocab_size). The output is a config file: "
        "`llmjax train --config FILE` reads it back.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="print the resolved config")
    show.add_argument("--preset", default=None, help="starting config (default: nano)")
    show.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="a YAML or JSON config file whose fields replace the preset's",
    )
    show.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.steps=100 (repeatable)",
    )
    show.add_argument("--format", choices=FORMATS, default="yaml", help="default: yaml")
    show.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = get_preset(args.preset or "nano")
    if args.config is not None:
        cfg = read_config_file(args.config, cfg)
    cfg = apply_overrides(cfg, args.overrides)
    print(config_text(cfg, args.format), end="")
    return 0
