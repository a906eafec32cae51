"""How an attention variant decodes: over a key/value cache, or with a recurrent state.

A variant is a function of the reference's signature. Decoding asks it one of two things,
read from optional attributes of that function (so a variant made by a factory, or written in a
notebook, carries its decoding with it):

- `fn.over_cache(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask, *, alibi_slopes, scale)`: attention of
  T new queries over the S slots of a KV cache, where `mask` has the cache's positions and
  validity (queries and keys are then different sequences). Default: `fn` itself.
  Like `fn`, it is given `logit_softcap=...` only when the model caps its logits.
- `fn.recurrent`: a `Recurrence`. The variant then decodes with a fixed-size state instead of
  a KV cache (O(1) memory and time per token), e.g. linear attention's running sums.
"""

from collections.abc import Callable
from typing import Any, Protocol

from llmjax.attention.masks import Mask
from llmjax.typing import Array, Float, PyTree


class UnsupportedCache(ValueError):
    """An attention variant cannot decode with the requested kind of cache."""


class Recurrence(Protocol):
    """Decoding by a state that summarizes every past token."""

    def init(self, batch: int, n_kv: int, head_dim: int) -> PyTree:
        """The state before any token."""

    def extend(
        self,
        state: PyTree,
        q_BxTxNxH: Float[Array, "B T N H"],
        k_BxTxKxH: Float[Array, "B T K H"],
        v_BxTxKxH: Float[Array, "B T K H"],
        mask: Mask,
        *,
        alibi_slopes: Float[Array, " N"] | None = None,
        scale: float | None = None,
        logit_softcap: float | None = None,
    ) -> tuple[Float[Array, "B T N H"], PyTree]:
        """T new tokens continue the state: each query attends to the state and to the new
        keys up to its own (causal in index order, mask.kv_valid excluding padding); returns
        (outputs, state after the T tokens)."""


def over_cache(attend: Callable) -> Callable:
    """The function that attends new queries over a KV cache for this variant."""
    return getattr(attend, "over_cache", attend)


def recurrence(attend: Callable) -> Any | None:
    """The variant's `Recurrence`, or None when it decodes with a KV cache."""
    return getattr(attend, "recurrent", None)
