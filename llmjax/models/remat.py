"""Rematerialization policies by name: what a layer keeps for the backward pass.

`none` keeps everything (fastest, most memory); `full` keeps only the layer input and recomputes
the rest; the others keep the results of some matmuls or of tensors tagged with
`jax.ad_checkpoint.checkpoint_name` inside the layers.
"""

import jax

from llmjax.registry import Registry

REMAT_POLICIES: Registry = Registry("remat policy")

# Tags placed on activations by the layers (see layers/self_attention.py and models/).
CHECKPOINT_NAMES = ("attention_out", "mlp_out", "qkv")

REMAT_POLICIES.register("none")(None)
REMAT_POLICIES.register("full")(jax.checkpoint_policies.nothing_saveable)
REMAT_POLICIES.register("dots")(jax.checkpoint_policies.dots_saveable)
REMAT_POLICIES.register("dots_no_batch")(jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
REMAT_POLICIES.register("save_attention")(
    jax.checkpoint_policies.save_only_these_names("attention_out")
)
REMAT_POLICIES.register("save_qkv_attention")(
    jax.checkpoint_policies.save_only_these_names("qkv", "attention_out")
)
