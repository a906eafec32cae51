"""Training objectives, registered by name (`train.objective`), and the losses they use.

Adding one is one file: a frozen dataclass subclass of `Objective` under
`@register_objective("name")` (see `lm.py`, the next-token objective).
"""

from llmjax.objectives import grpo as _grpo  # noqa: F401  (registers "grpo")
from llmjax.objectives import lm as _lm  # noqa: F401  (registers "lm")
from llmjax.objectives import ppo as _ppo  # noqa: F401  (registers "ppo")
from llmjax.objectives import sft as _sft  # noqa: F401  (registers "sft")
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
from llmjax.objectives.lm import NextToken, batch_tokens
from llmjax.objectives.losses import bits_per_byte, cross_entropy, perplexity, token_log_probs
from llmjax.objectives.sft import Supervised, per_example_sums

__all__ = [
    "OBJECTIVES",
    "Batch",
    "Forward",
    "Metrics",
    "NextToken",
    "Objective",
    "Supervised",
    "batch_tokens",
    "bits_per_byte",
    "build_objective",
    "check_batch",
    "cross_entropy",
    "per_example_sums",
    "perplexity",
    "register_objective",
    "token_log_probs",
]
