"""The `llmjax` command line: train, sample, eval, convert, presets."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from llmjax.config import DTYPES, PRESETS, ConfigError, apply_overrides, get_preset

USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError, ValueError)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model", description="Train a language model.")
    p.add_argument(
        "--preset",
        default=None,
        help=f"starting config; one of: {', '.join(PRESETS)} (default: nano; with --resume the "
        "run's saved config)",
    )
    p.add_argument(
        "--data",
        default=None,
        help="text file or folder to train on (default: the built-in corpus, this "
        "Python's standard-library source)",
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
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
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
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from llmjax import distributed
    from llmjax.config import load_config
    from llmjax.train.init_from import init_from_config
    from llmjax.train.loop import fit
    from llmjax.train.rundir import RunDir

    if args.resume:
        if args.out is None:
            raise ConfigError("--resume needs --out DIR, the run directory to continue")
        if args.preset is not None:
            raise ConfigError(
                "--preset cannot be combined with --resume: the run's saved config "
                "is used; change train settings with --set train.KEY=VALUE"
            )
        if args.init_from is not None:
            raise ConfigError(
                "--init-from starts a new run and --resume continues one; drop one of them"
            )
        # The run's own config is the base; --set may change train.* (e.g. more steps).
        cfg = load_config(RunDir.open(args.out).config)
    elif args.init_from is not None:
        base = None if args.preset is None else get_preset(args.preset)
        cfg = init_from_config(args.init_from, base)
    else:
        cfg = get_preset(args.preset or "nano")
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
    cfg = apply_overrides(cfg, overrides)
    # Before anything touches a device: a multi-process run must join its peers first.
    distributed.initialize(
        auto=args.distributed,
        coordinator=args.coordinator,
        num_processes=args.num_processes,
        process_id=args.process_id,
    )
    name = args.preset or (Path(args.init_from).name if args.init_from else "nano")
    out = args.out or f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    result = fit(
        cfg, out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress
    )
    summary = {
        "run": str(result.run.path),
        "steps": int(result.state.step),
        "wall_s": round(result.wall_s, 2),
        **result.final_eval,
    }
    if distributed.is_primary():
        print(json.dumps(summary))
    return 0


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="generate text from a trained run",
        description="Generate text from a run directory's checkpoint, with a KV cache, batched "
        "over prompts of different lengths. Sampling filters apply in this order: penalties, "
        "n-gram bans, temperature, top-k, top-p, min-p, typical. Filters keep every token tied "
        "with the last one they keep.",
    )
    p.add_argument("--run", required=True, help="run directory written by `llmjax train`")
    p.add_argument(
        "--step", type=int, default=None, help="checkpoint step to load (default: the newest)"
    )
    g = p.add_argument_group("prompts and length")
    g.add_argument(
        "--prompt",
        action="append",
        default=None,
        help="text to continue; repeat for a batch of prompts (default: one empty prompt, "
        "started from the BOS token)",
    )
    g.add_argument("--prompt-file", default=None, help="a file with one prompt per line")
    g.add_argument(
        "--num-samples", type=int, default=1, help="continuations per prompt (default: 1)"
    )
    g.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="most tokens to generate per prompt (default: 200, or what the model's context "
        "leaves after the prompt)",
    )
    g.add_argument(
        "--min-new-tokens",
        type=int,
        default=0,
        help="stop tokens are not allowed before this many new tokens (default: 0)",
    )
    g = p.add_argument_group("sampling")
    g.add_argument(
        "--temperature",
        type=float,
        default=0.8,
        help="divides the logits: < 1 sharpens, > 1 flattens; 0 always picks the most likely "
        "token (greedy) (default: 0.8)",
    )
    g.add_argument(
        "--top-k",
        type=int,
        default=0,
        help="keep only the k most likely tokens, plus ties with the k-th (0: off)",
    )
    g.add_argument(
        "--top-p",
        type=float,
        default=1.0,
        help="nucleus: keep the most likely tokens whose probability adds up to p, in (0, 1] "
        "(1: off)",
    )
    g.add_argument(
        "--min-p",
        type=float,
        default=0.0,
        help="keep tokens at least min-p times as likely as the most likely one, in [0, 1] "
        "(0: off)",
    )
    g.add_argument(
        "--typical-p",
        type=float,
        default=1.0,
        help="locally typical sampling: keep the tokens whose surprisal is closest to the "
        "entropy, up to this probability mass, in (0, 1] (1: off)",
    )
    g.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        help="divide (multiply, if negative) the logits of tokens already in the prompt or the "
        "output by this; > 1 discourages repeats (1: off)",
    )
    g.add_argument(
        "--presence-penalty",
        type=float,
        default=0.0,
        help="subtract this from the logit of every token already generated (0: off)",
    )
    g.add_argument(
        "--frequency-penalty",
        type=float,
        default=0.0,
        help="subtract this times the token's count so far in the output (0: off)",
    )
    g.add_argument(
        "--no-repeat-ngram-size",
        type=int,
        default=0,
        help="never produce an n-gram of this size twice (prompt included) (0: off)",
    )
    g.add_argument(
        "--seed", type=int, default=0, help="random seed; the same seed gives the same text"
    )
    g = p.add_argument_group("beam search")
    g.add_argument(
        "--num-beams",
        type=int,
        default=1,
        help="beam search with this many beams (> 1 replaces sampling; deterministic)",
    )
    g.add_argument(
        "--length-penalty",
        type=float,
        default=1.0,
        help="beam score = log p / length ** this; > 0 favours longer outputs (default: 1)",
    )
    g = p.add_argument_group("stopping")
    g.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="stop a continuation where this text appears, which is left out (repeatable)",
    )
    g.add_argument(
        "--stop-token-id",
        type=int,
        action="append",
        default=[],
        metavar="ID",
        help="stop after this token id (repeatable)",
    )
    g.add_argument(
        "--ignore-eos", action="store_true", help="do not stop at the tokenizer's EOS token"
    )
    g = p.add_argument_group("output and execution")
    g.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per continuation (text, token ids, log-probabilities, "
        "finish reason) instead of text",
    )
    g.add_argument(
        "--no-stream",
        action="store_true",
        help="print a single continuation when it is done instead of as it is generated",
    )
    g.add_argument(
        "--no-cache",
        action="store_true",
        help="recompute the whole sequence for every new token instead of using the KV cache "
        "(slow; a baseline)",
    )
    g.add_argument(
        "--padding",
        choices=("left", "right"),
        default="left",
        help="which side shorter prompts are padded on in a batch (the output is the same)",
    )
    p.set_defaults(func=_sample)


def _sample(args: argparse.Namespace) -> int:
    from llmjax.decode import generate
    from llmjax.models import family_of
    from llmjax.train.loop import load_run

    if args.num_samples < 1:
        raise ValueError(f"--num-samples={args.num_samples} is out of range; valid: >= 1")
    prompts = list(args.prompt or [])
    if args.prompt_file is not None:
        prompts += Path(args.prompt_file).read_text().splitlines()
    if not prompts:
        prompts = [""]
    loaded = load_run(args.run, args.step)
    model_cfg = loaded.config.model
    max_new = args.max_new_tokens
    if max_new is None:
        max_new = 200
        if not family_of(model_cfg).decoding_limits(model_cfg).extrapolates:
            longest = max(max(len(loaded.tokenizer.encode(t)), 1) for t in prompts)
            max_new = max(1, min(max_new, model_cfg.max_seq_len - longest))
    batch = [t for t in prompts for _ in range(args.num_samples)]
    stream_one = len(batch) == 1 and not args.json and not args.no_stream and args.num_beams == 1
    if stream_one:
        print(batch[0], end="", flush=True)
    completions = generate(
        loaded,
        batch,
        max_new_tokens=max_new,
        min_new_tokens=args.min_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        typical_p=args.typical_p,
        repetition_penalty=args.repetition_penalty,
        presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
        num_beams=args.num_beams,
        length_penalty=args.length_penalty,
        stop=args.stop,
        stop_token_ids=args.stop_token_id,
        stop_at_eos=not args.ignore_eos,
        seed=args.seed,
        use_cache=not args.no_cache,
        padding=args.padding,
        stream=(lambda row, text: print(text, end="", flush=True)) if stream_one else None,
    )
    for i, c in enumerate(completions):
        if args.json:
            record = {
                "prompt": c.prompt,
                "text": c.text,
                "tokens": c.tokens.tolist(),
                "log_probs": [round(float(x), 5) for x in c.log_probs],
                "finish_reason": c.finish_reason,
            }
            if c.score is not None:
                record["score"] = c.score
            print(json.dumps(record))
        elif stream_one:
            print()
        else:
            if len(completions) > 1:
                print(f"--- sample {i + 1} ({c.finish_reason}) ---")
            print(c.prompt + c.text)
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    import jax

    from llmjax.data import prepare_data
    from llmjax.train.loop import evaluate, load_run
    from llmjax.train.step import make_eval_step

    loaded = load_run(args.run)
    cfg = loaded.config
    path = args.data if args.data is not None else cfg.data.path
    data = prepare_data(
        path, loaded.tokenizer, val_fraction=cfg.data.val_fraction, cache_dir=cfg.data.cache_dir
    )
    eval_step = jax.jit(make_eval_step(loaded.model))
    result = evaluate(
        eval_step,
        loaded.params,
        loaded.model_state,
        data.val,
        batch_size=cfg.data.batch_size,
        seq_len=cfg.seq_len,
        max_batches=args.batches,
        token_bytes=loaded.tokenizer.token_byte_lengths(),
    )
    print(
        json.dumps(
            {"run": str(Path(args.run)), "step": loaded.step, "data": data.corpus_name, **result}
        )
    )
    return 0


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a Hugging Face checkpoint to an llmjax run, or back",
        description="Convert a Hugging Face checkpoint directory (config.json, safetensors "
        "weights, tokenizer.json) of a GPT-2 or Llama-family model into an llmjax run "
        "directory, or an llmjax run into a directory transformers loads.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-hf", metavar="DIR", help="Hugging Face checkpoint directory")
    source.add_argument("--to-hf", metavar="RUN", help="llmjax run directory")
    p.add_argument("--out", required=True, help="directory to create (an existing one is refused)")
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="parameter dtype (default: float32 for --from-hf, the run's own for --to-hf)",
    )
    p.add_argument(
        "--model-type",
        default=None,
        help="with --to-hf: the Hugging Face model_type to write (default: chosen from the "
        "model's config)",
    )
    p.add_argument(
        "--tokenizer",
        default=None,
        metavar="FILE",
        help="with --from-hf: a tokenizer.json to use when DIR has none",
    )
    p.set_defaults(func=_convert)


def _convert(args: argparse.Namespace) -> int:
    from llmjax.hf import convert_from_hf, convert_to_hf

    if args.from_hf is not None:
        if args.model_type is not None:
            raise ConfigError("--model-type applies to --to-hf only")
        out = convert_from_hf(
            args.from_hf, args.out, dtype=args.dtype or "float32", tokenizer=args.tokenizer
        )
    else:
        if args.tokenizer is not None:
            raise ConfigError("--tokenizer applies to --from-hf only")
        out = convert_to_hf(args.to_hf, args.out, model_type=args.model_type, dtype=args.dtype)
    print(json.dumps({"out": str(out)}))
    return 0


def _add_presets(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help="list the named configs")
    p.set_defaults(func=_presets)


def _presets(args: argparse.Namespace) -> int:
    for name, cfg in PRESETS.items():
        m = cfg.model
        print(
            f"{name:12s} {m.n_layers}L {m.n_heads}H d={m.d_model} ctx={m.max_seq_len} "
            f"{m.norm}/{m.mlp}/{m.position} batch={cfg.data.batch_size}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmjax",
        description="Train, sample, evaluate and convert JAX language models.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_train, _add_sample, _add_eval, _add_convert, _add_presets):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from llmjax.runtime import enable_compilation_cache
    from llmjax.train.checkpoint import CheckpointError
    from llmjax.train.loop import TrainingDiverged

    enable_compilation_cache()
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
