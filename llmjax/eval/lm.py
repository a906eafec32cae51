"""A model with its tokenizer, answering the three requests text evaluations are made of:
the log-likelihood of a continuation, the rolling log-likelihood of a whole text, and greedy
generation until a stop string.

    lm = EvalLM.from_run("runs/shakespeare")                  # or EvalLM(model, params, tok)
    lm.loglikelihood([("The capital of France is", " Paris")])  # [Scored]
    lm.rolling_loglikelihood(["a long document ..."], window=256, stride=128)  # [float]
    lm.generate_until(["Q: 2+3=\nA:"], until=["\n"], max_new_tokens=8)        # [str]

A (context, continuation) pair is tokenized as one text, and the continuation's tokens are
those after the context's own tokens (trailing spaces of the context move to the
continuation), so a tokenizer that merges across the boundary scores the same ids a plain
forward pass over the joined text would. An empty context is the BOS token (else EOS). A text
scored by rolling windows starts with that token too, so its first token is scored as well.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmjax.errors import ConfigError
from llmjax.eval.answers import answer_prompts
from llmjax.eval.loglik import Scored, TokenScorer, rolling_log_probs


@dataclass(frozen=True)
class TextScores:
    """Rolling log-likelihood of texts: totals over all of them and per text."""

    logprobs: list[float]  # nats, per text
    tokens: int
    bytes: int

    @property
    def report(self) -> dict[str, float]:
        nll = -sum(self.logprobs)
        return {
            "loss": nll / max(self.tokens, 1),
            "perplexity": math.exp(min(nll / max(self.tokens, 1), 700.0)),
            "bits_per_byte": nll / math.log(2) / max(self.bytes, 1),
            "tokens": self.tokens,
            "bytes": self.bytes,
        }


class EvalLM:
    """Text-level log-likelihoods and generations of one model (see the module docstring)."""

    def __init__(
        self,
        model: Any,
        params: Any,
        tokenizer: Any,
        *,
        max_length: int | None = None,
        batch_size: int = 16,
        pad_multiple: int = 16,
    ):
        variables = params if "params" in params else {"params": params}
        scorer = TokenScorer(model, variables, max_length=max_length, batch_size=batch_size,
                             pad_multiple=pad_multiple, pad_id=tokenizer.fill_id)  # fmt: skip
        self._setup(scorer, tokenizer, model, variables, batch_size)

    @classmethod
    def from_scorer(cls, scorer: Any, tokenizer: Any) -> EvalLM:
        """Text requests served by any object with TokenScorer's `score` and `max_length`
        (e.g. llmjax.eval.ngram.NgramScorer); it cannot generate."""
        lm = cls.__new__(cls)
        lm._setup(scorer, tokenizer, None, None, 16)
        return lm

    def _setup(self, scorer, tokenizer, model, variables, batch_size: int) -> None:
        self.scorer, self.tokenizer = scorer, tokenizer
        self.model, self.variables = model, variables
        self.batch_size = batch_size
        self.prefix_id = self._prefix(tokenizer)
        self.step: int | None = None  # the checkpoint step, when read from a run

    @staticmethod
    def _prefix(tokenizer: Any) -> int:
        prefix = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
        if prefix is None:
            raise ConfigError(
                "the tokenizer has neither a BOS nor an EOS token, so a text's first token has "
                "no context to be scored from; use a tokenizer with one of them"
            )
        return int(prefix)

    @classmethod
    def from_run(cls, run: str, *, step: int | None = None, **options: Any) -> EvalLM:
        """A run directory's checkpoint (newest, or `step`), LoRA adapters merged."""
        from llmjax.runs import load_run

        loaded = load_run(run, step=step).merged()
        lm = cls(loaded.model, {"params": loaded.params, **loaded.model_state}, loaded.tokenizer,
                 **options)  # fmt: skip
        lm.step = loaded.step
        return lm

    @property
    def max_length(self) -> int:
        return self.scorer.max_length

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(text), np.int32)

    def encode_pair(self, context: str, continuation: str) -> tuple[np.ndarray, np.ndarray]:
        """(context ids, continuation ids), the continuation's being the joined text's ids
        after the context's (the context's trailing spaces move to the continuation; an empty
        context is the prefix token)."""
        return self.encode_pairs([(context, continuation)])[0]

    def encode_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """`encode_pair` of each pair, with the texts encoded in two batches (the joined texts,
        and each distinct context once: the choices of an item share theirs)."""
        moved = []
        for context, continuation in pairs:
            spaces = len(context) - len(context.rstrip()) if context else 0
            if spaces:
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            moved.append((context, continuation))
        contexts = list(dict.fromkeys(c for c, _ in moved if c))
        lengths = dict(zip(contexts, map(len, self.tokenizer.encode_batch(contexts)), strict=True))
        wholes = self.tokenizer.encode_batch([c + x if c else x for c, x in moved])
        prefix = np.asarray([self.prefix_id], np.int32)
        return [(whole[: lengths[c]], whole[lengths[c] :]) if c else (prefix, whole)
                for (c, _), whole in zip(moved, wholes, strict=True)]  # fmt: skip

    def loglikelihood(
        self, pairs: Sequence[tuple[str, str]], *, where: str = "request"
    ) -> list[Scored]:
        return self.scorer.score(self.encode_pairs(pairs), where=where)

    def rolling_loglikelihood(
        self, texts: Sequence[str], *, window: int | None = None, stride: int | None = None
    ) -> TextScores:
        """Each text's log-likelihood from rolling windows (all its tokens scored)."""
        logprobs, tokens, nbytes = [], 0, 0
        for text in texts:
            ids = np.concatenate([[self.prefix_id], self.encode(text)]).astype(np.int32)
            lp = rolling_log_probs(self.scorer, ids, window=window, stride=stride)
            logprobs.append(float(lp.sum()))
            tokens += len(lp)
            nbytes += len(text.encode("utf-8"))
        return TextScores(logprobs, tokens, nbytes)

    def generate_until(
        self, contexts: Sequence[str], *, until: Sequence[str] = (), max_new_tokens: int = 32
    ) -> list[str]:
        """Greedy continuations, each cut before the first of `until` (and at EOS)."""
        if self.model is None:
            raise ConfigError("this scorer cannot generate; generation tasks need a model")
        if max_new_tokens < 1 or max_new_tokens >= self.max_length:
            raise ConfigError(
                f"max_new_tokens={max_new_tokens} is out of range; valid: 1 .. "
                f"{self.max_length - 1} (the model's context is {self.max_length} tokens)"
            )
        keep = self.max_length - max_new_tokens
        prompts = []
        for text in contexts:
            ids = self.encode(text) if text else np.asarray([self.prefix_id], np.int32)
            prompts.append(ids[-keep:])
        answers = answer_prompts(
            self.model,
            self.variables,
            self.tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            stop_texts=tuple(until),
            batch_size=self.batch_size,
            pad_multiple=16,
        )
        return answers.texts
