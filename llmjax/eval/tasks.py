"""Evaluation tasks from JSONL, one item per line, and their metrics. The kind is read from the
fields of the first line, and every line must have that kind's fields:

    multiple choice   {"context": str, "choices": [str, ...], "gold": int}
                      acc: the gold choice has the highest log-likelihood; acc_norm: the highest
                      log-likelihood per byte of the choice (long choices are not penalised)
    continuation      {"context": str, "continuation": str}
                      loss and perplexity of the continuation tokens; acc: greedy decoding
                      from the context produces the whole continuation
    generate          {"context": str, "target": str, "until": [str, ...] (optional)}
                      exact_match of the greedy reply, cut before the first stop string
                      (default: a newline), against the target (surrounding whitespace ignored)

Choices and continuations are appended to the context as they are: give them their leading
space. Few-shot prompting puts k other items of the same file before each item, solved (their
context followed by the gold choice, continuation or target), separated by a blank line; the k
are drawn per item with a seeded generator, so a run is repeatable.

    task = load_task("tasks/capitals.jsonl")
    result = run_task(EvalLM.from_run("runs/x"), task, shots=3)   # {"acc": ..., "items": ...}
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmjax.data.instruct.tasks import exact_match
from llmjax.errors import ConfigError

KINDS = {
    "multiple_choice": ("context", "choices", "gold"),
    "continuation": ("context", "continuation"),
    "generate": ("context", "target"),
}
DELIMITER = "\n\n"
DEFAULT_UNTIL = ("\n",)


@dataclass(frozen=True)
class Task:
    """A named list of items of one kind (see the module docstring)."""

    name: str
    kind: str
    items: tuple[dict[str, Any], ...]
    source: str = field(default="", compare=False)

    def answer(self, item: dict[str, Any]) -> str:
        """The gold text that follows the context: the few-shot solution of an item."""
        if self.kind == "multiple_choice":
            return item["choices"][item["gold"]]
        return item["continuation" if self.kind == "continuation" else "target"]


def _kind_of(record: dict, where: str) -> str:
    if "choices" in record:
        return "multiple_choice"
    if "continuation" in record:
        return "continuation"
    if "target" in record:
        return "generate"
    raise ConfigError(
        f"{where}: the item has none of the fields that name a task kind ('choices' for "
        f"multiple choice, 'continuation' for continuation scoring, 'target' for generation); "
        f"it has {sorted(record)}"
    )


def _check_item(record: dict, kind: str, where: str) -> None:
    for name in KINDS[kind]:
        if name not in record:
            raise ConfigError(
                f"{where}: missing field '{name}' (a {kind} task's items need "
                f"{', '.join(KINDS[kind])})"
            )
    for name in ("context", "continuation", "target"):
        if name in record and not isinstance(record[name], str):
            raise ConfigError(f"{where}: field '{name}' must be a string, got {record[name]!r}")
    if kind == "multiple_choice":
        choices, gold = record["choices"], record["gold"]
        if not isinstance(choices, list) or len(choices) < 2:
            raise ConfigError(f"{where}: field 'choices' must be a list of at least 2 strings")
        if not all(isinstance(c, str) and c for c in choices):
            raise ConfigError(f"{where}: field 'choices' must hold non-empty strings")
        if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
            raise ConfigError(
                f"{where}: field 'gold' is {gold!r}, out of range for {len(choices)} choices; "
                f"valid: an index 0..{len(choices) - 1}"
            )
    if kind == "continuation" and not record["continuation"]:
        raise ConfigError(f"{where}: field 'continuation' is empty; nothing to score")
    if kind == "generate" and "until" in record:
        until = record["until"]
        if not isinstance(until, list) or not all(isinstance(u, str) and u for u in until):
            raise ConfigError(f"{where}: field 'until' must be a list of non-empty strings")


def load_task(path: str | Path, *, name: str | None = None) -> Task:
    """A task from a JSONL file; errors name the file, the line and the field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"task file {path} does not exist; give a JSONL file of items (see `llmjax eval "
            f"--help` for the fields of each kind)"
        )
    items, kind = [], None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            message = f"{where}: not valid JSON ({e.msg}); one JSON object per line"
            raise ConfigError(message) from None
        if not isinstance(record, dict):
            raise ConfigError(f"{where}: a line must be a JSON object, got {type(record).__name__}")
        kind = kind or _kind_of(record, where)
        _check_item(record, kind, where)
        items.append(record)
    if not items:
        raise ConfigError(f"task file {path} has no items; one JSON object per line")
    return Task(name or path.stem, kind, tuple(items), str(path))


