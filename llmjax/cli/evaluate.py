"""`llmjax eval`: loss, perplexity and bits-per-byte of a run on a validation split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llmjax.config import ConfigError


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="loss, perplexity and bits-per-byte of a trained run",
        description="Evaluate a run's newest checkpoint on a validation split.",
    )
    p.add_argument(
        "--run", required=True, help="run directory written by `llmjax train` or `llmjax convert`"
    )
    p.add_argument(
        "--data",
        default=None,
        help="text file or folder; its last val_fraction is evaluated (default: the "
        "run's own data)",
    )
    p.add_argument(
        "--batches",
        type=int,
        default=None,
        help="evaluate at most this many batches (default: the whole split)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="sequences per batch (default: the run's data.batch_size); lower it if the "
        "evaluation runs out of memory",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import jax

    from llmjax.cli.errors import eval_memory, explain_out_of_memory
    from llmjax.data import prepare_data, val_batches
    from llmjax.eval import evaluate, make_eval_step
    from llmjax.objectives import build_objective
    from llmjax.runs import load_run

    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size={args.batch_size} is out of range; valid: >= 1")
    if args.batches is not None and args.batches < 1:
        raise ConfigError(f"--batches={args.batches} is out of range; valid: >= 1")
    loaded = load_run(args.run)
    cfg = loaded.config
    batch_size = args.batch_size or cfg.data.batch_size
    path = args.data if args.data is not None else cfg.data.path
    data = prepare_data(
        path, loaded.tokenizer, val_fraction=cfg.data.val_fraction, cache_dir=cfg.data.cache_dir
    )
    objective = build_objective(cfg, tokenizer=loaded.tokenizer)
    eval_step = jax.jit(make_eval_step(loaded.model, objective))
    batches = val_batches(
        data.val, batch_size=batch_size, seq_len=cfg.seq_len, max_batches=args.batches
    )
    with explain_out_of_memory(lambda: eval_memory(cfg, batch_size)):
        result = evaluate(eval_step, loaded.params, loaded.model_state, batches, objective)
    print(
        json.dumps(
            {"run": str(Path(args.run)), "step": loaded.step, "data": data.corpus_name, **result}
        )
    )
    return 0
