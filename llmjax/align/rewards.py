"""Rewards of completions: Python callables `fn(prompts, completions) -> floats`, built-in ones
(verifiable arithmetic, a character's frequency, a reward model), and the checked call that a
rollout makes.

A reward spec names one (`--reward`):

    arith              1.0 when the completion is exactly the answer of "What is 17 + 25?"
    count:<char>       the share of the completion's characters that are <char> (a toy task)
    run:<DIR>          a reward model's score (a run with a value head, llmjax.align.score)
    module:function    any importable function fn(prompts, completions)

A reward that raises, returns the wrong number of values, or returns a non-finite one is an
error naming the prompt (`RewardError`); with rl.on_reward_error=skip the row is masked out of
the update instead (its reward is 0 and it is counted in the rollout's `reward_skipped`).
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmjax.errors import ConfigError

RewardFn = Callable[[list[str], list[str]], Sequence[float]]
SPECS = "arith, gold, count:<char>, run:<DIR> or module:function"


class RewardError(ValueError):
    """A reward function failed on a prompt (raised, or gave a non-finite value)."""


# ----------------------------------------------------------------------------- arithmetic

_ARITH = re.compile(r"What is (-?\d+) ([+\-*]) (-?\d+)\?")


def arith_prompts(n: int, seed: int = 0, *, high: int = 50) -> list[str]:
    """`n` prompts "What is A op B?" (op in + - *, operands below `high`), reproducible."""
    rng = np.random.default_rng(seed)
    ops = ("+", "-", "*")
    out = []
    for _ in range(n):
        a, b = (int(x) for x in rng.integers(0, high, 2))
        out.append(f"What is {a} {ops[int(rng.integers(0, 3))]} {b}?")
    return out


def arith_answer(prompt: str) -> int:
    """The answer of an arithmetic prompt; ValueError for a prompt of another shape."""
    found = _ARITH.search(prompt)
    if found is None:
        raise ValueError(f"not an arithmetic prompt ('What is A + B?'): {prompt!r}")
    a, op, b = int(found.group(1)), found.group(2), int(found.group(3))
    return a + b if op == "+" else a - b if op == "-" else a * b


def arith_reward(prompts: list[str], completions: list[str]) -> list[float]:
    """1.0 where the completion, stripped, is exactly the prompt's answer; else 0.0."""
    pairs = zip(prompts, completions, strict=True)
    return [float(c.strip() == str(arith_answer(p))) for p, c in pairs]


def count_reward(char: str) -> RewardFn:
    """The share of each completion's characters that are `char` (0 for an empty one)."""
    if len(char) != 1:
        raise ConfigError(f"--reward count:<char> takes one character, got {char!r}")

    def reward(prompts: list[str], completions: list[str]) -> list[float]:
        return [c.count(char) / len(c) if c else 0.0 for c in completions]

    reward.__name__ = f"count_{char!r}"
    return reward


# ----------------------------------------------------------------------------- reward model


class RewardModel:
    """A reward model's score of prompt + completion ids (its value head at the last token).

    It reads token ids, not text: `score_ids(sequences)` of prompt + reply ids without the
    reply's end token (what training reads; `llmjax.data.preference.reward_ids`); called with
    texts, it renders them with its chat template. Its tokenizer must be the policy's
    (`check_tokenizer`)."""

    uses_tokens = True

    def __init__(self, path: str | Path, batch_size: int = 16):
        from llmjax.align.score import check_scorer
        from llmjax.runs import load_run

        loaded = load_run(path)
        check_scorer(loaded.config, str(path))
        self.path, self.run = str(path), loaded.merged()
        self.variables = {"params": self.run.params, **self.run.model_state}
        self.batch_size = batch_size

    @property
    def tokenizer(self) -> Any:
        return self.run.tokenizer

    def check_tokenizer(self, tokenizer: Any) -> None:
        if tokenizer != self.tokenizer:
            raise ConfigError(
                f"the reward model run:{self.path} uses another tokenizer ({self.tokenizer!r}) "
                f"than the policy ({tokenizer!r}), so it cannot score the policy's token ids; "
                f"train the reward model from the same base run"
            )

    def score_ids(self, sequences: Sequence[np.ndarray]) -> np.ndarray:
        from llmjax.align.score import score_tokens

        pad = self.tokenizer.pad_id or 0
        return score_tokens(
            self.run.model, self.variables, sequences, batch_size=self.batch_size, pad_id=pad
        )

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        """Scores of (prompt, reply) texts, rendered as one exchange with the reward model's
        chat template (`llmjax.align.score`)."""
        from llmjax.align.score import score

        pairs = list(zip(prompts, completions, strict=True))
        return score(self.run, pairs, batch_size=self.batch_size)


