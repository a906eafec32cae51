"""Preference pairs read from JSONL (or Parquet): a prompt and two replies, the chosen one first.

One JSON object per line (blank lines are skipped), or one Parquet row of the same columns:

    {"prompt": "...", "chosen": "...", "rejected": "..."}
    {"prompt": [{"role": "system" | "user" | "assistant", "content": "..."}, ...],
     "chosen": [{"role": "assistant", "content": "..."}], "rejected": "..."}

The prompt is text (one user turn) or the messages before the reply (any roles, several
turns); each reply is text or a list of assistant messages. A pair whose chosen and rejected
replies are the same teaches nothing: it is skipped and counted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmjax.data.instruct import Conversation, Message, conversation
from llmjax.data.records import read_records
from llmjax.errors import InstructDataError

log = logging.getLogger(__name__)

FIELDS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class PreferencePair:
    """A prompt (the messages before the reply) and its preferred and dispreferred replies."""

    prompt: tuple[Message, ...]
    chosen: tuple[Message, ...]
    rejected: tuple[Message, ...]

    def conversations(self) -> tuple[Conversation, Conversation]:
        """(prompt + chosen reply, prompt + rejected reply)."""
        return (*self.prompt, *self.chosen), (*self.prompt, *self.rejected)

    @property
    def prompt_text(self) -> str:
        """The last user turn's text (what a gold reward reads)."""
        users = [m.content for m in self.prompt if m.role == "user"]
        return users[-1] if users else ""

    @property
    def chosen_text(self) -> str:
        return "\n".join(m.content for m in self.chosen)

    @property
    def rejected_text(self) -> str:
        return "\n".join(m.content for m in self.rejected)


def _fail(where: str, field: str, problem: str, fix: str) -> InstructDataError:
    return InstructDataError(f"{where}: field {field!r} {problem}; {fix}")


def _prompt(value: Any, where: str) -> tuple[Message, ...]:
    if isinstance(value, str):
        return (Message("user", value),)
    if not isinstance(value, list) or not value:
        raise _fail(
            where,
            "prompt",
            f"is a {type(value).__name__}, not a string or a non-empty list of messages",
            'write the prompt as text or as [{"role": "user", "content": ...}, ...]',
        )
    # Checked as a conversation would be, with a stand-in reply (the prompt may end anywhere).
    checked = _messages(value, where, "prompt")
    if checked[-1].role == "assistant":
        raise _fail(
            where,
            "prompt",
            "ends with an assistant turn",
            "end the prompt with the turn the replies answer (a user turn)",
        )
    return checked


def _messages(value: list, where: str, field: str) -> tuple[Message, ...]:
    try:
        return conversation([*value, {"role": "assistant", "content": "-"}])[:-1]
    except InstructDataError as e:
        detail = str(e).removeprefix("the conversation: ").replace("'messages", f"'{field}")
        raise InstructDataError(f"{where}: {detail}") from None


def _reply(value: Any, where: str, field: str) -> tuple[Message, ...]:
    if isinstance(value, str):
        if not value:
            raise _fail(where, field, "is empty", f"give every record a non-empty {field} reply")
        return (Message("assistant", value),)
    if isinstance(value, list) and value:
        replies = _messages(value, where, field)
        if any(m.role != "assistant" for m in replies):
            raise _fail(
                where, field, "holds a turn that is not the assistant's", "list assistant turns"
            )
        return replies
    raise _fail(
        where,
        field,
        f"is a {type(value).__name__}, not a string or a list of assistant messages",
        "write the reply as text",
    )


def parse_pair(record: Any, where: str = "the record") -> PreferencePair:
    """The pair of one JSON record; `where` names it in errors."""
    if not isinstance(record, Mapping):
        raise InstructDataError(
            f"{where}: expected a JSON object with 'prompt', 'chosen' and 'rejected', got a "
            f"{type(record).__name__}"
        )
    for name in FIELDS:
        if name not in record:
            raise _fail(
                where,
                name,
                f"is missing (the record has: {', '.join(map(repr, record)) or 'no fields'})",
                "give every record 'prompt', 'chosen' and 'rejected'",
            )
    return PreferencePair(
        _prompt(record["prompt"], where),
        _reply(record["chosen"], where, "chosen"),
        _reply(record["rejected"], where, "rejected"),
    )


def load_pairs(path: str | os.PathLike) -> tuple[list[PreferencePair], int]:
    """(pairs of a JSONL file, or a Parquet file of the same columns, in file order; how many
    identical pairs were skipped).

    Raises:
        InstructDataError: a line is not JSON or not a valid record (the message names the
            file, the line number from 1 and the field), or the file holds no usable pair.
    """
    path = Path(path).expanduser()
    pairs, identical = [], 0
    for where, record in read_records(path, InstructDataError):
        pair = parse_pair(record, where)
        if pair.chosen == pair.rejected:
            identical += 1
            continue
        pairs.append(pair)
    if identical:
        log.warning(
            "%s: skipped %d pair(s) whose chosen and rejected replies are identical",
            path,
            identical,
        )
    if not pairs:
        what = f"only identical pairs ({identical})" if identical else "no records"
        raise InstructDataError(
            f'{path}: holds {what}; write one {{"prompt", "chosen", "rejected"}} object per '
            f"line, with two different replies"
        )
    return pairs, identical
