"""Evaluation: an objective's metrics over a split, and measurement helpers that experiments
and notebooks share."""

from llmjax.eval.core import evaluate, make_eval_step
from llmjax.eval.instruct import ReplyScorer, ReplyScores

__all__ = ["ReplyScorer", "ReplyScores", "evaluate", "make_eval_step"]
