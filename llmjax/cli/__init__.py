"""The `llmjax` command line: train, sample, eval, convert, presets (one module each)."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

from llmjax.cli import convert, evaluate, presets, sample, train
from llmjax.config import ConfigError

USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError, ValueError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmjax",
        description="Train, sample, evaluate and convert JAX language models.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (train, sample, evaluate, convert, presets):
        command.add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from llmjax.runs import CheckpointError, CheckpointWarning
    from llmjax.runtime import enable_compilation_cache
    from llmjax.train.hooks import TrainingDiverged

    enable_compilation_cache()
    warnings.filterwarnings("ignore", category=CheckpointWarning)  # logged already
    try:
        return args.func(args)
    except (*USER_ERRORS, CheckpointError) as e:
        print(f"llmjax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"llmjax {args.command}: training stopped: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
