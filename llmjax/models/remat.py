"""Rematerialization policies by name: what a layer keeps for the backward pass.

`none` keeps everything (fastest, most memory); `full` keeps only the layer input and recomputes
the rest; the others keep the results of some matmuls or of tensors tagged with
`jax.ad_checkpoint.checkpoint_name` inside the layers. `auto` (the default) picks one of these
for the platform and the input's shape as the model is traced, and logs what it picked.
"""

import logging

import jax
import jax.numpy as jnp

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

# `auto`: chosen per call from the platform and the layer's activation size (`choose`).
REMAT_POLICIES.register("auto")(None)

# Measured at nanoGPT's medium shape (6 layers, d=384, T=256, batch 64, ~650 MB of activations
# per layer) on a 2-core CPU: dots_no_batch 1.3-1.4x faster than keeping everything, which
# moves 7.4 GB of temporaries per step; at the nano shape (~9 MB per layer) keeping everything
# is fastest. Below this many bytes per layer the CPU keeps everything.
CPU_REMAT_FROM_BYTES = 64 * 2**20
# On an accelerator everything is kept while the stack's activations fit in this share of the
# device's memory, then dots_no_batch, then full.
DEVICE_MEMORY_SHARE = 0.5
_said: set[tuple] = set()
logger = logging.getLogger("llmjax.models")


def layer_activation_bytes(cfg, batch: int, length: int) -> int:
    """Bytes one layer keeps for its backward pass with nothing recomputed: about ten [B, T, D]
    tensors (norms, q/k/v, attention output, residuals), three [B, T, d_ff] (MLP hidden before
    and after the activation, gated or not) and the attention logits and probabilities
    [B, H, T, T], in the compute dtype."""
    itemsize = jnp.dtype(cfg.dtype).itemsize
    per_token = 10 * cfg.d_model + 3 * cfg.ffn_dim
    return itemsize * batch * length * (per_token + 2 * cfg.n_heads * length)


def choose(cfg, batch: int, length: int) -> str:
    """The remat policy `auto` stands for at this input shape, logged once per shape (logger
    `llmjax.models`, INFO): on a CPU, `none` for small layers and `dots_no_batch` from
    CPU_REMAT_FROM_BYTES per layer; on a GPU or TPU, `none` while the activations fit in
    DEVICE_MEMORY_SHARE of the device's memory, else `dots_no_batch` or `full`."""
    per_layer = layer_activation_bytes(cfg, batch, length)
    backend = jax.default_backend()
    if backend == "cpu":
        policy = "dots_no_batch" if per_layer >= CPU_REMAT_FROM_BYTES else "none"
        why = f"{per_layer / 2**20:.0f} MiB of activations per layer on the CPU"
    else:
        budget = _device_memory() * DEVICE_MEMORY_SHARE
        stack = per_layer * cfg.n_layers
        # dots_no_batch keeps roughly the [B, T, D] and [B, T, d_ff] matmul outputs
        policy = "none" if not budget or stack <= budget else (
            "dots_no_batch" if stack / 3 <= budget else "full")  # fmt: skip
        why = f"{stack / 2**30:.2f} GiB of activations for {budget / 2**30:.1f} GiB"
    key = (policy, backend, batch, length, cfg.d_model, cfg.n_layers)
    if key not in _said:
        _said.add(key)
        logger.info("model.remat=auto chose %s (%s, batch %d x %d tokens)", policy, why,
                    batch, length)  # fmt: skip
    return policy


def _device_memory() -> float:
    """The first device's memory in bytes, 0 where the backend does not say."""
    try:
        stats = jax.local_devices()[0].memory_stats() or {}
    except Exception:  # some backends have no memory_stats
        return 0.0
    return float(stats.get("bytes_limit", 0))
