"""Answering many prompts and scoring the answers: batched, KV-cached greedy generation that
stops at the end of an answer, and exact match against reference answers.

    result = score_answers(model, params, tokenizer, prompts, answers, max_new_tokens=32,
                           stop_ids=fmt.stop_ids, stop_texts=fmt.stop_texts)
    result.accuracy, result.texts, result.correct

Prompts are answered in batches of one size, sorted by length and padded to a multiple of
`pad_multiple` tokens, so a whole evaluation compiles a handful of programs. An answer ends at
the tokenizer's EOS id, at any of `stop_ids` (checked on the device), or before the first of
`stop_texts` (checked between chunks of `chunk_size` tokens, so a batch stops as soon as every
row has ended); its text excludes what ended it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from llmjax.data import Tokenizer
from llmjax.data.instruct.tasks import exact_match
from llmjax.decode.samplers import SamplingConfig
from llmjax.decode.tokens import generate_tokens

GREEDY = SamplingConfig(temperature=0)


@dataclass
class Answers:
    """Answers in prompt order; `finished`: ended by a stop (not cut at max_new_tokens)."""

    texts: list[str]
    finished: np.ndarray  # bool [N]
    correct: np.ndarray | None = None  # bool [N], when scored against references

    @property
    def accuracy(self) -> float:
        if self.correct is None:
            raise ValueError("these answers were not scored; use score_answers")
        return float(self.correct.mean()) if len(self.correct) else float("nan")


def _cut(text: str, stop_texts: Sequence[str]) -> tuple[str, bool]:
    """The text before the first stop text, and whether there was one."""
    hits = [i for i in (text.find(s) for s in stop_texts) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def _batch_answers(
    model, variables, tokenizer, prompts, *, max_new_tokens, stop_ids, stop_texts,
    pad_id, pad_multiple, chunk_size,
) -> list[tuple[str, bool]]:  # fmt: skip
    """(text, finished) of one batch."""
    B = len(prompts)
    collected = np.zeros((B, 0), np.int32)
    stop_set = set(stop_ids)

    def text_of(row: np.ndarray) -> tuple[str, bool]:
        stopped = len(row) > 0 and int(row[-1]) in stop_set
        text, cut = _cut(tokenizer.decode(row[:-1] if stopped else row), stop_texts)
        return text, stopped or cut

    def on_chunk(start, new_BxC, lengths_B):
        nonlocal collected
        collected = np.concatenate([collected, new_BxC], axis=1)
        return np.asarray([text_of(collected[b, : lengths_B[b]])[1] for b in range(B)])

    out = generate_tokens(
        model, variables, prompts, max_new_tokens=max_new_tokens, key=jax.random.key(0),
        sampling=GREEDY, stop_ids=stop_ids, pad_id=pad_id, pad_multiple=pad_multiple,
        on_chunk=on_chunk if stop_texts else None, chunk_size=chunk_size,
    )  # fmt: skip
    return [text_of(out.tokens[b, : out.lengths[b]]) for b in range(B)]


def answer_prompts(
    model: nn.Module,
    params: Any,
    tokenizer: Tokenizer,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int] = (),
    stop_texts: Sequence[str] = (),
    batch_size: int = 64,
    pad_multiple: int = 64,
    chunk_size: int = 8,
) -> Answers:
    """Greedy answers to token-id prompts (see the module docstring for batching and stops).

    `params`: the model's params tree, or its variables {"params": ..., **model_state}.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if not prompts:
        return Answers([], np.zeros(0, bool))
    variables = params if "params" in params else {"params": params}
    stops = [int(i) for i in stop_ids]
    if tokenizer.eos_id is not None:
        stops.append(tokenizer.eos_id)
    pad_id = tokenizer.fill_id
    prompts = [np.asarray(p, np.int32) for p in prompts]
    order = np.argsort([len(p) for p in prompts], kind="stable")  # similar lengths together
    results: list[tuple[str, bool] | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = [prompts[i] for i in rows]
        batch += [batch[-1]] * (batch_size - len(batch))  # one batch shape: one program
        answers = _batch_answers(
            model, variables, tokenizer, batch, max_new_tokens=max_new_tokens,
            stop_ids=tuple(sorted(set(stops))), stop_texts=tuple(stop_texts), pad_id=pad_id,
            pad_multiple=pad_multiple, chunk_size=chunk_size,
        )  # fmt: skip
        for i, a in zip(rows, answers, strict=False):
            results[i] = a
    texts = [r[0] for r in results]
    return Answers(texts, np.asarray([r[1] for r in results], bool))


def score_answers(
    model: nn.Module,
    params: Any,
    tokenizer: Tokenizer,
    prompts: Sequence[Sequence[int]],
    answers: Sequence[str],
    *,
    match: Callable[[str, str], bool] = exact_match,
    **options: Any,
) -> Answers:
    """`answer_prompts`, each answer scored against its reference by `match` (default: exact
    match ignoring surrounding whitespace); `.accuracy` is the share right."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} reference answers")
    out = answer_prompts(model, params, tokenizer, prompts, **options)
    out.correct = np.asarray([match(t, a) for t, a in zip(out.texts, answers, strict=True)], bool)
    return out
