"""Small text corpora the training tests write."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_word_corpus(path: Path, lines: int = 400) -> Path:
    """`lines` lines of 8 words drawn from 8 (seeded): a text small models learn quickly."""
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]
    path.write_text("\n".join(" ".join(rng.choice(words, 8)) for _ in range(lines)))
    return path
