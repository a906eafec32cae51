"""One transformer layer (`Block`): attention then MLP or mixture of experts, each with its
norm placement, dropout and residual, wrapped in `nn.remat` by policy (`block_class`).

It returns what is per layer in and out of a call, so a scan over layers stacks it: the
updated KV cache, the attention probabilities [B, N, T, S] (when asked) and a
mixture-of-experts layer's routing stats.
"""

from typing import TYPE_CHECKING

import flax.linen as nn
import jax
from jax.ad_checkpoint import checkpoint_name

from llmjax.attention import Mask
from llmjax.layers.common import constrain
from llmjax.layers.kv_cache import LayerKV
from llmjax.layers.mlp import MLPS
from llmjax.layers.moe import MoEMLP
from llmjax.layers.norms import NORMS
from llmjax.layers.self_attention import SelfAttention
from llmjax.layers.state_cache import LayerState
from llmjax.models.remat import REMAT_POLICIES, choose

if TYPE_CHECKING:
    from llmjax.config import ModelConfig


ACTIVATION = ("batch", "length", "embed")


class Block(nn.Module):
    """One transformer layer: attention then MLP (a mixture of experts when `moe`), each with
    norm, dropout and residual."""

    cfg: "ModelConfig"
    deterministic: bool = True
    return_attention: bool = False
    moe: bool = False

    @nn.compact
    def __call__(
        self,
        x_BxTxD: jax.Array,
        mask: Mask,
        kv: LayerKV | LayerState | None = None,
        start=None,
        head_mask_N: jax.Array | None = None,
        layer: int | jax.Array | None = None,
    ) -> tuple[jax.Array, tuple[LayerKV | LayerState | None, jax.Array | None, dict | None]]:
        """(output, (updated kv, attention probabilities [B, N, T, S] or None, MoE routing
        stats or None)): the second item is what a scan over layers stacks. `layer` (this
        layer's index, traced inside a scan) says whether a local/global model's layer is
        local."""
        cfg = self.cfg
        local = None
        if cfg.global_every is not None:
            local = (layer + 1) % cfg.global_every != 0
        norm = NORMS.get(cfg.norm)
        drop = nn.Dropout(cfg.dropout, deterministic=self.deterministic)

        def sublayer(x, fn, name):
            # pre:  x + f(norm(x))       post: norm(x + f(x))
            # sandwich: x + post_norm(f(norm(x)))    post_branch: x + post_norm(f(x))
            # without residual connections the "x +" is dropped in every placement.
            def norm_as(suffix):
                return norm(cfg, deterministic=self.deterministic, name=f"{name}_{suffix}")

            position = cfg.norm_position
            if position == "post":
                y = drop(fn(x))
                y = x + y if cfg.residual else y
                return norm_as("norm")(y)
            y = fn(norm_as("norm")(x) if position in ("pre", "sandwich") else x)
            if position in ("sandwich", "post_branch"):
                y = norm_as("post_norm")(y)
            y = drop(y)
            return x + y if cfg.residual else y

        attention = SelfAttention(cfg, name="attention")
        probs = moe_stats = None
        if self.moe:
            experts = MoEMLP(cfg, name="mlp")

            def mlp(h):
                nonlocal moe_stats
                y, moe_stats = experts(h)
                return y
        else:
            mlp = MLPS.get(cfg.mlp)(cfg, name="mlp")

        def attend(h):
            nonlocal kv, probs
            y, kv, probs = attention(
                h, mask, kv, start, head_mask_N, return_probs=self.return_attention, local=local
            )
            return y

        def feed_forward(h):
            return checkpoint_name(mlp(h), "mlp_out")

        if cfg.parallel_block:  # x + attn(norm1(x)) + mlp(norm2(x))
            x_norm = norm(cfg, deterministic=self.deterministic, name="attention_norm")(x_BxTxD)
            y = drop(attend(x_norm))
            x_norm = norm(cfg, deterministic=self.deterministic, name="mlp_norm")(x_BxTxD)
            y = y + drop(feed_forward(x_norm))
            x_BxTxD = x_BxTxD + y if cfg.residual else y
            return constrain(x_BxTxD, ACTIVATION), (kv, probs, moe_stats)
        x_BxTxD = sublayer(x_BxTxD, attend, "attention")
        x_BxTxD = constrain(x_BxTxD, ACTIVATION)
        x_BxTxD = sublayer(x_BxTxD, feed_forward, "mlp")
        return constrain(x_BxTxD, ACTIVATION), (kv, probs, moe_stats)


def block_class(
    cfg: "ModelConfig", batch: int | None = None, length: int | None = None
) -> type[nn.Module]:
    """Block, wrapped in `nn.remat` by cfg.remat; `auto` chooses by platform and the input's
    [batch, length] (None: decoding with a cache, where nothing is differentiated: none)."""
    name = cfg.remat
    if name == "auto":
        name = "none" if batch is None or length is None else choose(cfg, batch, length)
    if name == "none":
        return Block
    # Inside a rolled scan the loop itself keeps XLA from merging recomputation away
    # (prevent_cse off is faster there); unrolled layers need the barrier.
    rolled = cfg.scan_layers and cfg.scan_unroll == 1
    return nn.remat(Block, policy=REMAT_POLICIES.get(name), prevent_cse=not rolled)
