"""Dimension glossary and array type aliases used across llmjax.

Einsum subscripts and shape-suffixed names use these letters:

    B  batch                 T  query length          S  key/value length
    D  model width           N  query heads           K  key/value heads
    G  query heads per kv    H  head dim              F  MLP hidden width
    V  vocabulary (padded)   L  layers

`q_BxTxNxH` is a query tensor of shape (batch, length, heads, head_dim).
"""

from typing import Any, TypeAlias

import jax
from jaxtyping import Array, Bool, Float, Int

PyTree: TypeAlias = Any
Params: TypeAlias = dict[str, Any]
PRNGKey: TypeAlias = jax.Array

Tokens = Int[Array, "B T"]
Positions = Int[Array, "B T"]
Hidden = Float[Array, "B T D"]
Logits = Float[Array, "B T V"]
Query = Float[Array, "B T N H"]
KeyValue = Float[Array, "B S K H"]
AttnOut = Float[Array, "B T N H"]

__all__ = [
    "Array",
    "AttnOut",
    "Bool",
    "Float",
    "Hidden",
    "Int",
    "KeyValue",
    "Logits",
    "PRNGKey",
    "Params",
    "Positions",
    "PyTree",
    "Query",
    "Tokens",
]
