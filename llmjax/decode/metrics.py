"""Statistics of generated text: diversity, repetition, likelihood and entropy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _ngrams(seq: Sequence[int], n: int) -> list[tuple[int, ...]]:
    seq = [int(t) for t in seq]
    return [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]


def distinct_n(sequences: Sequence[Sequence[int]], n: int) -> float:
    """Distinct n-grams / all n-grams, pooled over the sequences (Li et al. 2016); 0 if none."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = [g for s in sequences for g in _ngrams(s, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(sequences: Sequence[Sequence[int]], n: int = 4) -> float:
    """seq-rep-n (Welleck et al. 2020): 1 - distinct / all n-grams within each sequence,
    averaged over the sequences that have an n-gram. 0: no n-gram repeats; near 1: loops."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rates = []
    for s in sequences:
        grams = _ngrams(s, n)
        if grams:
            rates.append(1.0 - len(set(grams)) / len(grams))
    return float(np.mean(rates)) if rates else 0.0


def mean_per_token(values: Sequence[Sequence[float]]) -> float:
    """Mean over all tokens of all sequences (e.g. log-likelihood or entropy per token)."""
    flat = [float(v) for seq in values for v in seq]
    return float(np.mean(flat)) if flat else float("nan")


def generation_stats(
    tokens: Sequence[Sequence[int]],
    log_probs: Sequence[Sequence[float]] | None = None,
    entropy: Sequence[Sequence[float]] | None = None,
    sample_entropy: Sequence[Sequence[float]] | None = None,
) -> dict[str, float]:
    """The usual table row for a set of generations."""
    out = {
        "distinct_1": distinct_n(tokens, 1),
        "distinct_2": distinct_n(tokens, 2),
        "distinct_3": distinct_n(tokens, 3),
        "rep_4": repetition_rate(tokens, 4),
        "mean_length": float(np.mean([len(t) for t in tokens])) if len(tokens) else 0.0,
    }
    if log_probs is not None:
        out["log_likelihood"] = mean_per_token(log_probs)
    if entropy is not None:
        out["model_entropy"] = mean_per_token(entropy)
    if sample_entropy is not None:
        out["sampling_entropy"] = mean_per_token(sample_entropy)
    return out
