"""Built-in preference data made by code, with a hidden gold reward standing in for raters.

The prompts are short requests ("talk about rain"); a reply is a few words drawn from a small
vocabulary, ending with the marker word ("yes") about half the time. The gold reward prefers
replies that end with the marker (+1) and whose length is in a band (3 to 5 words, +0.5): a
property a model's samples show only sometimes. A rater compares two replies the
Bradley-Terry way: it prefers a with probability sigmoid((gold(a) - gold(b)) / temperature),
so labels are noisy where the rewards are close.

    gold = GoldReward()
    gold(["talk about rain"], ["fine good yes"])                  # float32 [1]: 1.5
    pairs = builtin_pairs(seed=0, count=1000)                     # labelled by noisy raters
    pairs = label_pairs([(prompt, reply_a, reply_b), ...], seed=0)  # e.g. a policy's samples
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from llmjax.data.instruct import Message
from llmjax.data.preference.records import PreferencePair

TOPICS = ("cats", "dogs", "rain", "tea", "maps", "bikes", "trees", "boats", "snow", "bread")
ASKS = ("talk about", "say something on", "a word about", "tell me of")
WORDS = ("good", "fine", "nice", "ok", "sure", "well", "so", "very", "much", "true")


@dataclass(frozen=True)
class GoldReward:
    """The hidden reward of the built-in data: `marker_bonus` if the reply's last word is
    `marker`, plus `band_bonus` if it has `band[0]` to `band[1]` words. Usable as an RL reward
    function: `GoldReward()(prompts, replies)` gives float32 [N]."""

    marker: str = "yes"
    marker_bonus: float = 1.0
    band: tuple[int, int] = (3, 5)
    band_bonus: float = 0.5

    def score(self, prompt: str, reply: str) -> float:
        words = reply.strip().rstrip(".!").split()
        reward = 0.0
        if words and words[-1].lower() == self.marker:
            reward += self.marker_bonus
        if self.band[0] <= len(words) <= self.band[1]:
            reward += self.band_bonus
        return reward

    def __call__(self, prompts: Sequence[str], replies: Sequence[str]) -> np.ndarray:
        if len(prompts) != len(replies):
            raise ValueError(f"{len(prompts)} prompts but {len(replies)} replies; pass one each")
        return np.asarray(
            [self.score(p, r) for p, r in zip(prompts, replies, strict=True)], np.float32
        )


def builtin_prompts(rng: np.random.Generator, count: int) -> list[str]:
    return [f"{rng.choice(ASKS)} {rng.choice(TOPICS)}" for _ in range(count)]


def sample_reply(rng: np.random.Generator, gold: GoldReward = GoldReward()) -> str:
    """A reply of the built-in distribution: 1 to 7 words, ending with the marker half the
    time."""
    words = [str(w) for w in rng.choice(WORDS, size=int(rng.integers(1, 8)))]
    if rng.random() < 0.5:
        words[-1] = gold.marker
    return " ".join(words)


def rater_prefers_first(
    rng: np.random.Generator, reward_a: float, reward_b: float, temperature: float
) -> bool:
    """A Bradley-Terry rater's choice: a with probability sigmoid((r_a - r_b) / temperature)."""
    p = 1.0 / (1.0 + np.exp(-(reward_a - reward_b) / temperature))
    return bool(rng.random() < p)


def label_pairs(
    triples: Iterable[tuple[str, str, str]],
    seed: int,
    *,
    gold: GoldReward = GoldReward(),
    temperature: float = 0.25,
) -> list[PreferencePair]:
    """Pairs from (prompt, reply_a, reply_b), the chosen reply picked by a seeded noisy rater of
    `gold`; triples with two identical replies are left out."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0 (e.g. 0.25)")
    rng = np.random.default_rng([seed, 2])
    pairs = []
    for prompt, a, b in triples:
        if a == b:
            continue
        first = rater_prefers_first(rng, gold.score(prompt, a), gold.score(prompt, b), temperature)
        chosen, rejected = (a, b) if first else (b, a)
        pairs.append(
            PreferencePair(
                (Message("user", prompt),),
                (Message("assistant", chosen),),
                (Message("assistant", rejected),),
            )
        )
    return pairs


def builtin_pairs(
    seed: int, count: int, *, gold: GoldReward = GoldReward(), temperature: float = 0.25
) -> list[PreferencePair]:
    """`count` pairs of built-in prompts with two replies whose gold rewards differ (a tie
    carries no preference), labelled by a noisy rater."""
    rng = np.random.default_rng([seed, 3])
    triples = []
    for prompt in builtin_prompts(rng, count):
        a = sample_reply(rng, gold)
        b = sample_reply(rng, gold)
        while gold.score(prompt, b) == gold.score(prompt, a):
            b = sample_reply(rng, gold)
        triples.append((prompt, a, b))
    return label_pairs(triples, seed, gold=gold, temperature=temperature)
