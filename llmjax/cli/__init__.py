"""The `llmjax` command line: train, sft, reward, dpo, ppo, grpo, sample, chat, eval, convert,
presets, config (one module each; ppo and grpo share one)."""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import traceback
import warnings

from llmjax.cli import (
    chat,
    configs,
    convert,
    dpo,
    evaluate,
    presets,
    reward,
    rl,
    sample,
    sft,
    train,
)
from llmjax.cli.errors import (
    GENERAL_FIXES,
    OutOfMemory,
    debug,
    is_out_of_memory,
    os_error_message,
    out_of_memory_message,
    unexpected_message,
)
from llmjax.config import ConfigError

USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, ValueError, OutOfMemory)
# Options whose values are paths: an OSError on one of them names the option to change.
PATH_OPTIONS = (
    "out",
    "config",
    "data",
    "val_data",
    "run",
    "init_from",
    "from_hf",
    "to_hf",
    "tokenizer",
    "prompt_file",
    "template",
    "prompts",
    "reference",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmjax",
        description="Train, fine-tune, sample, chat with, evaluate and convert JAX language "
        "models.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (train, sft, reward, dpo, rl, sample, chat, evaluate, convert, presets, configs):
        command.add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs one command. Exit status: 0 done; 2 a user error (a value, file or size to change,
    said in one line); 3 training diverged; 1 an unexpected error (one line, the traceback with
    LLMJAX_DEBUG=1)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from llmjax.runs import CheckpointError, CheckpointWarning
    from llmjax.runtime import enable_compilation_cache
    from llmjax.train.hooks import TrainingDiverged

    warnings.filterwarnings("ignore", category=CheckpointWarning)  # logged already
    # What the imports built lives as long as the process: kept out of the collector's full
    # passes, which otherwise walk it again and again while the steps are traced (0.3 s of a
    # 30 s training run).
    gc.freeze()

    def fail(message: str, code: int, label: str = "error") -> int:
        if debug():
            traceback.print_exc()
        print(f"llmjax {args.command}: {label}: {message}", file=sys.stderr)
        return code

    try:
        enable_compilation_cache()
        return args.func(args)
    except (*USER_ERRORS, CheckpointError) as e:
        return fail(str(e), 2)
    except TrainingDiverged as e:
        return fail(str(e), 3, "training stopped")
    except OSError as e:
        paths = {f"--{n.replace('_', '-')}": getattr(args, n, None) for n in PATH_OPTIONS}
        return fail(os_error_message(e, paths), 2)
    except Exception as e:
        if is_out_of_memory(e):
            return fail(out_of_memory_message(e, {}, [GENERAL_FIXES]), 2)
        return fail(unexpected_message(e), 1, "unexpected error")


if __name__ == "__main__":
    sys.exit(main())
