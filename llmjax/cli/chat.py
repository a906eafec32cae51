"""`llmjax chat`: talk to a fine-tuned run, on a terminal or one prompt per line of stdin."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from typing import TextIO

from llmjax.config import ConfigError

DESCRIPTION = """\
Chat with a run under its chat template: each reply is generated (KV-cached) from the
conversation so far, streamed as it comes, and ends at the template's end of reply. When the
conversation no longer fits the model's context, the oldest exchanges are dropped (and a note
says so).

On a terminal: type a message and Enter; /reset starts a new conversation, /exit (or Ctrl-D)
ends. With stdin not a terminal, each line is one prompt and each reply is printed on its own
line (--json: one JSON object per reply); every prompt starts a new conversation unless
--multi-turn.

The template is the one the run recorded (`llmjax sft` records it; so does `llmjax convert`
for a Hugging Face model with one). A run without one (e.g. a pretrained run) needs
--template.
"""

COMMANDS = {
    "/reset": "start a new conversation (the --system message stays)",
    "/exit": "end the chat (also /quit, or Ctrl-D)",
    "/help": "list these commands",
}


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "chat",
        help="chat with a fine-tuned run",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", required=True, help="run directory (e.g. made by `llmjax sft`)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    p.add_argument(
        "--template",
        default=None,
        metavar="simple|hf|PATH",
        help="chat template, for a run that records none or to override it: simple (llmjax's "
        "role markers), hf (the run's Hugging Face template), or the path of a Jinja template / "
        "tokenizer_config.json",
    )
    p.add_argument("--system", default=None, metavar="TEXT", help="a system message to start with")
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=128,
        help="the longest reply, in tokens (default: 128; less when the context is nearly full)",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=0.8,
        help="sampling temperature; 0 always picks the most likely token (default: 0.8)",
    )
    p.add_argument(
        "--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (1: off)"
    )
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: off)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the replies")
    p.add_argument(
        "--multi-turn",
        action="store_true",
        help="with stdin not a terminal: keep the conversation across lines",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="with stdin not a terminal: print each reply as a JSON object (prompt, reply, "
        "finish_reason, tokens, dropped)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llmjax.data import load_tokenizer
    from llmjax.decode.chat import ChatSession
    from llmjax.runs import RunDir, load_run
    from llmjax.runs.chat_template import SPEC_HELP, choose_template, run_template

    run_dir = RunDir.open(args.run)
    tokenizer = load_tokenizer(run_dir.tokenizer) if run_dir.tokenizer.is_file() else None
    if args.template is not None:
        template = choose_template(args.template, run_dir.path, tokenizer)
    else:
        template = run_template(run_dir.path, tokenizer)
    if template is None:
        raise ConfigError(
            f"{args.run} records no chat template (runs `llmjax sft` trains record theirs; this "
            f"one was not fine-tuned for chat); pass --template: {SPEC_HELP}"
        )
    session = ChatSession(
        load_run(args.run, args.step).merged(),
        template,
        system=args.system,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
    )
    if sys.stdin.isatty():
        name = type(template).__name__
        print(
            f"chatting with {args.run} (step {session.run.step}, {name}); /reset starts over, "
            f"/exit ends",
            file=sys.stderr,
        )
        return interactive(session)
    return scripted(session, sys.stdin, multi_turn=args.multi_turn, as_json=args.json)


def _command(line: str, session, err: TextIO) -> bool | None:
    """Runs a /command: True to go on, False to stop, None if `line` is not one."""
    word = line.split(maxsplit=1)[0] if line.startswith("/") else ""
    if word in ("/exit", "/quit"):
        return False
    if word == "/reset":
        session.reset()
        print("(new conversation)", file=err)
        return True
    if word == "/help":
        for name, what in COMMANDS.items():
            print(f"{name:8} {what}", file=err)
        return True
    return None


def _note(reply, err: TextIO) -> None:
    if reply.finish_reason == "length":
        print(f"(reply cut at {len(reply.completion.tokens)} tokens)", file=err)


def _write(out: TextIO) -> Callable[[str], None]:
    def write(text: str) -> None:
        out.write(text)
        out.flush()

    return write


def interactive(
    session,
    read: Callable[[str], str] = input,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """The terminal loop: a multi-turn conversation, replies streamed as they come."""
    out, err = out or sys.stdout, err or sys.stderr
    while True:
        try:
            line = read("> ").strip()
        except (EOFError, KeyboardInterrupt):
            print(file=out)
            return 0
        if not line:
            continue
        done = _command(line, session, err)
        if done is False:
            return 0
        if done:
            continue
        if line.startswith("/"):
            print(f"unknown command {line.split()[0]}; /help lists them", file=err)
            continue
        try:
            reply = session.send(
                line,
                stream=_write(out),
                on_dropped=lambda n: print(_dropped_note(n), file=err, flush=True),
            )
        except KeyboardInterrupt:
            print("\n(reply interrupted; the conversation is as before it)", file=err)
            continue
        print(file=out)
        _note(reply, err)


def _dropped_note(dropped: int) -> str:
    return (
        f"(the conversation no longer fits the model's context: dropped the oldest {dropped} "
        f"exchange{'s' if dropped > 1 else ''})"
    )


def scripted(
    session,
    lines: Iterable[str],
    *,
    multi_turn: bool = False,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """One reply per non-empty line of `lines`, each printed on its own line."""
    out, err = out or sys.stdout, err or sys.stderr
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        done = _command(line.strip(), session, err)
        if done is False:
            break
        if done:
            continue
        if not multi_turn:
            session.reset()
        reply = session.send(
            line,
            stream=None if as_json else _write(out),
            on_dropped=lambda n: print(_dropped_note(n), file=err, flush=True),
        )
        if as_json:
            record = {
                "prompt": line,
                "reply": reply.text,
                "finish_reason": reply.finish_reason,
                "tokens": len(reply.completion.tokens),
                "dropped": reply.dropped,
            }
            print(json.dumps(record), file=out, flush=True)
        else:
            print(file=out, flush=True)
            _note(reply, err)
    return 0
