"""`llmjax sample`: generate text from a run, with every sampler and beam search."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add(sub: argparse._SubParsersAction) -> None:
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
        help="most tokens to generate per prompt (default: 200); past the model's context a "
        "learned position table sees the last max_seq_len tokens, as nanoGPT's sampling does",
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llmjax.cli.errors import explain_out_of_memory, sample_memory
    from llmjax.runs import load_run

    if args.num_samples < 1:
        raise ValueError(f"--num-samples={args.num_samples} is out of range; valid: >= 1")
    prompts = list(args.prompt or [])
    if args.prompt_file is not None:
        prompts += _read_prompts(Path(args.prompt_file))
    if not prompts:
        prompts = [""]
    loaded = load_run(args.run, args.step).merged()
    longest = max(max(len(loaded.tokenizer.encode(t)), 1) for t in prompts)
    max_new = 200 if args.max_new_tokens is None else args.max_new_tokens
    batch = [t for t in prompts for _ in range(args.num_samples)]
    stream_one = len(batch) == 1 and not args.json and not args.no_stream and args.num_beams == 1
    if stream_one:
        print(batch[0], end="", flush=True)
    memory = lambda: sample_memory(  # noqa: E731
        loaded.config,
        rows=len(batch),
        length=longest + max_new,
        num_beams=args.num_beams,
        use_cache=not args.no_cache,
    )
    with explain_out_of_memory(memory):
        completions = _generate(args, loaded, batch, max_new, stream_one)
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


def _generate(args: argparse.Namespace, loaded, batch: list[str], max_new: int, stream_one: bool):
    from llmjax.decode import generate

    return generate(
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


def _read_prompts(path: Path) -> list[str]:
    """The lines of a prompt file, which must be text."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"--prompt-file {path} is not UTF-8 text (byte {e.start} is {data[e.start]:#04x}); "
            f"pass a text file with one prompt per line"
        ) from None
    if "\0" in text:
        raise ValueError(f"--prompt-file {path} holds NUL bytes: it is not a text file")
    return text.splitlines()
