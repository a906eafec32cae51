"""What every model family's forward pass returns: one pytree with optional fields."""

from __future__ import annotations

from typing import Any

import flax.struct

from llmjax.typing import Array, Float


@flax.struct.dataclass
class ModelOutput:
    """Logits, and what a call asked for besides: hidden states, the updated decoding state,
    attention probabilities.

    - `logits`: float32 [B, T, V] next-token logits (V the padded vocabulary); [B, K, V] when
      the call asked for K positions only (`logits_at`).
    - `hidden`: the final hidden states [B, T, D] (after the final norm, what the logits are
      read from), only with `return_hidden=True`; else None.
    - `cache`: the updated decoding state when the call was given one (`cache=...`); else None.
    - `aux`: optional extras by name, empty unless a family or a call fills it: e.g. the
      value head's scores, or a mixture of experts' load-balancing loss.
    - `attention`: float32 [L, B, N, T, S] attention probabilities of every layer and query
      head (S: the keys, the cache's slots when decoding), only with `return_attention=True`;
      else None. Rows sum to 1 over the keys a query sees and are 0 on the others.
    """

    logits: Float[Array, "B T V"]
    hidden: Float[Array, "B T D"] | None = None
    cache: Any = None  # the family's DecodingState (llmjax.models.family)
    aux: dict[str, Any] = flax.struct.field(default_factory=dict)
    attention: Float[Array, "L B N T S"] | None = None
