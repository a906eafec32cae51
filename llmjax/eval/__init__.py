"""Evaluation: an objective's metrics over a split, and measurement helpers that experiments
and notebooks share."""

from llmjax.eval.answers import Answers, answer_prompts, score_answers
from llmjax.eval.core import evaluate, make_eval_step
from llmjax.eval.instruct import ReplyScorer, ReplyScores
from llmjax.eval.ngram import KneserNey

__all__ = [
    "Answers",
    "KneserNey",
    "ReplyScorer",
    "ReplyScores",
    "answer_prompts",
    "evaluate",
    "make_eval_step",
    "score_answers",
]
