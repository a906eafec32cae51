"""Attention kernels: a reference, registered variants, and structured masks.

Add a variant by writing one file with a function of the reference's signature, decorated with
`@register_attention("name")`, and importing it here (or anywhere before the model is built).
"""

from llmjax.attention import xla  # noqa: F401  (registers "xla")
from llmjax.attention.core import ATTENTION, reference_attention, register_attention
from llmjax.attention.masks import Mask

__all__ = ["ATTENTION", "Mask", "reference_attention", "register_attention"]
