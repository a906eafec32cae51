"""`llmjax sft`: supervised fine-tuning of a trained run on conversations (llmjax.finetune)."""

from __future__ import annotations

import argparse
import json
import signal
import sys

from llmjax.cli.errors import check_writable_dir, explain_out_of_memory, train_memory
from llmjax.cli.options import add_run_options
from llmjax.config import ConfigError
from llmjax.data.instruct import TRAIN_ON

# Options that set SFTConfig fields (unset: the field's default).
DATA_OPTIONS = (
    "val_data",
    "val_fraction",
    "train_on",
    "no_packing",
    "builtin_examples",
    "data_seed",
)

DESCRIPTION = """\
Fine-tune a trained run on conversations with the sft objective: the loss is taken on the
replies only (--train-on all: on every token). A new run starts from --init-from's newest
params and tokenizer with a fresh optimizer; its config is RUN's, with train.objective=sft
and the changes --steps and --set make.

--data is a JSONL file, one conversation per line:
  {"prompt": "...", "response": "..."}                (optional "system": "...")
  {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
or a .parquet file of the same columns (one conversation per row), or `builtin`: llmjax's
generated tasks (reverse, sort, count, add, ...), no file needed.

The run records its chat template (chat_template.json, and chat_template.jinja for a Hugging
Face one) and its data settings (sft.json), so that `llmjax chat --run OUT` renders as
training did and `llmjax sft --resume --out OUT` continues exactly where it stopped.
"""


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sft",
        help="fine-tune a run on conversations (instruction tuning)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--init-from",
        default=None,
        metavar="RUN",
        help="the run to fine-tune (trained by `llmjax train`, converted by `llmjax convert`, "
        "or fine-tuned before)",
    )
    p.add_argument(
        "--data",
        default=None,
        metavar="FILE",
        help="JSONL (or .parquet) file of conversations, or `builtin` for the generated tasks",
    )
    add_run_options(
        p,
        steps_help="shorthand for --set train.steps=N (default: RUN's train.steps)",
        resume_help="continue the sft run in --out from its newest checkpoint (its data, "
        "template and config are the recorded ones; --steps and --set train.* may change)",
    )
    g = p.add_argument_group("instruction data")
    g.add_argument(
        "--template",
        default=None,
        metavar="simple|hf|PATH",
        help="chat template: simple (llmjax's role markers), hf (RUN's Hugging Face template), or "
        "the path of a Jinja template / tokenizer_config.json (default: the template RUN "
        "records, e.g. a converted Hugging Face model's, else simple)",
    )
    g.add_argument(
        "--train-on",
        choices=TRAIN_ON,
        default=None,
        help="which tokens the loss trains on (default: responses)",
    )
    g.add_argument(
        "--no-packing",
        action="store_true",
        help="one conversation per row instead of packing several into each row",
    )
    g.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        metavar="F",
        help="share of --data held out for evaluation (default: 0.1; ignored with --val-data)",
    )
    g.add_argument(
        "--val-data",
        default=None,
        metavar="FILE",
        help="JSONL (or .parquet) file to evaluate on instead",
    )
    g.add_argument(
        "--builtin-examples",
        type=int,
        default=None,
        metavar="N",
        help="with --data builtin: how many tasks to generate (default: 2000)",
    )
    g.add_argument(
        "--data-seed",
        type=int,
        default=None,
        metavar="N",
        help="seed of the built-in tasks and of the held-out split (default: 0)",
    )
    add_adapter_options(p)
    p.set_defaults(func=run)


# ----------------------------------------------------------------------------- adapters
# LoRA's options: --lora-rank, --lora-alpha, --lora-dropout and --lora-targets, each becoming a
# --set model.lora.<field>=VALUE override (adapter_overrides).


def add_adapter_options(p: argparse.ArgumentParser) -> None:
    """Adds the LoRA options (each stands for a --set model.lora.* override)."""
    g = p.add_argument_group(
        "LoRA", "train low-rank adapters beside the frozen weights instead of every weight"
    )
    g.add_argument(
        "--lora-rank",
        type=int,
        default=None,
        metavar="R",
        help="rank of the adapters (e.g. 8); without it every weight is trained",
    )
    g.add_argument(
        "--lora-alpha",
        type=float,
        default=None,
        help="the adapters' update is scaled by alpha / rank (default: 16)",
    )
    g.add_argument(
        "--lora-dropout",
        type=float,
        default=None,
        help="dropout on the adapters' input while training (default: 0)",
    )
    g.add_argument(
        "--lora-targets",
        default=None,
        metavar="REGEX",
        help="regular expression searched in each weight's param path, e.g. "
        "'query|value' (default: every attention and MLP projection, 'attention/|mlp/')",
    )


