"""Evaluation: an objective's metrics over a split, and measurement helpers that experiments
and notebooks share."""

from llmjax.eval.core import evaluate, make_eval_step

__all__ = ["evaluate", "make_eval_step"]
