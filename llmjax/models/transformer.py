"""A generic decoder-only transformer whose parts are chosen by `ModelConfig`.

Layers are stacked with `nn.scan` (one compiled layer, params with a leading `layers` axis) or
unrolled in a Python loop (params `blocks_0`, `blocks_1`, ...); `stack_layer_params` and
`unstack_layer_params` convert between the two layouts. Either way the layer can be wrapped in
`nn.remat` with a policy chosen by name.

What is per layer in and out of a call travels the same way in both layouts: a head mask
[L, N] is scanned over (layer l gets row l), and each layer's attention probabilities are its
output, stacked by the scan (or by the loop) to [L, B, N, T, S]. Returned values rather than
`sow`n intermediates, so a plain `apply` under jit gets them, with no mutable collection. A
mixture-of-experts layer's routing stats (balance and z-losses, expert load) come out the
same way and become `ModelOutput.aux` "loss", "metrics" and "moe_load" (llmjax.layers.moe).
"""

import functools
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmjax.attention import ATTENTION, Mask
from llmjax.attention.core import softcap
from llmjax.attention.decoding import UnsupportedCache, recurrence
from llmjax.config.model import GATED_MLPS
from llmjax.errors import ConfigError
from llmjax.layers.common import constrain, dtype_of, normal
from llmjax.layers.embeddings import Embedder
from llmjax.layers.grouped import GROUPED
from llmjax.layers.kv_cache import KVCache, init_kv_cache
from llmjax.layers.mlp import MLPS
from llmjax.layers.moe import EXPERT_MLPS, ROUTERS, moe_outputs
from llmjax.layers.norms import NORMS
from llmjax.layers.positions import POSITIONS, ROPE_SCALING_CHECKS, ROPE_SCALINGS
from llmjax.layers.state_cache import StateCache, init_state_cache
from llmjax.models.block import ACTIVATION, block_class
from llmjax.models.family import DecodingLimits
from llmjax.models.output import ModelOutput
from llmjax.models.remat import REMAT_POLICIES
from llmjax.typing import Array, Float, Int

if TYPE_CHECKING:
    from llmjax.config import ModelConfig

# Logit of padded vocabulary rows: never sampled, and finite so p * log p stays 0.
PADDED_LOGIT = -1e9


def value_head(cfg: "ModelConfig", x_BxTxD: jax.Array) -> jax.Array:
    """The scalar head on the final hidden states: [B, T] float32 (zero-initialized kernel, so
    a new head scores every token 0)."""
    head = nn.Dense(
        1,
        dtype=jnp.float32,
        param_dtype=dtype_of(cfg.param_dtype),
        kernel_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed", None)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
        name="value_head",
    )
    return head(x_BxTxD.astype(jnp.float32))[..., 0]