# ----------------------------------------------------------------------------- specs


def parse_reward(spec: str) -> RewardFn:
    """The reward a spec names (module docstring); ConfigError for a bad spec."""
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"no reward given: pass --reward SPEC ({SPECS})")
    if spec == "arith":
        return arith_reward
    if spec == "gold":  # the hidden reward of the built-in preference data, checked by code
        from llmjax.data.preference import GoldReward

        return GoldReward()
    kind, sep, rest = spec.partition(":")
    if kind == "count" and sep:
        return count_reward(rest)
    if kind == "run" and sep:
        if not Path(rest).is_dir():
            raise ConfigError(f"--reward {spec}: {rest} is not a run directory")
        return RewardModel(rest)
    if sep and rest and "/" not in spec:
        try:
            module = importlib.import_module(kind)
        except ImportError as e:
            raise ConfigError(f"--reward {spec}: cannot import module {kind!r} ({e})") from None
        fn = getattr(module, rest, None)
        if not callable(fn):
            raise ConfigError(f"--reward {spec}: module {kind!r} has no function {rest!r}")
        return fn
    raise ConfigError(f"--reward {spec!r} is not a reward spec; valid: {SPECS}")


def compute_rewards(
    fn: RewardFn,
    prompts: list[str],
    completions: list[str],
    *,
    sequences: Sequence[np.ndarray] | None = None,
    skip: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(rewards float64 [N], valid bool [N]) of `fn` on the rows; a reward model scores
    `sequences` (prompt + completion ids) instead of texts.

    A call that raises is retried row by row to find the rows that fail. Failing or non-finite
    rows raise RewardError naming the first prompt, or, with `skip`, come back invalid with
    reward 0."""

    def call(idx: list[int]) -> np.ndarray:
        if getattr(fn, "uses_tokens", False) and sequences is not None:
            out = fn.score_ids([sequences[i] for i in idx])
        else:
            out = fn([prompts[i] for i in idx], [completions[i] for i in idx])
        values = np.asarray(out, np.float64).reshape(-1)
        if len(values) != len(idx):
            raise RewardError(
                f"the reward function returned {len(values)} values for {len(idx)} completions"
            )
        return values

    n = len(prompts)
    rewards, errors = np.zeros(n), [None] * n
    try:
        rewards[:] = call(list(range(n)))
    except Exception:
        for i in range(n):
            try:
                rewards[i] = call([i])[0]
            except Exception as e:  # noqa: BLE001  (a user function: any error is the row's)
                errors[i] = f"{type(e).__name__}: {e}"
                rewards[i] = math.nan
    bad = [i for i in range(n) if errors[i] is not None or not math.isfinite(rewards[i])]
    if bad and not skip:
        i = bad[0]
        what = errors[i] or f"returned {rewards[i]}, not a finite number"
        raise RewardError(
            f"the reward function failed on prompt {prompts[i]!r} (completion "
            f"{completions[i]!r}): {what}; fix the reward function, or pass --set "
            f"rl.on_reward_error=skip to mask such rows out ({len(bad)} of {n} rows failed)"
        )
    valid = np.ones(n, bool)
    valid[bad] = False
    rewards[bad] = 0.0
    return rewards, valid
