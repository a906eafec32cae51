"""Alignment: reward models, preference optimisation (DPO, IPO) and reinforcement learning
from a reward (PPO, GRPO), each an objective of the one training loop.

    scores = score("runs/reward", ["a reply", "another"])   # a reward model's scores
    result = fit_dpo(cfg, "runs/dpo", open_preference(cfg, PreferenceDataConfig("builtin")))
    cfg = rl_config("ppo", init_from="runs/sft", overrides=["train.steps=40"])
    result = fit_ppo(cfg, "runs/ppo", prompts=[...], reward_fn=arith_reward)
"""

from llmjax.align.advantages import KLController, gae, group_advantages, kl_estimate
from llmjax.align.evaluate import Samples, sample_replies, win_rate
from llmjax.align.preference import (
    check_same_tokenizer,
    fit_dpo,
    fit_reward,
    open_preference,
    preference_config,
    reference_logps,
    reference_policy,
)
from llmjax.align.rewards import (
    RewardError,
    RewardModel,
    arith_prompts,
    arith_reward,
    count_reward,
    parse_reward,
)
from llmjax.align.rl import check_rl, fit_grpo, fit_ppo, fit_rl, rl_config
from llmjax.align.rollout import PromptSet, make_rollout
from llmjax.align.score import check_scorer, last_token_values, score, score_tokens

__all__ = [
    "KLController",
    "PromptSet",
    "RewardError",
    "RewardModel",
    "Samples",
    "arith_prompts",
    "arith_reward",
    "check_rl",
    "check_same_tokenizer",
    "check_scorer",
    "count_reward",
    "fit_dpo",
    "fit_grpo",
    "fit_ppo",
    "fit_reward",
    "fit_rl",
    "gae",
    "group_advantages",
    "kl_estimate",
    "last_token_values",
    "make_rollout",
    "open_preference",
    "parse_reward",
    "preference_config",
    "reference_logps",
    "reference_policy",
    "rl_config",
    "sample_replies",
    "score",
    "score_tokens",
    "win_rate",
]
