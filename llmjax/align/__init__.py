"""Alignment: reward models, preference optimisation (DPO, IPO) and reinforcement learning
from a reward (PPO, GRPO), each an objective of the one training loop.

    scores = score("runs/reward", ["a reply", "another"])   # a reward model's scores
"""

from llmjax.align.score import check_scorer, last_token_values, score, score_tokens

__all__ = ["check_scorer", "last_token_values", "score", "score_tokens"]
