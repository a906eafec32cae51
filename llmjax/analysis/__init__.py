"""Measurements of trained models: what attention heads do and what each is worth to the loss
(attention), what a position's loss depends on (leakage), and token representations and
gradients layer by layer (representations).

out = model.apply(variables, tokens, return_attention=True)   # out.attention [L, B, N, T, T]
llmjax.analysis.induction_score(out.attention, tokens)        # [L, N]
llmjax.analysis.head_ablation_losses(model, variables, batch)  # [L, N] loss increase
"""

from llmjax.analysis.attention import (
    head_ablation_losses,
    head_entropy,
    induction_score,
    induction_targets,
    positional_profile,
    previous_token_score,
    repeated_tokens,
)

__all__ = [
    "head_ablation_losses",
    "head_entropy",
    "induction_score",
    "induction_targets",
    "positional_profile",
    "previous_token_score",
    "repeated_tokens",
]
