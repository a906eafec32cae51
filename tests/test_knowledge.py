"""The synthetic knowledge base (deterministic per seed, frequencies as asked) and the
calibration measures (reliability, ECE, accuracy against coverage) against hand computations."""

import numpy as np
import pytest

from llmjax.data.knowledge import KnowledgeBase, fact_counts, training_text
from llmjax.errors import ConfigError
from llmjax.eval.calibration import reliability, selective


def test_knowledge_base_is_deterministic_per_seed():
    a, b, c = (KnowledgeBase.generate(seed, people=50) for seed in (3, 3, 4))
    assert a == b and a != c
    assert len(a.facts) == 150 and len({f.person for f in a.facts}) == 50
    counts = fact_counts(a, np.random.default_rng(1), monofact_rate=0.3, unseen_rate=0.2)
    again = fact_counts(b, np.random.default_rng(1), monofact_rate=0.3, unseen_rate=0.2)
    assert counts.tolist() == again.tolist()
    assert (counts == 0).sum() == 30 and (counts == 1).sum() == 45 and counts.max() <= 16
    text = training_text(a, counts, np.random.default_rng(2))
    assert text == training_text(a, counts, np.random.default_rng(2))
    lines = text.splitlines()
    assert len(lines) == counts.sum()
    said = {line: lines.count(line) for line in set(lines)}
    for fact, n in zip(a.facts, counts, strict=True):  # each fact stated exactly n times
        assert sum(said.get(fact.statement(p), 0) for p in range(3)) == n
    q = a.questions()[0]
    assert q.prompt.startswith("Q: ") and q.prompt.endswith("\nA:") and q.answer.startswith(" ")
    with pytest.raises(ConfigError, match="at most 1"):
        fact_counts(a, np.random.default_rng(0), monofact_rate=0.8, unseen_rate=0.3)


def test_reliability_and_ece_by_hand():
    conf = np.asarray([0.05, 0.15, 0.15, 0.95, 1.0, 0.55])
    right = np.asarray([0, 1, 0, 1, 1, 0], bool)
    rel = reliability(conf, right, bins=10)
    assert rel.counts.tolist() == [1, 2, 0, 0, 0, 1, 0, 0, 0, 2]
    # |0 - .05| * 1 + |.5 - .15| * 2 + |0 - .55| * 1 + |1 - .975| * 2, over 6
    assert rel.ece == pytest.approx((0.05 + 0.7 + 0.55 + 0.05) / 6)
    perfect = reliability([0.0, 1.0, 1.0], [False, True, True], bins=4)
    assert perfect.ece == 0.0
    with pytest.raises(ConfigError, match="probabilities"):
        reliability([1.5], [True])


def test_selective_accuracy_against_coverage():
    sel = selective([0.9, 0.2, 0.8, 0.4], [True, False, False, True])
    assert sel.accuracy.tolist() == [1.0, 0.5, pytest.approx(2 / 3), 0.5]
    assert sel.accuracy_at(0.5) == 0.5 and sel.accuracy_at(0.25) == 1.0
    assert sel.coverage.tolist() == [0.25, 0.5, 0.75, 1.0]
