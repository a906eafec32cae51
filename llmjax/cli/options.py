"""Options that the commands starting a run from another run share (sft, reward, dpo, ppo,
grpo): where the run goes, how long it trains, config overrides, resuming and overwriting."""

from __future__ import annotations

import argparse

RESUME_HELP = (
    "continue the run in --out from its newest checkpoint (its data, template and config are "
    "the recorded ones; --steps and --set train.* may change)"
)


def add_run_options(
    p: argparse.ArgumentParser,
    *,
    steps_help: str = "shorthand for --set train.steps=N",
    set_example: str = "optim.lr=3e-4",
    resume_help: str = RESUME_HELP,
) -> None:
    """--out, --steps, --set, --resume, --overwrite and --no-progress."""
    p.add_argument(
        "--out", default=None, help="run directory to create (or, with --resume, continue)"
    )
    p.add_argument("--steps", type=int, default=None, metavar="N", help=steps_help)
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config field, e.g. --set {set_example} (repeatable)",
    )
    p.add_argument("--resume", action="store_true", help=resume_help)
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing run directory's llmjax files"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
