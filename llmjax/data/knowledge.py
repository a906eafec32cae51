"""A synthetic knowledge base of invented people, the text that states its facts, and the
questions that ask for them: ground truth for measuring hallucination, where how often each fact
was seen in training is known exactly.

    kb = KnowledgeBase.generate(seed=0, people=400)
    counts = fact_counts(kb, np.random.default_rng(1), monofact_rate=0.3, unseen_rate=0.2)
    text = training_text(kb, counts, np.random.default_rng(2))       # sentences, shuffled
    kb.questions()[0]    # Question(fact=..., prompt="Q: In which city was Bodan Kerel born?\nA:",
                         #          answer=" Tarvo")

Names, cities, jobs and colours are made of syllables, so no fact can be known from elsewhere;
every person has one value per attribute, drawn uniformly (an arbitrary fact in Kalai &
Vempala's sense: nothing about the name predicts it). A fact appears in the training text as many
times as `fact_counts` says, each time in one of several phrasings, so a model that memorises
phrasings cannot pass for one that knows the fact. Everything is a function of the seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llmjax.errors import ConfigError

SYLLABLES = ("ba", "do", "ke", "li", "mo", "nu", "ra", "se", "ti", "vo", "za", "pe", "gu", "fa",
             "ro", "shi", "lan", "mer", "tor", "vin")  # fmt: skip
# attribute -> (how many values, statements, question)
ATTRIBUTES = {
    "city": (12, ("{name} was born in {value}.", "{name} comes from {value}.",
                  "The birthplace of {name} is {value}."),
             "Q: In which city was {name} born?\nA:"),
    "job": (10, ("{name} works as a {value}.", "By trade, {name} is a {value}.",
                 "{name} earns a living as a {value}."),
            "Q: What is the job of {name}?\nA:"),
    "colour": (8, ("The favourite colour of {name} is {value}.", "{name} likes {value} best.",
                   "Of all colours, {name} prefers {value}."),
               "Q: Which colour does {name} like best?\nA:"),
}  # fmt: skip


def _word(rng: np.random.Generator, low: int, high: int) -> str:
    return "".join(rng.choice(SYLLABLES, size=int(rng.integers(low, high + 1)))).capitalize()


@dataclass(frozen=True)
class Fact:
    person: str
    attribute: str
    value: str

    def statement(self, phrasing: int) -> str:
        return ATTRIBUTES[self.attribute][1][phrasing].format(name=self.person, value=self.value)


@dataclass(frozen=True)
class Question:
    fact: Fact
    prompt: str
    answer: str  # with its leading space: the continuation of the prompt


@dataclass(frozen=True)
class KnowledgeBase:
    """People with one value per attribute, and each attribute's possible values."""

    facts: tuple[Fact, ...]
    values: dict[str, tuple[str, ...]]

    @classmethod
    def generate(
        cls, seed: int, people: int, attributes: Sequence[str] = tuple(ATTRIBUTES)
    ) -> KnowledgeBase:
        if people < 1:
            raise ConfigError(f"people={people} is out of range; valid: >= 1")
        unknown = [a for a in attributes if a not in ATTRIBUTES]
        if unknown:
            raise ConfigError(f"unknown attributes {unknown}; valid: {sorted(ATTRIBUTES)}")
        rng = np.random.default_rng([seed, 41])
        values = {}
        for a in attributes:
            words: set[str] = set()
            while len(words) < ATTRIBUTES[a][0]:
                words.add(_word(rng, 2, 2).lower() if a != "city" else _word(rng, 2, 2))
            values[a] = tuple(sorted(words))
        names: list[str] = []
        seen: set[str] = set()
        while len(names) < people:
            name = f"{_word(rng, 2, 2)} {_word(rng, 2, 3)}"
            if name not in seen:
                seen.add(name)
                names.append(name)
        facts = tuple(Fact(n, a, str(rng.choice(values[a]))) for n in names for a in attributes)
        return cls(facts, values)

    def questions(self) -> list[Question]:
        return [Question(f, ATTRIBUTES[f.attribute][2].format(name=f.person), " " + f.value)
                for f in self.facts]  # fmt: skip


def fact_counts(
    kb: KnowledgeBase,
    rng: np.random.Generator,
    *,
    monofact_rate: float,
    unseen_rate: float = 0.0,
    max_count: int = 16,
) -> np.ndarray:
    """How many times each fact is stated in training (int [n_facts]): a share `unseen_rate`
    never, a share `monofact_rate` exactly once, the rest 2 .. max_count times (log-uniform)."""
    for name, v in (("monofact_rate", monofact_rate), ("unseen_rate", unseen_rate)):
        if not 0 <= v <= 1:
            raise ConfigError(f"{name}={v} is out of range; valid: [0, 1]")
    if monofact_rate + unseen_rate > 1:
        raise ConfigError("monofact_rate + unseen_rate must be at most 1")
    if max_count < 2:
        raise ConfigError(f"max_count={max_count} is out of range; valid: >= 2")
    n = len(kb.facts)
    kind = rng.permutation(n)
    counts = np.exp(rng.uniform(np.log(2), np.log(max_count + 1), n)).astype(np.int64)
    counts = np.clip(counts, 2, max_count)
    n_unseen, n_mono = round(unseen_rate * n), round(monofact_rate * n)
    counts[kind[:n_unseen]] = 0
    counts[kind[n_unseen : n_unseen + n_mono]] = 1
    return counts


def training_text(kb: KnowledgeBase, counts: np.ndarray, rng: np.random.Generator) -> str:
    """Every fact stated counts[i] times (phrasings drawn at random), sentences shuffled, one per
    line."""
    if len(counts) != len(kb.facts):
        raise ConfigError(f"{len(counts)} counts for {len(kb.facts)} facts")
    lines = []
    for fact, c in zip(kb.facts, counts, strict=True):
        n_phrasings = len(ATTRIBUTES[fact.attribute][1])
        lines += [fact.statement(int(p)) for p in rng.integers(0, n_phrasings, int(c))]
    order = rng.permutation(len(lines))
    return "\n".join(lines[i] for i in order) + "\n"
