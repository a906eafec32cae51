"""`llmjax train`: train a model, resume a run, or fine-tune from another run's params."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from llmjax.cli.errors import check_writable_dir, explain_out_of_memory, train_memory
from llmjax.config import PRESETS, ConfigError, apply_overrides, get_preset, read_config_file


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model", description="Train a language model.")
    p.add_argument(
        "--preset",
        default=None,
        help=f"starting config; one of: {', '.join(PRESETS)} (default: nano; with --resume the "
        "run's saved config)",
    )
    p.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="a YAML or JSON config file (a run's config.json, or what `llmjax config show` "
        "prints): its fields replace the preset's (--preset; default: nano); --set applies on "
        "top",
    )
    p.add_argument(
        "--data",
        default=None,
        help="what to train on: a text file or folder; a .jsonl or .parquet file (or a folder "
        "of them) of records whose text is in data.text_field (default: text); a dataset saved "
        "with save_to_disk, or hf:NAME[:CONFIG] for a hub dataset in the local cache (split "
        "data.dataset_split); data.format=text|jsonl|parquet|datasets overrides the guess "
        "(default: the built-in corpus, this Python's standard-library source)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set model.n_layers=6 (repeatable)",
    )
    p.add_argument("--steps", type=int, default=None, help="shorthand for --set train.steps=N")
    p.add_argument("--out", default=None, help="run directory (default: runs/<preset>-<timestamp>)")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its newest checkpoint"
    )
    p.add_argument(
        "--init-from",
        default=None,
        metavar="RUN",
        help="start from another run's newest params (trained, or made by `llmjax convert`) "
        "with a fresh optimizer: fine-tuning. The model and tokenizer come from RUN; the rest "
        "from --preset if given, else from RUN's config",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing run directory's llmjax files"
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress output (a bar on a terminal, else one line per record on stdout)",
    )
    p.add_argument(
        "--log-to",
        default=None,
        metavar="NAMES",
        help="also log every record to these, comma-separated: tensorboard (RUN/tensorboard), "
        "wandb (shorthand for --set train.loggers=NAMES)",
    )
    scale = p.add_argument_group("devices and hosts")
    scale.add_argument(
        "--mesh",
        default=None,
        metavar="AXIS=N,...",
        help="shard over a device mesh, e.g. data=2,fsdp=2,tensor=2 (axes: data, fsdp, "
        "sequence, tensor; one may be -1); shorthand for --set parallel.mesh=...",
    )
    scale.add_argument(
        "--parallel",
        choices=["none", "mesh", "pmap"],
        default=None,
        help="none: one device; mesh: jit over a device mesh (all devices on data unless "
        "--mesh says otherwise); pmap: classic data parallelism (default: mesh if --mesh is "
        "given, else none)",
    )
    scale.add_argument(
        "--grad-accum",
        type=int,
        default=None,
        metavar="N",
        help="micro-batches per step (shorthand for --set train.grad_accum=N)",
    )
    scale.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-process run, detecting the cluster (Cloud TPU, SLURM, Open MPI)",
    )
    scale.add_argument(
        "--coordinator", default=None, metavar="HOST:PORT", help="process 0's address"
    )
    scale.add_argument("--num-processes", type=int, default=None, help="processes in the run")
    scale.add_argument("--process-id", type=int, default=None, help="this process's index")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llmjax import distributed
    from llmjax.runs import init_from_config, start_config
    from llmjax.train.fit import fit
    from llmjax.train.hooks import TrainingInterrupted

    if args.resume and args.out is None:
        raise ConfigError("--resume needs --out DIR, the run directory to continue")
    base = None
    if args.config is not None:
        if args.resume:
            raise ConfigError(
                "--config cannot be combined with --resume: the run's saved config is used; "
                "change train settings with --set train.KEY=VALUE"
            )
        if args.init_from and not args.preset:  # the file's fields replace RUN's
            under = init_from_config(args.init_from)
        else:
            under = get_preset(args.preset or "nano")
        base = read_config_file(args.config, under)
    cfg = start_config(
        preset=args.preset,
        resume=args.out if args.resume else None,
        init_from=args.init_from,
        base=base,
    )
    overrides = list(args.overrides)
    if args.data is not None:
        overrides.insert(0, f"data.path={args.data}")
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.grad_accum is not None:
        overrides.append(f"train.grad_accum={args.grad_accum}")
    if args.parallel is not None:
        overrides.append(f"parallel.mode={args.parallel}")
    if args.mesh is not None:
        overrides.append(f"parallel.mesh={args.mesh}")
    if args.log_to is not None:
        overrides.append(f"train.loggers={args.log_to}")
    cfg = apply_overrides(cfg, overrides)
    # Before anything touches a device: a multi-process run must join its peers first.
    distributed.initialize(
        auto=args.distributed,
        coordinator=args.coordinator,
        num_processes=args.num_processes,
        process_id=args.process_id,
    )
    name = args.preset or (Path(args.init_from).name if args.init_from else None)
    name = name or (Path(args.config).stem if args.config else "nano")
    out = args.out or f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_writable_dir(out, "--out")
    try:
        with explain_out_of_memory(lambda: train_memory(cfg)):
            result = fit(
                cfg,
                out,
                resume=args.resume,
                overwrite=args.overwrite,
                progress=not args.no_progress,
            )
    except TrainingInterrupted as e:
        print(f"llmjax train: {e}", file=sys.stderr)
        return 128 + int(signal.Signals[e.signal_name])
    except KeyboardInterrupt:
        print(
            f"llmjax train: interrupted before a checkpoint of the current step was saved; "
            f"resume from the newest one with: llmjax train --resume --out {out} (a run "
            f"with no checkpoint yet starts afresh, also with the same command as before)",
            file=sys.stderr,
        )
        return 130
    summary = {
        "run": str(result.run.path),
        "steps": int(result.state.step),
        "wall_s": round(result.wall_s, 2),
        **result.final_eval,
    }
    if distributed.is_primary():
        print(json.dumps(summary))
    return 0
