"""`llmjax dpo`: direct preference optimisation (DPO, IPO) of a trained run on preference
pairs, against its own starting params as the reference (llmjax.align.preference)."""

from __future__ import annotations

import argparse

from llmjax.cli.reward import DATA_HELP, add_common, run_preference
from llmjax.config import PREFERENCE_LOSSES, ConfigError

DESCRIPTION = (
    """\
Fine-tune a trained run on preference pairs with DPO (--loss sigmoid) or IPO (--loss ipo): the
policy starts from --init-from's params, and a frozen copy of them is the reference its
log-probability ratios are measured against (--beta: how strongly it is kept close).

"""
    + DATA_HELP
)


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dpo",
        help="preference-optimise a run on pairs (DPO, IPO)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(p)
    g = p.add_argument_group("DPO")
    g.add_argument(
        "--beta",
        type=float,
        default=None,
        help="strength of the implicit KL to the reference (default: 0.1)",
    )
    g.add_argument(
        "--loss", choices=PREFERENCE_LOSSES, default=None, help="sigmoid (DPO) or ipo (IPO)"
    )
    g.add_argument(
        "--label-smoothing",
        type=float,
        default=None,
        metavar="LS",
        help="share of pairs taken to be mislabelled (conservative DPO; default: 0)",
    )
    g.add_argument(
        "--reference",
        default=None,
        metavar="RUN",
        help="the reference policy's run (default: --init-from); it must share its tokenizer",
    )
    g.add_argument(
        "--cache-reference",
        action="store_true",
        help="compute the reference's log-probs of every pair once before training, instead of "
        "a reference forward in each step",
    )
    p.set_defaults(func=run, command_options=("beta", "loss", "label_smoothing", "reference"))


def run(args: argparse.Namespace) -> int:
    if args.beta is not None and not args.beta > 0:
        raise ConfigError(
            f"--beta must be > 0 (e.g. 0.1; higher stays closer to the reference), got {args.beta}"
        )
    extra = [
        f"preference.{name}={value}"
        for name, value in (
            ("beta", args.beta),
            ("loss", args.loss),
            ("label_smoothing", args.label_smoothing),
        )
        if value is not None
    ]
    return run_preference(args, "dpo", extra)
