"""Calibration of a model's confidence in its answers: the reliability diagram, the expected
calibration error, and accuracy against coverage when low-confidence answers are withheld.

    rel = reliability(confidence_N, correct_N, bins=10)
    rel.ece                          # sum over bins of (share of answers) * |accuracy - confidence|
    selective(confidence_N, correct_N).accuracy_at(0.5)   # accuracy of the 50% most confident

Confidences are probabilities in [0, 1] (e.g. the model's probability of its own answer);
bins are equal-width in confidence, the last one closed at 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmjax.errors import ConfigError


def _check(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    confidence = np.asarray(confidence, np.float64).ravel()
    correct = np.asarray(correct, bool).ravel()
    if confidence.shape != correct.shape:
        raise ConfigError(f"{len(confidence)} confidences but {len(correct)} correctness flags")
    if len(confidence) == 0:
        raise ConfigError("no answers to measure calibration on")
    if not np.all((confidence >= 0) & (confidence <= 1)):
        raise ConfigError("confidences must be probabilities in [0, 1]")
    return confidence, correct


@dataclass(frozen=True)
class Reliability:
    """Per confidence bin: the answers in it, their mean confidence and their accuracy."""

    edges: np.ndarray  # [bins + 1]
    counts: np.ndarray  # [bins]
    confidence: np.ndarray  # [bins], nan where empty
    accuracy: np.ndarray  # [bins], nan where empty

    @property
    def ece(self) -> float:
        """Expected calibration error: the count-weighted mean |accuracy - confidence|."""
        used = self.counts > 0
        gap = np.abs(self.accuracy[used] - self.confidence[used])
        return float((gap * self.counts[used]).sum() / self.counts.sum())

    def to_dict(self) -> dict:
        return {"edges": self.edges.tolist(), "counts": self.counts.tolist(),
                "confidence": self.confidence.tolist(), "accuracy": self.accuracy.tolist(),
                "ece": self.ece}  # fmt: skip


def reliability(confidence, correct, bins: int = 10) -> Reliability:
    """The reliability diagram of answers with these confidences and correctness."""
    if bins < 1:
        raise ConfigError(f"bins={bins} is out of range; valid: >= 1")
    confidence, correct = _check(confidence, correct)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore"):
        conf = np.bincount(which, weights=confidence, minlength=bins) / counts
        acc = np.bincount(which, weights=correct.astype(np.float64), minlength=bins) / counts
    return Reliability(edges, counts, conf, acc)


@dataclass(frozen=True)
class Selective:
    """Accuracy of the k most confident answers, for every k (ties broken by order)."""

    coverage: np.ndarray  # [N]: k / N
    accuracy: np.ndarray  # [N]: accuracy of the k most confident
    threshold: np.ndarray  # [N]: the k-th highest confidence

    def accuracy_at(self, coverage: float) -> float:
        """Accuracy when only the most confident `coverage` share is answered."""
        if not 0 < coverage <= 1:
            raise ConfigError(f"coverage={coverage} is out of range; valid: (0, 1]")
        k = max(int(np.ceil(coverage * len(self.coverage))), 1)
        return float(self.accuracy[k - 1])


def selective(confidence, correct) -> Selective:
    """Answer only above a confidence threshold: accuracy against the share answered."""
    confidence, correct = _check(confidence, correct)
    order = np.argsort(-confidence, kind="stable")
    hits = np.cumsum(correct[order])
    k = np.arange(1, len(order) + 1)
    return Selective(k / len(order), hits / k, confidence[order])
