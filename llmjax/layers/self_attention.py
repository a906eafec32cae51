"""Multi-head self-attention projections around a registered attention kernel (MHA/GQA/MQA)."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from llmjax.attention import ATTENTION, Mask
from llmjax.attention.core import attention_probabilities, max_attention_logit, softcap_option
from llmjax.config.model import RopeScaling
from llmjax.layers.common import constrain, dtype_of, normal, out_std, param
from llmjax.layers.kv_cache import LayerKV
from llmjax.layers.lora import project as adapted_contract
from llmjax.layers.norms import head_rmsnorm
from llmjax.layers.positions import POSITIONS
from llmjax.layers.state_cache import LayerState
from llmjax.typing import Array, Bool, Float


def by_layer_kind(local, on_local, on_global, *operands):
    """on_local(*operands) in a local layer, on_global(*operands) in a global one: chosen in
    Python when `local` is known (an unrolled stack), by lax.cond when the scan traces it."""
    if isinstance(local, bool):
        return (on_local if local else on_global)(*operands)
    return jax.lax.cond(local, on_local, on_global, *operands)


class SelfAttention(nn.Module):
    """q, k, v projections, QK-norm, position rotation, the configured kernel (with the logit
    soft cap), head mask, output projection."""

    cfg: object

    @nn.compact
    def __call__(
        self,
        x_BxTxD: jax.Array,
        mask: Mask,
        kv: LayerKV | LayerState | None = None,
        start=None,
        head_mask_N: Float[Array, " N"] | None = None,
        *,
        return_probs: bool = False,
        local: bool | Bool[Array, ""] | None = None,
    ) -> tuple[jax.Array, LayerKV | LayerState | None, Float[Array, "B N T S"] | None]:
        """Returns (output, updated kv, probabilities).

        With a layer cache `kv`, the new keys/values are written from slot `start` on and the
        queries attend over the whole cache (`mask` then describes the cache), or, for a
        recurrent variant, continue its state; without one the kv returned is None.
        `head_mask_N` scales each head's output before the output projection (1 keeps, 0
        ablates the head; None: no scaling). With `return_probs` the probabilities are the
        reference softmax of this layer's queries and keys under `mask`, ALiBi and the cap,
        float32 [B, N, T, S] (S: the cache's slots when decoding), whatever kernel computed the
        output: the same numbers for the softmax variants; for block_sparse (whose pattern is
        not in the mask) and linear attention (not a softmax), the dense softmax they stand in
        for. Else None. `local` (a local/global model, cfg.global_every): whether this layer
        attends within cfg.attention_window, with its own RoPE base (cfg.rope_local_theta);
        None: the layer is as the mask and cfg say."""
        cfg = self.cfg
        D, N, K, H = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dim_head
        dtype = dtype_of(cfg.dtype)
        std = cfg.init_std

        def project(name: str, heads: int, axes: tuple[str, str, str]) -> jax.Array:
            w_DxNxH = param(
                self, f"{name}_kernel", (D, heads, H), axes, normal(std), cfg.param_dtype
            )
            y_BxTxNxH = adapted_contract(
                self,
                f"{name}_kernel",
                x_BxTxD.astype(dtype),
                w_DxNxH.astype(dtype),
                dims=1,
                axes=axes,
                cfg=cfg,
            )
            if cfg.has_qkv_bias:
                b_NxH = param(
                    self,
                    f"{name}_bias",
                    (heads, H),
                    axes[1:],
                    nn.initializers.zeros,
                    cfg.param_dtype,
                )
                y_BxTxNxH = y_BxTxNxH + b_NxH.astype(dtype)
            return y_BxTxNxH

        q_BxTxNxH = project("query", N, ("embed", "heads", "head_dim"))
        k_BxTxKxH = project("key", K, ("embed", "kv_heads", "head_dim"))
        v_BxTxKxH = project("value", K, ("embed", "kv_heads", "head_dim"))
        # QK-norm before RoPE, as OLMo 2 and Gemma 3 order them: the learned per-dim scale does
        # not commute with the rotation, so the order is part of the architecture.
        if cfg.qk_norm:
            q_BxTxNxH = head_rmsnorm(cfg, name="query_norm")(q_BxTxNxH)
            k_BxTxKxH = head_rmsnorm(cfg, name="key_norm", heads="kv_heads")(k_BxTxKxH)

        position = POSITIONS.get(cfg.position)
        if position.rotate is not None:
            # With a cache the mask's kv positions are the cache's; the new keys sit at the
            # new queries' positions.
            k_positions = mask.kv_positions if kv is None else mask.q_positions

            def rotate(rope_cfg):
                def both(q, k):
                    return (
                        position.rotate(q, mask.q_positions, rope_cfg),
                        position.rotate(k, k_positions, rope_cfg),
                    )

                return both

            if local is not None and cfg.rope_local_theta is not None:
                local_cfg = dataclasses.replace(
                    cfg, rope_theta=cfg.rope_local_theta, rope_scaling=RopeScaling()
                )
                q_BxTxNxH, k_BxTxKxH = by_layer_kind(
                    local, rotate(local_cfg), rotate(cfg), q_BxTxNxH, k_BxTxKxH
                )
            else:
                q_BxTxNxH, k_BxTxKxH = rotate(cfg)(q_BxTxNxH, k_BxTxKxH)
        if cfg.attn_scale_dim is not None:
            # The kernels scale logits by head_dim ** -0.5; this makes it attn_scale_dim ** -0.5.
            q_BxTxNxH = q_BxTxNxH * jnp.asarray((H / cfg.attn_scale_dim) ** 0.5, q_BxTxNxH.dtype)
        q_BxTxNxH = constrain(
            checkpoint_name(q_BxTxNxH, "qkv"), ("batch", "length", "heads", "head_dim")
        )
        k_BxTxKxH = constrain(
            checkpoint_name(k_BxTxKxH, "qkv"), ("batch", "length", "kv_heads", "head_dim")
        )
        v_BxTxKxH = constrain(
            checkpoint_name(v_BxTxKxH, "qkv"), ("batch", "length", "kv_heads", "head_dim")
        )

        if kv is None and self.is_mutable_collection("intermediates"):
            # Only when asked (a mutable "intermediates"), so a plain apply computes nothing
            # more: the largest logit this layer's softmax sees, before the soft cap.
            self.sow("intermediates", "max_attention_logit",
                     max_attention_logit(q_BxTxNxH, k_BxTxKxH, mask))  # fmt: skip

        slopes = None if position.slopes is None else position.slopes(cfg)
        cap = cfg.attn_logit_softcap

        def attend_with(mask):
            def attend(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, kv):
                if kv is None:
                    kernel = ATTENTION.get(cfg.attention)
                    out = kernel(
                        q_BxTxNxH,
                        k_BxTxKxH,
                        v_BxTxKxH,
                        mask,
                        alibi_slopes=slopes,
                        **softcap_option(cap),
                    )
                    return out, kv
                # a KV cache or a recurrent state, each attending as the variant says
                return kv.attend(
                    cfg.attention,
                    q_BxTxNxH,
                    k_BxTxKxH,
                    v_BxTxKxH,
                    mask,
                    start,
                    alibi_slopes=slopes,
                    logit_softcap=cap,
                )

            return attend

        # A local layer of a local/global model narrows the (global) mask to its window.
        local_mask = mask
        if local is not None:
            local_mask = mask.replace(window=cfg.attention_window)
        out_BxTxNxH, kv = by_layer_kind(
            True if local is None else local,
            attend_with(local_mask),
            attend_with(mask),
            q_BxTxNxH,
            k_BxTxKxH,
            v_BxTxKxH,
            kv,
        )
        out_BxTxNxH = constrain(
            checkpoint_name(out_BxTxNxH, "attention_out"), ("batch", "length", "heads", "head_dim")
        )
        if head_mask_N is not None:
            out_BxTxNxH = out_BxTxNxH * head_mask_N.astype(out_BxTxNxH.dtype)[:, None]
        probs_BxNxTxS = None
        if return_probs:
            if isinstance(kv, LayerState):
                raise ValueError(
                    f"attention variant {cfg.attention!r} decodes with a recurrent state that "
                    f"keeps no keys, so there are no attention probabilities over the past; "
                    f"ask for them in a call without a cache"
                )
            keys_BxSxKxH = k_BxTxKxH if kv is None else kv.keys()

            def probs_with(mask):
                return lambda q, k: attention_probabilities(
                    q, k, mask, alibi_slopes=slopes, logit_softcap=cap
                )

            probs_BxNxTxS = by_layer_kind(
                True if local is None else local,
                probs_with(local_mask),
                probs_with(mask),
                q_BxTxNxH,
                keys_BxSxKxH,
            )

        out_axes = ("heads", "head_dim", "embed")
        w_NxHxD = param(
            self, "out_kernel", (N, H, D), out_axes, normal(out_std(cfg)), cfg.param_dtype
        )
        y_BxTxD = adapted_contract(
            self,
            "out_kernel",
            out_BxTxNxH.astype(dtype),
            w_NxHxD.astype(dtype),
            dims=2,
            axes=out_axes,
            cfg=cfg,
        )
        if cfg.has_out_bias:
            b_D = param(self, "out_bias", (D,), ("embed",), nn.initializers.zeros, cfg.param_dtype)
            y_BxTxD = y_BxTxD + b_D.astype(dtype)
        return y_BxTxD, kv, probs_BxNxTxS
