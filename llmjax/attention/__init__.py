"""Attention kernels: a reference, registered variants, and structured masks.

Registered: reference and xla (plain softmax), flash (exact, O(T) memory), sliding_window and
block_sparse (exact under their sparsity, O(T) cost), linear and linear_favor (kernel feature
maps, O(T) cost, a recurrent form for decoding), auto (a fused backend kernel where one applies).
All but linear and linear_favor serve a logit soft cap (`logit_softcap`, Gemma 2);
`attention_probabilities` is the reference's softmax itself, for analysis.

Add a variant by writing one file with a function of the reference's signature, decorated with
`@register_attention("name")`, and importing it here (or anywhere before the model is built).
How a variant decodes (over a KV cache, or with a recurrent state): `decoding.py`.
"""

# Importing a variant's module registers it.
from llmjax.attention import (  # noqa: F401
    auto,
    block_sparse,
    flash,
    linear,
    sliding_window,
    splash,
    xla,
)
from llmjax.attention.core import (
    ATTENTION,
    attention_probabilities,
    reference_attention,
    register_attention,
)
from llmjax.attention.decoding import UnsupportedCache
from llmjax.attention.masks import Mask
from llmjax.attention.support import UnsupportedMask

__all__ = [
    "ATTENTION",
    "Mask",
    "UnsupportedCache",
    "UnsupportedMask",
    "attention_probabilities",
    "reference_attention",
    "register_attention",
]
