"""What every model family's forward pass returns: one pytree with optional fields."""

from __future__ import annotations

from typing import Any

import flax.struct

from llmjax.typing import Array, Float


@flax.struct.dataclass
class ModelOutput:
    """Logits, and what a call asked for besides: hidden states, the updated decoding state.

    - `logits`: float32 [B, T, V] next-token logits (V the padded vocabulary); [B, K, V] when
      the call asked for K positions only (`logits_at`).
    - `hidden`: the final hidden states [B, T, D] (after the final norm, what the logits are
      read from), only with `return_hidden=True`; else None.
    - `cache`: the updated decoding state when the call was given one (`cache=...`); else None.
    - `aux`: optional extras by name, empty unless a family or a call fills it: the place for
      per-layer attention probabilities kept for analysis, or a mixture of experts'
      load-balancing loss.
    """

    logits: Float[Array, "B T V"]
    hidden: Float[Array, "B T D"] | None = None
    cache: Any = None  # the family's DecodingState (llmjax.models.family)
    aux: dict[str, Any] = flax.struct.field(default_factory=dict)
