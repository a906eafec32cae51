"""Alignment: reward models, preference optimisation (DPO, IPO) and reinforcement learning
from a reward (PPO, GRPO), each an objective of the one training loop.

    scores = score("runs/reward", ["a reply", "another"])   # a reward model's scores
    result = fit_dpo(cfg, "runs/dpo", open_preference(cfg, PreferenceDataConfig("builtin")))
"""

from llmjax.align.preference import (
    check_same_tokenizer,
    fit_dpo,
    fit_reward,
    open_preference,
    preference_config,
    reference_logps,
    reference_policy,
)
from llmjax.align.score import check_scorer, last_token_values, score, score_tokens

__all__ = [
    "check_same_tokenizer",
    "check_scorer",
    "fit_dpo",
    "fit_reward",
    "last_token_values",
    "open_preference",
    "preference_config",
    "reference_logps",
    "reference_policy",
    "score",
    "score_tokens",
]
