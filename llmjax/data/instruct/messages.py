"""Conversations: instruction data read from JSONL (or Parquet) and checked, as lists of
role/content messages.

Two record shapes are read, one JSON object per line (blank lines are skipped), or one
Parquet row of the same columns:

    {"prompt": "...", "response": "..."}                  (optional "system": "...")
    {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}

Both become a `Conversation`: a tuple of `Message`s with at least one non-empty assistant turn.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmjax.data.records import read_records
from llmjax.errors import InstructDataError

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    """One turn of a conversation."""

    role: str
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


Conversation = tuple[Message, ...]


def _fail(where: str, field: str, problem: str, fix: str) -> InstructDataError:
    return InstructDataError(f"{where}: field {field!r} {problem}; {fix}")


def _text(record: Mapping[str, Any], key: str, where: str, field: str) -> str:
    if key not in record:
        raise _fail(where, field, "is missing", f"give every record a string {key!r}")
    value = record[key]
    if not isinstance(value, str):
        raise _fail(
            where, field, f"is a {type(value).__name__}, not a string", "write the text as a string"
        )
    return value


def parse_record(record: Any, where: str = "the record") -> Conversation:
    """The conversation of one JSON record (either shape); `where` names it in errors."""
    if not isinstance(record, Mapping):
        raise InstructDataError(
            f"{where}: expected a JSON object with 'messages' or 'prompt'/'response', got a "
            f"{type(record).__name__}"
        )
    if "messages" in record:
        return _parse_messages(record["messages"], where)
    if "prompt" in record or "response" in record:
        messages = []
        if "system" in record:
            messages.append(Message("system", _text(record, "system", where, "system")))
        messages.append(Message("user", _text(record, "prompt", where, "prompt")))
        response = _text(record, "response", where, "response")
        if not response:
            raise _fail(where, "response", "is empty", "give every record a non-empty response")
        messages.append(Message("assistant", response))
        return tuple(messages)
    raise _fail(
        where,
        "messages",
        f"is missing (the record has: {', '.join(map(repr, record)) or 'no fields'})",
        "write {'messages': [...]} or {'prompt': ..., 'response': ...}",
    )


def _parse_messages(messages: Any, where: str) -> Conversation:
    if not isinstance(messages, list) or not messages:
        raise _fail(where, "messages", "is not a non-empty list", "write a list of messages")
    out = []
    for i, message in enumerate(messages):
        field = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise _fail(where, field, f"is a {type(message).__name__}", "write a JSON object")
        role = message.get("role")
        if role not in ROLES:
            problem = "is missing" if role is None else f"is {role!r}, an unknown role"
            raise _fail(where, f"{field}.role", problem, f"use one of {', '.join(ROLES)}")
        content = _text(message, "content", where, f"{field}.content")
        if role == "assistant" and not content:
            raise _fail(where, f"{field}.content", "is an empty assistant turn", "fill or drop it")
        out.append(Message(role, content))
    if not any(m.role == "assistant" for m in out):
        raise _fail(
            where, "messages", "has no assistant turn", "add the reply the model should learn"
        )
    return tuple(out)


def conversation(messages: Iterable[Mapping[str, Any] | Message]) -> Conversation:
    """A checked conversation from message dicts (or Messages), as in the 'messages' shape."""
    items = [m.as_dict() if isinstance(m, Message) else m for m in messages]
    return _parse_messages(items, "the conversation")


def load_jsonl(path: str | os.PathLike) -> list[Conversation]:
    """Every conversation of a JSONL file (or a Parquet file of the same fields: a
    `messages` column of role/content structs, or `prompt`/`response`/`system` columns), in
    file order.

    Raises:
        InstructDataError: a line is not JSON or not a valid record; the message names the
            file, the line (or Parquet row) number (from 1) and the field.
        DataError: a Parquet file that is not one, or pyarrow missing to read it.
    """
    path = Path(path).expanduser()
    conversations = [
        parse_record(record, where) for where, record in read_records(path, InstructDataError)
    ]
    if not conversations:
        raise InstructDataError(f"{path}: holds no records; write one JSON object per line")
    return conversations
