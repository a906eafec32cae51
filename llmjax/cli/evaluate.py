"""`llmjax eval`: loss, perplexity and bits-per-byte of a run on a validation split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import jax

    from llmjax.data import prepare_data, val_batches
    from llmjax.eval import evaluate, make_eval_step
    from llmjax.objectives import build_objective
    from llmjax.runs import load_run

    loaded = load_run(args.run)
    cfg = loaded.config
    path = args.data if args.data is not None else cfg.data.path
    data = prepare_data(
        path, loaded.tokenizer, val_fraction=cfg.data.val_fraction, cache_dir=cfg.data.cache_dir
    )
    objective = build_objective(cfg, tokenizer=loaded.tokenizer)
    eval_step = jax.jit(make_eval_step(loaded.model, objective))
    batches = val_batches(
        data.val, batch_size=cfg.data.batch_size, seq_len=cfg.seq_len, max_batches=args.batches
    )
    result = evaluate(eval_step, loaded.params, loaded.model_state, batches, objective)
    print(
        json.dumps(
            {"run": str(Path(args.run)), "step": loaded.step, "data": data.corpus_name, **result}
        )
    )
    return 0
