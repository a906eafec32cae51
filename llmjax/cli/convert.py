"""`llmjax convert`: a Hugging Face checkpoint to an llmjax run, or back."""

from __future__ import annotations

import argparse
import json

from llmjax.config import DTYPES, ConfigError


def add(sub: argparse._SubParsersAction) -> None:
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
        "--adapter",
        action="store_true",
        help="with --to-hf on a LoRA run: write the base weights to --out and the adapters in "
        "PEFT's format to OUT/adapter (default: the adapters merged into the weights)",
    )
    p.add_argument(
        "--tokenizer",
        default=None,
        metavar="FILE",
        help="with --from-hf: a tokenizer.json to use when DIR has none",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llmjax.cli.errors import check_writable_dir
    from llmjax.hf import convert_from_hf, convert_to_hf

    check_writable_dir(args.out, "--out")  # before reading gigabytes of weights
    if args.from_hf is not None:
        if args.model_type is not None or args.adapter:
            raise ConfigError("--model-type and --adapter apply to --to-hf only")
        out = convert_from_hf(
            args.from_hf, args.out, dtype=args.dtype or "float32", tokenizer=args.tokenizer
        )
    else:
        if args.tokenizer is not None:
            raise ConfigError("--tokenizer applies to --from-hf only")
        out = convert_to_hf(
            args.to_hf, args.out, model_type=args.model_type, dtype=args.dtype, adapter=args.adapter
        )
    print(json.dumps({"out": str(out)}))
    return 0
