"""Training objectives, registered by name (`train.objective`), and the losses they use.

Adding one is one file: a frozen dataclass subclass of `Objective` under
`@register_objective("name")` (see `lm.py`, the next-token objective).
"""

from llmjax.objectives import dpo as _dpo  # noqa: F401  (registers "dpo")
from llmjax.objectives import grpo as _grpo  # noqa: F401  (registers "grpo")
from llmjax.objectives import lm as _lm  # noqa: F401  (registers "lm")
from llmjax.objectives import ppo as _ppo  # noqa: F401  (registers "ppo")
from llmjax.objectives import reward as _reward  # noqa: F401  (registers "reward")
from llmjax.objectives import sft as _sft  # noqa: F401  (registers "sft")
from llmjax.objectives import token_losses as _token_losses  # noqa: F401  (brier, focal)
from llmjax.objectives.base import (
    OBJECTIVES,
    Batch,
    Forward,
    Metrics,
    Objective,
    build_objective,
    check_batch,
    register_objective,
)
from llmjax.objectives.dpo import DirectPreference, dpo_loss, ipo_loss, sequence_log_probs
from llmjax.objectives.lm import NextToken, batch_tokens
from llmjax.objectives.losses import bits_per_byte, cross_entropy, perplexity, token_log_probs
from llmjax.objectives.reward import Pairwise, RewardModel, bradley_terry_loss, reply_ends
from llmjax.objectives.sft import Supervised, per_example_sums

__all__ = [
    "OBJECTIVES",
    "Batch",
    "DirectPreference",
    "Forward",
    "Metrics",
    "NextToken",
    "Objective",
    "Pairwise",
    "RewardModel",
    "Supervised",
    "batch_tokens",
    "bits_per_byte",
    "bradley_terry_loss",
    "build_objective",
    "check_batch",
    "cross_entropy",
    "dpo_loss",
    "ipo_loss",
    "per_example_sums",
    "perplexity",
    "register_objective",
    "reply_ends",
    "sequence_log_probs",
    "token_log_probs",
]
