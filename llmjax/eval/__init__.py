"""Evaluation: an objective's metrics over a split; the harness (continuation log-likelihoods,
rolling perplexity over any text, JSONL tasks with few-shot prompting); the n-gram baseline; and
measurement helpers that experiments and notebooks share."""

from llmjax.eval.answers import Answers, answer_prompts, score_answers
from llmjax.eval.core import evaluate, make_eval_step
from llmjax.eval.instruct import ReplyScorer, ReplyScores
from llmjax.eval.lm import EvalLM, TextScores
from llmjax.eval.loglik import Scored, TokenScorer, rolling_log_probs, rolling_windows
from llmjax.eval.ngram import KneserNey
from llmjax.eval.tasks import Task, fewshot_contexts, load_task, run_task

__all__ = [
    "Answers",
    "EvalLM",
    "KneserNey",
    "ReplyScorer",
    "ReplyScores",
    "Scored",
    "Task",
    "TextScores",
    "TokenScorer",
    "answer_prompts",
    "evaluate",
    "fewshot_contexts",
    "load_task",
    "make_eval_step",
    "rolling_log_probs",
    "rolling_windows",
    "run_task",
    "score_answers",
]