def fewshot_contexts(task: Task, shots: int, seed: int = 0) -> list[str]:
    """Each item's context after `shots` solved other items of the task."""
    n = len(task.items)
    if shots < 0:
        raise ConfigError(f"shots={shots} is out of range; valid: >= 0")
    if shots > n - 1:
        raise ConfigError(
            f"{shots}-shot prompting needs {shots} other items per item, but task "
            f"{task.name!r} has {n} items ({n - 1} others); lower the shots to <= {n - 1} or "
            f"add items"
        )
    if shots == 0:
        return [item["context"] for item in task.items]
    out = []
    for i, item in enumerate(task.items):
        rng = np.random.default_rng([seed, i])
        others = rng.choice(n - 1, size=shots, replace=False)
        others = [j + (j >= i) for j in others]  # skip the item itself
        solved = [task.items[j]["context"] + task.answer(task.items[j]) for j in others]
        out.append(DELIMITER.join([*solved, item["context"]]))
    return out


def run_task(
    lm: Any,
    task: Task,
    *,
    shots: int = 0,
    seed: int = 0,
    limit: int | None = None,
    max_new_tokens: int = 32,
) -> dict[str, Any]:
    """The task's metrics under `lm` (an EvalLM), over its first `limit` items."""
    contexts = fewshot_contexts(task, shots, seed)
    items = list(task.items)
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"limit={limit} is out of range; valid: >= 1")
        items, contexts = items[:limit], contexts[:limit]
    out: dict[str, Any] = {"task": task.name, "kind": task.kind, "items": len(items),
                           "shots": shots}  # fmt: skip
    where = f"task {task.name!r} item"
    if task.kind == "multiple_choice":
        pairs = [(c, x) for c, item in zip(contexts, items, strict=True) for x in item["choices"]]
        scored = iter(lm.loglikelihood(pairs, where=f"{where} choice"))
        right = right_norm = 0
        for item in items:
            ll = np.asarray([next(scored).logprob for _ in item["choices"]])
            per_byte = ll / np.asarray([len(x.encode("utf-8")) for x in item["choices"]])
            right += int(np.argmax(ll)) == item["gold"]
            right_norm += int(np.argmax(per_byte)) == item["gold"]
        out |= {"acc": right / len(items), "acc_norm": right_norm / len(items)}
    elif task.kind == "continuation":
        pairs = [(c, item["continuation"]) for c, item in zip(contexts, items, strict=True)]
        scored = lm.loglikelihood(pairs, where=where)
        nll = -sum(s.logprob for s in scored)
        tokens = sum(s.tokens for s in scored)
        out |= {
            "loss": nll / tokens,
            "perplexity": math.exp(min(nll / tokens, 700.0)),
            "logprob": -nll / len(items),
            "acc": float(np.mean([s.greedy for s in scored])),
            "tokens": tokens,
        }
    else:
        by_until: dict[tuple[str, ...], list[int]] = {}
        for i, item in enumerate(items):
            by_until.setdefault(tuple(item.get("until", DEFAULT_UNTIL)), []).append(i)
        replies: list[str] = [""] * len(items)
        for until, rows in by_until.items():
            texts = lm.generate_until(
                [contexts[i] for i in rows], until=until, max_new_tokens=max_new_tokens
            )
            for i, text in zip(rows, texts, strict=True):
                replies[i] = text
        correct = [exact_match(r, item["target"]) for r, item in zip(replies, items, strict=True)]
        out |= {"exact_match": float(np.mean(correct)), "replies": replies}
    return out
