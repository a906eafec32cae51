"""Attention kernels: a reference, registered variants, and structured masks.

Add a variant by writing one file with a function of the reference's signature, decorated with
`@register_attention("name")`, and importing it here (or anywhere before the model is built).
"""

# Importing a variant's module registers it.
from llmjax.attention import (  # noqa: F401
    auto,
    block_sparse,
    flash,
    linear,
    sliding_window,
    xla,
)
from llmjax.attention.core import ATTENTION, reference_attention, register_attention
from llmjax.attention.masks import Mask
from llmjax.attention.support import UnsupportedMask

__all__ = ["ATTENTION", "Mask", "UnsupportedMask", "reference_attention", "register_attention"]
