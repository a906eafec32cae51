"""`llmjax eval`: a run's loss, perplexity and bits-per-byte on its validation split, on any
text (rolling windows), and on tasks from JSONL (multiple choice, continuation, generation)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from llmjax.config import ConfigError

TASK_HELP = (
    "a JSONL task file (repeatable): multiple choice {context, choices, gold}, continuation "
    "{context, continuation} or generation {context, target, until?}; see llmjax.eval.tasks"
)


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="perplexity, bits-per-byte and task accuracy of a trained run",
        description="Evaluate a run's checkpoint: on its validation split (the default), on "
        "text files with rolling windows (--text), or on JSONL tasks (--task).",
    )
    p.add_argument(
        "--run", required=True, help="run directory written by `llmjax train` or `llmjax convert`"
    )
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    p.add_argument(
        "--data",
        default=None,
        help="data to evaluate on, of any kind `llmjax train --data` reads; its validation "
        "split (data.val_split, data.val_fraction) is evaluated (default: the run's own data)",
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
    p.add_argument(
        "--text",
        action="append",
        default=[],
        metavar="FILE",
        help="score each whole text file with rolling windows (repeatable)",
    )
    p.add_argument(
        "--window",
        type=int,
        default=None,
        help="--text: tokens of context per window (default: the model's context)",
    )
    p.add_argument(
        "--stride",
        type=int,
        default=None,
        help="--text: tokens a window moves on (default: the window; smaller strides give "
        "each token more context and cost more passes)",
    )
    p.add_argument("--task", action="append", default=[], metavar="FILE", help=TASK_HELP)
    p.add_argument("--shots", type=int, default=0, help="--task: solved examples before each item")
    p.add_argument("--seed", type=int, default=0, help="--task: seed of the few-shot draw")
    p.add_argument("--limit", type=int, default=None, help="--task: the first N items only")
    p.add_argument("--max-new-tokens", type=int, default=32, help="--task: longest generated reply")
    p.add_argument(
        "--results",
        default=None,
        metavar="DIR",
        help="also write DIR/metrics.json in the shared results format (a new directory)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for flag in ("batch_size", "batches", "window", "stride", "limit"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag.replace('_', '-')}={value} is out of range; valid: >= 1")
    if args.results is not None and Path(args.results).exists():
        raise ConfigError(
            f"--results {args.results} already exists; give a new directory (results are "
            f"never overwritten)"
        )
    if (args.window or args.stride) and not args.text:
        raise ConfigError("--window and --stride apply to --text; add --text FILE")
    if (args.data is not None or args.batches is not None) and (args.text or args.task):
        raise ConfigError(
            "--data and --batches choose the validation split to evaluate; with --text or "
            "--task they have no meaning: drop them, or run the split evaluation on its own"
        )
    rows = _texts_and_tasks(args) if (args.text or args.task) else [_split(args)]
    for row in rows:
        print(json.dumps(row))
    if args.results is not None:
        from llmjax.results import write_results

        out = Path(args.results)
        write_results(out.name, {"run": str(args.run), "step": rows[0].get("step")},
                      rows=[{k: v for k, v in r.items() if k != "replies"} for r in rows],
                      out_dir=out.parent)  # fmt: skip
    return 0


def _texts_and_tasks(args: argparse.Namespace) -> list[dict]:
    from llmjax.eval.lm import EvalLM
    from llmjax.eval.tasks import load_task, run_task

    tasks = [load_task(path) for path in args.task]  # every file checked before any work
    for path in args.text:
        if not Path(path).is_file():
            raise ConfigError(f"--text {path} is not a file; give a text file to score")
    lm = EvalLM.from_run(args.run, step=args.step, batch_size=args.batch_size or 16)
    head = {"run": str(Path(args.run)), "step": lm.step}
    rows = []
    for path in args.text:
        text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
        scores = lm.rolling_loglikelihood([text], window=args.window, stride=args.stride)
        window = args.window or lm.max_length
        rows.append({**head, "text": str(path), "window": window,
                     "stride": args.stride or window, **scores.report})  # fmt: skip
    for task in tasks:
        result = run_task(lm, task, shots=args.shots, seed=args.seed, limit=args.limit,
                          max_new_tokens=args.max_new_tokens)  # fmt: skip
        rows.append({**head, **result})
    return rows


def _split(args: argparse.Namespace) -> dict:
    import jax

    from llmjax.cli.errors import eval_memory, explain_out_of_memory
    from llmjax.data import prepare_data, val_batches
    from llmjax.data.inputs import InputOptions
    from llmjax.eval import evaluate, make_eval_step
    from llmjax.objectives import build_objective
    from llmjax.runs import load_run

    loaded = load_run(args.run, step=args.step)
    cfg = loaded.config
    batch_size = args.batch_size or cfg.data.batch_size
    path = args.data if args.data is not None else cfg.data.path
    # Another --data is read in the format its name tells, with the run's text field.
    options = InputOptions.of(cfg.data)
    if args.data is not None:
        options = dataclasses.replace(options, format="auto")
    data = prepare_data(
        path,
        loaded.tokenizer,
        val_fraction=cfg.data.val_fraction,
        cache_dir=cfg.data.cache_dir,
        val_split=cfg.data.val_split,
        options=options,
    )
    objective = build_objective(cfg, tokenizer=loaded.tokenizer)
    eval_step = jax.jit(make_eval_step(loaded.model, objective))
    batches = val_batches(
        data.val, batch_size=batch_size, seq_len=cfg.seq_len, max_batches=args.batches
    )
    with explain_out_of_memory(lambda: eval_memory(cfg, batch_size)):
        result = evaluate(eval_step, loaded.params, loaded.model_state, batches, objective)
    return {"run": str(Path(args.run)), "step": loaded.step, "data": data.corpus_name, **result}
