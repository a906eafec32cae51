"""`llmjax reward`: train a reward model (a value head, Bradley-Terry loss) on preference
pairs, from a trained run (llmjax.align.preference). Also the options and the run that
`llmjax dpo` shares with it."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any

from llmjax.cli.errors import check_writable_dir, explain_out_of_memory, train_memory
from llmjax.cli.options import add_run_options
from llmjax.cli.sft import adapter_overrides, add_adapter_options
from llmjax.config import ConfigError

# Options that set PreferenceDataConfig fields (unset: the field's default).
DATA_OPTIONS = ("val_data", "val_fraction", "builtin_pairs", "rater_temperature", "data_seed")
LORA_OPTIONS = tuple(f"lora_{k}" for k in ("rank", "alpha", "dropout", "targets"))

DATA_HELP = """\
--data is a JSONL file, one pair per line (or a .parquet file of these columns, a pair a row):
  {"prompt": "...", "chosen": "...", "rejected": "..."}
where the prompt may be a list of messages ({"role": "system"|"user"|"assistant", "content"})
and each reply a list of assistant messages; or `builtin`: generated pairs labelled by a hidden
gold reward (llmjax.data.preference.GoldReward) with noisy raters, no file needed. Each pair
becomes two conversations rendered with the chat template of --init-from (as `llmjax sft`
renders them). The run records its data settings (preference.json) so that --resume
continues exactly where it stopped.
"""

DESCRIPTION = (
    """\
Train a reward model on preference pairs: a new run from --init-from's params with a value
head (model.value_head=true, fresh if RUN has none), trained so that the chosen reply's reward
(the head's output at its last token) exceeds the rejected one's: -log sigmoid(r_chosen -
r_rejected - margin). Prints the held-out accuracy at the end.

"""
    + DATA_HELP
)


def add_common(p: argparse.ArgumentParser) -> None:
    """The options `llmjax reward` and `llmjax dpo` share."""
    p.add_argument("--init-from", default=None, metavar="RUN", help="the run to start from")
    p.add_argument(
        "--data",
        default=None,
        metavar="FILE",
        help="JSONL (or .parquet) file of pairs, or `builtin`",
    )
    add_run_options(p)
    g = p.add_argument_group("preference data")
    g.add_argument(
        "--template",
        default=None,
        metavar="simple|hf|PATH",
        help="chat template (default: the one RUN records, else simple)",
    )
    g.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        metavar="F",
        help="share of --data held out for evaluation (default: 0.1; ignored with --val-data)",
    )
    g.add_argument("--val-data", default=None, metavar="FILE", help="JSONL pairs to evaluate on")
    g.add_argument(
        "--builtin-pairs",
        type=int,
        default=None,
        metavar="N",
        help="with --data builtin: how many pairs to generate (default: 2000)",
    )
    g.add_argument(
        "--rater-temperature",
        type=float,
        default=None,
        metavar="T",
        help="with --data builtin: the raters' noise (default: 0.25; higher: noisier labels)",
    )
    g.add_argument(
        "--data-seed",
        type=int,
        default=None,
        metavar="N",
        help="seed of the built-in pairs and of the held-out split (default: 0)",
    )
    add_adapter_options(p)


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reward",
        help="train a reward model on preference pairs",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(p)
    p.add_argument(
        "--margin",
        type=float,
        default=None,
        help="shorthand for --set preference.margin=M: the reward gap asked for (default: 0)",
    )
    p.set_defaults(func=run, command_options=("margin",))


def run(args: argparse.Namespace) -> int:
    extra = [] if args.margin is None else [f"preference.margin={args.margin}"]
    return run_preference(args, "reward", extra)


def run_preference(args: argparse.Namespace, command: str, extra: list[str]) -> int:
    """A `reward` or `dpo` command: checks the options, opens the data, fits, prints the
    final evaluation as one JSON line."""
    from llmjax.align.preference import fit_dpo, fit_reward, open_preference, preference_config
    from llmjax.data.preference import PreferenceDataConfig, describe
    from llmjax.train.hooks import TrainingDiverged, TrainingInterrupted

    if args.out is None:
        what = "the run directory to continue" if args.resume else "the run directory to create"
        raise ConfigError(f"{command} needs --out DIR, {what}")
    settings = None
    if args.resume:
        kept = ("init_from", "data", "template", *DATA_OPTIONS, *LORA_OPTIONS)
        given = [
            f"--{name.replace('_', '-')}"
            for name in (*kept, *args.command_options)
            if getattr(args, name, None) not in (None, False)
        ]
        if given:
            raise ConfigError(
                f"--resume continues {args.out} with the data, template and settings it "
                f"recorded; drop {', '.join(given)} (change train settings with --set train.*)"
            )
    overrides = [*adapter_overrides(args), *extra, *args.overrides]
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    cfg = preference_config(
        command,
        init_from=None if args.resume else args.init_from,
        resume=args.out if args.resume else None,
        overrides=overrides,
    )
    if not args.resume:
        if args.data is None:
            raise ConfigError(
                f"{command} needs its pairs: pass --data FILE (JSONL of "
                '{"prompt", "chosen", "rejected"}) or --data builtin for generated pairs'
            )
        given = {name: getattr(args, name) for name in DATA_OPTIONS}
        settings = PreferenceDataConfig(
            data=args.data, **{k: v for k, v in given.items() if v is not None}
        )
    check_writable_dir(args.out, "--out")
    data = open_preference(cfg, settings, args.out, resume=args.resume, template=args.template)
    print(f"llmjax {command}: {describe(data.summary())}", file=sys.stderr)
    options: dict[str, Any] = {
        "resume": args.resume,
        "overwrite": args.overwrite,
        "progress": not args.no_progress,
    }
    if command == "dpo":
        options["cache_reference"] = True if args.cache_reference else None
        options["reference"] = args.reference
    fit_run = fit_dpo if command == "dpo" else fit_reward
    hint = f"llmjax {command} --resume"
    try:
        with explain_out_of_memory(lambda: train_memory(cfg)):
            result = fit_run(cfg, args.out, data, **options)
    except TrainingInterrupted as e:
        print(f"llmjax {command}: {str(e).replace('llmjax train --resume', hint)}", file=sys.stderr)
        return 128 + int(signal.Signals[e.signal_name])
    except TrainingDiverged as e:
        raise TrainingDiverged(str(e).replace("llmjax train --resume", hint)) from None
    except KeyboardInterrupt:
        print(
            f"llmjax {command}: interrupted before a checkpoint of the current step was saved; "
            f"resume from the newest one with: {hint} --out {args.out}",
            file=sys.stderr,
        )
        return 130
    final = result.final_eval
    if "accuracy" in final:
        print(
            f"llmjax {command}: held-out accuracy {final['accuracy']:.3f} over "
            f"{int(final.get('pairs', 0))} pairs",
            file=sys.stderr,
        )
    record = {
        "run": str(result.run.path),
        "steps": int(result.state.step),
        "wall_s": round(result.wall_s, 2),
        "template": type(data.template).__name__,
        **final,
        "data": data.summary(),
    }
    print(json.dumps(record))
    return 0