def adapter_overrides(args: argparse.Namespace) -> list[str]:
    """The --set overrides the LoRA options stand for."""
    given = {
        name: getattr(args, f"lora_{name}", None)
        for name in ("rank", "alpha", "dropout", "targets")
    }
    given = {k: v for k, v in given.items() if v is not None}
    if not given:
        return []
    rank = given.get("rank")
    if rank is None:
        raise ConfigError(
            f"--lora-{next(iter(given))} needs --lora-rank R (the adapters' rank, e.g. 8)"
        )
    if rank <= 0:
        raise ConfigError(
            f"--lora-rank must be >= 1 (e.g. 8), got {rank}; leave it out to train every weight"
        )
    return [f"model.lora.{k}={v}" for k, v in given.items()]


# ----------------------------------------------------------------------------- the command


def run(args: argparse.Namespace) -> int:
    from llmjax.finetune import SFTConfig, describe, fit_sft, open_sft, sft_config
    from llmjax.train.hooks import TrainingDiverged, TrainingInterrupted

    if args.out is None:
        what = "the run directory to continue" if args.resume else "the run directory to create"
        raise ConfigError(f"sft needs --out DIR, {what}")
    settings = None
    if args.resume:
        given = [
            f"--{name.replace('_', '-')}"
            for name in (
                "init_from",
                "data",
                "template",
                *DATA_OPTIONS,
                *(f"lora_{k}" for k in ("rank", "alpha", "dropout", "targets")),
            )
            if getattr(args, name) not in (None, False)
        ]
        if given:
            raise ConfigError(
                f"--resume continues {args.out} with the data, template and params it recorded; "
                f"drop {', '.join(given)}"
            )
    overrides = [*adapter_overrides(args), *args.overrides]
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    cfg = sft_config(
        init_from=None if args.resume else args.init_from,
        resume=args.out if args.resume else None,
        overrides=overrides,
    )
    if not args.resume:
        if args.data is None:
            raise ConfigError(
                "sft needs its conversations: pass --data FILE (JSONL, one conversation per "
                "line) or --data builtin for the generated tasks"
            )
        given = {name: getattr(args, name) for name in DATA_OPTIONS}
        given["packing"] = not given.pop("no_packing")
        settings = SFTConfig(data=args.data, **{k: v for k, v in given.items() if v is not None})
    check_writable_dir(args.out, "--out")
    data = open_sft(cfg, settings, args.out, resume=args.resume, template=args.template)
    summary = data.summary(cfg.data.batch_size, cfg.train.seed)
    print(f"llmjax sft: {describe(summary, data.config.packing)}", file=sys.stderr)
    try:
        with explain_out_of_memory(lambda: train_memory(cfg)):
            result = fit_sft(
                cfg,
                args.out,
                data,
                resume=args.resume,
                overwrite=args.overwrite,
                progress=not args.no_progress,
            )
    except TrainingInterrupted as e:
        print(f"llmjax sft: {_sft_hint(str(e))}", file=sys.stderr)
        return 128 + int(signal.Signals[e.signal_name])
    except TrainingDiverged as e:
        raise TrainingDiverged(_sft_hint(str(e))) from None
    except KeyboardInterrupt:
        print(
            f"llmjax sft: interrupted before a checkpoint of the current step was saved; "
            f"resume from the newest one with: llmjax sft --resume --out {args.out}",
            file=sys.stderr,
        )
        return 130
    record = {
        "run": str(result.run.path),
        "steps": int(result.state.step),
        "wall_s": round(result.wall_s, 2),
        "template": type(data.template).__name__,
        **result.final_eval,
        "data": summary,
    }
    print(json.dumps(record))
    return 0


def _sft_hint(message: str) -> str:
    """fit's resume advice, for an sft run (whose batches only `llmjax sft` rebuilds)."""
    return message.replace("llmjax train --resume", "llmjax sft --resume")