class Decoder(nn.Module):
    """Token ids in, a `ModelOutput` with next-token logits (float32) out.

    With a `cache` (llmjax.layers.kv_cache.KVCache, or a StateCache for recurrent variants) the
    tokens continue the cached ones: their keys/values are written to the cache, positions
    default to each row's next positions (negative positions mark padding), and the output
    carries the updated cache. `return_attention=True` adds every layer's attention
    probabilities (`ModelOutput.attention`, llmjax.layers.self_attention.SelfAttention says how
    they are computed); `head_mask` [L, N] scales each head's output before its layer's output
    projection (1 keeps, 0 ablates; None: untouched, as is a mask of ones). The classmethods are
    the model-family protocol (llmjax.models.family).
    """

    cfg: "ModelConfig"
    tree_packing = True  # serves parents_BxT (packed prefixes shared by continuations)

    @nn.compact
    def __call__(
        self,
        tokens_BxT: Int[Array, "B T"],
        positions_BxT: Int[Array, "B T"] | None = None,
        segments_BxT: Int[Array, "B T"] | None = None,
        *,
        deterministic: bool = True,
        return_hidden: bool = False,
        cache: KVCache | StateCache | None = None,
        logits_at: Int[Array, "B K"] | None = None,
        parents_BxT: Int[Array, "B T"] | None = None,
        return_attention: bool = False,
        head_mask: Float[Array, "L N"] | None = None,
    ) -> ModelOutput:
        cfg = self.cfg
        batch, length = tokens_BxT.shape
        if head_mask is not None:
            if jnp.shape(head_mask) != (cfg.n_layers, cfg.n_heads):
                raise ValueError(
                    f"head_mask must be [n_layers, n_heads] = [{cfg.n_layers}, {cfg.n_heads}] "
                    f"(1 keeps a head, 0 ablates it), got shape {jnp.shape(head_mask)}"
                )
            head_mask = jnp.asarray(head_mask, jnp.float32)
        position = POSITIONS.get(cfg.position)
        plain = positions_BxT is None
        start = None
        if cache is not None:
            if segments_BxT is not None or parents_BxT is not None:
                raise ValueError(
                    "segments (packed documents) cannot be combined with a cache; give each "
                    "sequence its own row"
                )
            if plain:
                positions_BxT = cache.default_positions(length)
            cache, mask, positions_BxT, start = cache.append(positions_BxT)
        else:
            if plain:
                if not position.extrapolates and length > cfg.max_seq_len:
                    raise ValueError(
                        f"sequence length {length} is longer than the learned position table "
                        f"(max_seq_len={cfg.max_seq_len}); truncate the input or train a model "
                        f"with a larger max_seq_len (or a position scheme that extrapolates, "
                        f"e.g. rope)"
                    )
                positions_BxT = jnp.broadcast_to(
                    jnp.arange(length, dtype=jnp.int32), (batch, length)
                )
            mask = Mask.causal_lm(
                positions_BxT,
                segments_BxT,
                parents_BxT=parents_BxT,
                window=cfg.mask_window,
                plain=plain,
            )

        embedder = Embedder(cfg, name="embed")
        x_BxTxD = embedder.encode(tokens_BxT)
        if cfg.embed_scale:
            x_BxTxD = x_BxTxD * jnp.asarray(cfg.d_model**0.5, x_BxTxD.dtype)
        if position.embedding is not None:
            x_BxTxD = x_BxTxD + position.embedding(cfg, name="pos_embed")(positions_BxT)
        # A zero-valued hook: with the "perturbations" collection passed in, its gradient is
        # d(output)/d(input embeddings) (used by causality tests and saliency experiments).
        x_BxTxD = self.perturb("embeddings", x_BxTxD)
        x_BxTxD = nn.Dropout(cfg.dropout, deterministic=deterministic)(x_BxTxD)
        x_BxTxD = constrain(x_BxTxD, ACTIVATION)

        block = block_class(cfg, *((batch, length) if cache is None else (None, None)))
        layer_ids = jnp.arange(cfg.n_layers, dtype=jnp.int32)  # scanned: each layer its index
        # With a cache each layer also takes its k/v and the shared write slot, and hands back
        # the updated k/v. In the scan layout the stacked cache travels in the scan's carry,
        # each layer writing only its new slots in place.
        scan = dict(
            variable_axes={"params": 0, "batch_stats": 0, "intermediates": 0},
            split_rngs={"params": True, "dropout": True},
            length=cfg.n_layers,
            unroll=min(cfg.scan_unroll, cfg.n_layers),
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        if cfg.scan_layers and cache is None:
            # mask, kv, start, head mask, layer index
            axes = (nn.broadcast, nn.broadcast, nn.broadcast, 0, 0)
            stack = nn.scan(block, in_axes=axes, **scan)
            layer = stack(cfg, deterministic, return_attention, cfg.moe.enabled, name="blocks")
            x_BxTxD, (_, attention, moe_stats) = layer(
                x_BxTxD, mask, None, None, head_mask, layer_ids
            )
        elif cfg.scan_layers:

            def body(layer, carry, xs):
                head_mask_N, i = xs
                x_BxTxD, (kv, probs, stats) = layer(carry[0], mask, carry[1], start, head_mask_N, i)
                return (x_BxTxD, kv.replace(layer=kv.layer + 1)), (probs, stats)

            carry = (x_BxTxD, cache.layers.replace(layer=jnp.zeros((), jnp.int32)))
            stack = nn.scan(body, **scan)
            layer = block(cfg, deterministic, return_attention, cfg.moe.enabled, name="blocks")
            (x_BxTxD, layers), (attention, moe_stats) = stack(layer, carry, (head_mask, layer_ids))
            layers = layers.replace(layer=None)
        else:
            layers, probs_per_layer, stats_per_layer = [], [], []
            for i in range(cfg.n_layers):
                kv_args = (None, None) if cache is None else (cache.layers[i], start)
                head_mask_N = None if head_mask is None else head_mask[i]
                moe = cfg.moe.is_moe_layer(i)
                layer = block(cfg, deterministic, return_attention, moe, name=f"blocks_{i}")
                x_BxTxD, (kv, probs, stats) = layer(x_BxTxD, mask, *kv_args, head_mask_N, i)
                layers.append(kv)
                probs_per_layer.append(probs)
                if moe:
                    stats_per_layer.append(stats)
            layers = tuple(layers)
            attention = jnp.stack(probs_per_layer) if return_attention else None
            moe_stats = None
            if stats_per_layer:
                moe_stats = jax.tree.map(lambda *xs: jnp.stack(xs), *stats_per_layer)

        if cfg.norm_position != "post":
            x_BxTxD = NORMS.get(cfg.norm)(cfg, deterministic=deterministic, name="final_norm")(
                x_BxTxD
            )
        # Only the positions asked for go through the LM head (scoring needs the logits of the
        # target tokens alone; the head is a large share of a small model's FLOPs).
        x_head = x_BxTxD
        if logits_at is not None:
            x_head = jnp.take_along_axis(x_BxTxD, logits_at[..., None].astype(jnp.int32), axis=1)
        if cfg.tie_embeddings:
            logits_BxTxV = embedder.decode(x_head)
        else:
            head = nn.Dense(
                cfg.padded_vocab_size,
                use_bias=False,
                dtype=dtype_of(cfg.dtype),
                param_dtype=dtype_of(cfg.param_dtype),
                kernel_init=nn.with_logical_partitioning(normal(cfg.init_std), ("embed", "vocab")),
                # Logits accumulate and come out in float32 whatever the compute dtype.
                dot_general=functools.partial(
                    jax.lax.dot_general, preferred_element_type=jnp.float32
                ),
                name="lm_head",
            )
            logits_BxTxV = head(x_head)
        logits_BxTxV = logits_BxTxV.astype(jnp.float32)
        if cfg.final_logit_softcap is not None:
            logits_BxTxV = softcap(logits_BxTxV, cfg.final_logit_softcap)
        if cfg.padded_vocab_size > cfg.vocab_size:
            real = jnp.arange(cfg.padded_vocab_size) < cfg.vocab_size
            logits_BxTxV = jnp.where(real, logits_BxTxV, PADDED_LOGIT)
        logits_BxTxV = constrain(logits_BxTxV, ("batch", "length", "vocab"))
        aux = {}
        if moe_stats is not None:
            aux.update(moe_outputs(cfg, moe_stats))
        if cfg.value_head:
            aux["value"] = value_head(cfg, x_BxTxD)
        return ModelOutput(
            logits=logits_BxTxV,
            hidden=x_BxTxD if return_hidden else None,
            cache=None if cache is None else cache.replace(layers=layers),
            aux=aux,
            attention=attention,
        )

    # ------------------------------------------------------------------ the family protocol

    @classmethod
    def check_config(cls, cfg: "ModelConfig") -> None:
        """Every part the config names (mlp, norm, position, attention, remat, RoPE scaling)
        is registered; a ConfigError names the option otherwise."""
        for name, registry in PARTS.items():
            registry.get(getattr(cfg, name), field=f"model.{name}")
        if cfg.moe.enabled:
            ROUTERS.get(cfg.moe.router, field="model.moe.router")
            GROUPED.get(cfg.moe.kernel, field="model.moe.kernel")
            EXPERT_MLPS.get(cfg.mlp, field="model.mlp (of the experts)")
        kind = cfg.rope_scaling.kind
        ROPE_SCALINGS.get(kind, field="model.rope_scaling.kind")
        problem = ROPE_SCALING_CHECKS.get(kind, lambda _: None)(cfg.rope_scaling)
        if problem is not None:
            raise ConfigError(str(problem))

    @classmethod
    def init_cache(
        cls, cfg: "ModelConfig", batch_size: int, length: int, *, rolling: bool = False
    ) -> KVCache | StateCache:
        """A KV cache of `length` slots (`rolling`: the last `length` tokens, for a
        sliding-window model), or for an attention variant with a recurrent state (linear
        attention) a `StateCache`, whose size does not depend on `length`."""
        if batch_size < 1 or length < 1:
            raise ValueError(
                f"cache batch_size and length must be >= 1, got {batch_size}, {length}"
            )
        if recurrence(ATTENTION.get(cfg.attention)) is not None:
            if rolling:
                raise UnsupportedCache(
                    f"attention variant {cfg.attention!r} decodes with a fixed-size recurrent "
                    f"state, so a rolling cache does not apply; use rolling=False"
                )
            return init_state_cache(cfg, batch_size)
        return init_kv_cache(cfg, batch_size, length, rolling=rolling)

    @classmethod
    def decoding_limits(cls, cfg: "ModelConfig") -> DecodingLimits:
        return DecodingLimits(
            window=cfg.mask_window, extrapolates=POSITIONS.get(cfg.position).extrapolates
        )

    @classmethod
    def matmul_params(cls, cfg: "ModelConfig") -> int:
        return matmul_params(cfg)

    @classmethod
    def forward_flops_per_token(
        cls, cfg: "ModelConfig", seq_len: int, *, causal_halving: bool = False
    ) -> float:
        return 2.0 * matmul_params(cfg) + attention_flops_per_token(
            cfg, seq_len, causal_halving=causal_halving
        )


# Config fields that name a registered part, checked by Decoder.check_config.
PARTS = {
    "mlp": MLPS,
    "norm": NORMS,
    "position": POSITIONS,
    "attention": ATTENTION,
    "remat": REMAT_POLICIES,
}


# ----------------------------------------------------------------------------- FLOP count
#
# Training FLOPs per token (PaLM, Chowdhery et al. 2022, appendix B), 3 x the forward FLOPs:
#
#     C = 6 * N  +  12 * L * T * n_heads * head_dim
#
# `N` counts the weights of every matmul a token passes through: the q/k/v/out projections and
# the MLP of each layer, and the output projection onto the (padded) vocabulary, tied or not.
# In a mixture-of-experts layer that is the ACTIVE weights: the router, the k experts the token
# is sent to and the shared experts, not the experts it skips (the sorting, gathers and
# padding of dropless dispatch are not model FLOPs either).
# A matmul with a weight of size N costs 2N FLOPs forward and 4N backward (gradients of the
# input and of the weight), hence 6N. Lookups (token and learned position tables), biases,
# norms, activations and softmax are not counted: elementwise work is small next to the
# matmuls.
#
# The second term is attention's two T x T matmuls per layer (q k^T and probs v): 2 * 2 * T * N
# * H FLOPs per token forward, times 3 for training. It is what grows quadratically with
# context: per token it is linear in T, per sequence quadratic. Causal halving is NOT counted
# by default: XLA's dot-product attention (and the formula in PaLM's MFU) computes the whole
# T x T matrix and masks it; a kernel that skips the masked half does half of this term
# (`causal_halving=True`). Sliding windows are likewise not subtracted.


def matmul_params(cfg: "ModelConfig") -> int:
    """Weights a token is multiplied with: per-layer projections and MLP, plus the logits."""
    D, N, K, H, F = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dim_head, cfg.ffn_dim
    attention = D * N * H + 2 * D * K * H + N * H * D
    per_width = (3 if cfg.mlp in GATED_MLPS else 2) * D  # weights per unit of MLP width
    moe = cfg.moe
    moe_mlp = D * moe.n_experts + per_width * (cfg.expert_dim * moe.top_k + cfg.shared_expert_dim)
    moe_mlp += D if moe.shared_gate else 0
    mlps = sum(moe_mlp if moe.is_moe_layer(i) else per_width * F for i in range(cfg.n_layers))
    return cfg.n_layers * attention + mlps + cfg.padded_vocab_size * D


def attention_flops_per_token(
    cfg: "ModelConfig", seq_len: int, *, causal_halving: bool = False
) -> float:
    """Forward FLOPs per token of the T x T attention matmuls: 4 * L * T * n_heads * head_dim."""
    flops = 4.0 * cfg.n_layers * seq_len * cfg.n_heads * cfg.dim_head
    return flops / 2 if causal_halving else flops


# ----------------------------------------------------------------------------- params layout


def stack_layer_params(params: dict[str, Any], n_layers: int) -> dict[str, Any]:
    """Loop layout (`blocks_0`, `blocks_1`, ...) -> scan layout (`blocks` with a layers axis)."""
    params = dict(params)
    layers = [params.pop(f"blocks_{i}") for i in range(n_layers)]
    params["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    return params


def unstack_layer_params(params: dict[str, Any], n_layers: int) -> dict[str, Any]:
    """Scan layout -> loop layout."""
    params = dict(params)
    stacked = params.pop("blocks")
    for i in range(n_layers):
        params[f"blocks_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
    return params
