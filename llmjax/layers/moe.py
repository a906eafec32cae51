"""A mixture-of-experts MLP: a router sends each token to its top-k experts, dropless.

Per token x (N tokens, E experts, k chosen):

    logits = x W_router                      [E], float32
    scores = softmax(logits) | sigmoid(logits)            (model.moe.router)
    chosen = the k experts of largest score; gates = their scores (/ their sum: renormalize)
    y      = sum_{e in chosen} gate_e * MLP_e(x)  +  shared MLP(x)

Dropless: the N * k (token, expert) assignments are sorted by expert and every one is
computed (llmjax.layers.grouped), whatever the load; no capacity factor, no dropped tokens,
so a token's output never depends on the other tokens of the batch (which is what makes
cached decoding equal recomputation).

Two auxiliary losses, averaged over the MoE layers and added to the training loss with their
coefficients (`ModelOutput.aux["loss"]`; llmjax.objectives.Forward collects it):

    load balance (Switch, GShard):  L_aux = E * sum_e f_e * P_e
        f_e = (1 / (N k)) sum_n sum_j [expert_nj = e]   fraction of assignments to e (no grad)
        P_e = (1 / N) sum_n p_ne                         mean router probability of e
    p is the softmax (sigmoid: the scores normalized to sum 1 over experts, as DeepSeek-V3's
    balance loss). L_aux = 1 when routing is uniform, E when one expert gets every token
    with probability 1.

    router z-loss (ST-MoE):  L_z = (1 / N) sum_n (log sum_e exp(logits_ne))^2

Both are over every token of the batch, padding included.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmjax.layers.common import constrain, dtype_of, normal, out_std, param
from llmjax.layers.grouped import GROUPED
from llmjax.layers.mlp import MLPS
from llmjax.registry import Registry
from llmjax.typing import Array, Float, Int

ROUTERS: Registry = Registry("router")
EXPERT_MLPS: Registry = Registry("expert mlp")

# The routing metrics a training step reports (and TrainLog averages over each interval).
ROUTING_METRICS = ("moe_aux_loss", "moe_z_loss", "moe_load_cv", "moe_load_max")


class Routing(NamedTuple):
    """Which experts each token goes to, with what weight, and the probabilities the balance
    loss averages."""

    experts_NxK: Int[Array, "N K"]
    gates_NxK: Float[Array, "N K"]
    probs_NxE: Float[Array, "N E"]


@ROUTERS.register("softmax")
def softmax_router(logits_NxE: jax.Array, k: int, renormalize: bool) -> Routing:
    """Top-k of the softmax (Switch with k = 1 and no renormalization; Mixtral renormalizes)."""
    probs_NxE = jax.nn.softmax(logits_NxE, axis=-1)
    gates_NxK, experts_NxK = jax.lax.top_k(probs_NxE, k)
    if renormalize:
        gates_NxK = gates_NxK / gates_NxK.sum(-1, keepdims=True)
    return Routing(experts_NxK, gates_NxK, probs_NxE)


@ROUTERS.register("sigmoid")
def sigmoid_router(logits_NxE: jax.Array, k: int, renormalize: bool) -> Routing:
    """Top-k of independent sigmoid scores (DeepSeek-V3): an expert's score does not shrink
    as others grow. The balance loss reads the scores normalized over experts."""
    scores_NxE = jax.nn.sigmoid(logits_NxE)
    gates_NxK, experts_NxK = jax.lax.top_k(scores_NxE, k)
    if renormalize:
        gates_NxK = gates_NxK / gates_NxK.sum(-1, keepdims=True)
    return Routing(experts_NxK, gates_NxK, scores_NxE / scores_NxE.sum(-1, keepdims=True))


def expert_load(experts_NxK: Int[Array, "N K"], n_experts: int) -> Float[Array, " E"]:
    """f_e: the fraction of the N * k assignments that go to each expert (sums to 1)."""
    counts_E = jnp.bincount(experts_NxK.reshape(-1), length=n_experts)
    return counts_E.astype(jnp.float32) / experts_NxK.size


def load_balancing_loss(
    probs_NxE: Float[Array, "N E"], experts_NxK: Int[Array, "N K"]
) -> jax.Array:
    """E * sum_e f_e * P_e (module docstring); gradients flow through P only."""
    n_experts = probs_NxE.shape[-1]
    f_E = jax.lax.stop_gradient(expert_load(experts_NxK, n_experts))
    return n_experts * jnp.sum(f_E * probs_NxE.mean(0))


def router_z_loss(logits_NxE: Float[Array, "N E"]) -> jax.Array:
    """Mean over tokens of logsumexp(router logits)^2: keeps router logits small."""
    return jnp.mean(jnp.square(jax.nn.logsumexp(logits_NxE, axis=-1)))


def load_cv(load_xE: Float[Array, "... E"]) -> jax.Array:
    """Coefficient of variation of the load over experts: std / mean (0 when balanced)."""
    return load_xE.std(-1) / jnp.maximum(load_xE.mean(-1), 1e-30)


def moe_outputs(cfg: Any, stats: dict[str, jax.Array]) -> dict[str, Any]:
    """What a decoder's MoE layers add to `ModelOutput.aux`, from their per-layer stats stacked
    to [L_moe, ...]: "loss" (the weighted auxiliary losses to add to the training loss),
    "metrics" (`ROUTING_METRICS`, means over the layers) and "moe_load" [L_moe, E]."""
    moe = cfg.moe
    aux_loss, z_loss = stats["aux_loss"].mean(), stats["z_loss"].mean()
    load_LxE = stats["load"]
    metrics = {
        "moe_aux_loss": aux_loss,
        "moe_z_loss": z_loss,
        "moe_load_cv": load_cv(load_LxE).mean(),
        # Max load relative to a balanced share (1: balanced; E: one expert takes all).
        "moe_load_max": (load_LxE.max(-1) * moe.n_experts).mean(),
    }
    loss = moe.aux_loss_coef * aux_loss + moe.z_loss_coef * z_loss
    return {"loss": loss, "metrics": metrics, "moe_load": load_LxE}


# ----------------------------------------------------------------------------- expert MLPs
#
# One per dense MLP kind, so an expert is the model's own MLP with a leading expert axis on
# every weight; with one expert and k = 1 the layer computes the dense MLP.


def _weight(module, name, shape, axes, std, cfg):
    return param(module, name, shape, axes, normal(std), cfg.param_dtype)


def _linear(module, layout, h, name, fan_in, fan_out, axes, std, cfg):
    dtype = dtype_of(cfg.dtype)
    E = cfg.moe.n_experts
    w = _weight(module, name, (E, fan_in, fan_out), ("expert", *axes), std, cfg)
    y = layout.matmul(h, w.astype(dtype))
    if cfg.has_mlp_bias:
        b = param(module, f"{name}_bias", (E, fan_out), ("expert", axes[1]),
                  nn.initializers.zeros, cfg.param_dtype)  # fmt: skip
        y = y + layout.bias(b.astype(dtype))
    return y


@EXPERT_MLPS.register("gelu")
def gelu_experts(module: nn.Module, cfg: Any, layout: Any, x: jax.Array) -> jax.Array:
    D, F = cfg.d_model, cfg.expert_dim
    h = _linear(module, layout, x, "fc_in", D, F, ("embed", "mlp"), cfg.init_std, cfg)
    h = jax.nn.gelu(h, approximate=True)
    return _linear(module, layout, h, "fc_out", F, D, ("mlp", "embed"), out_std(cfg), cfg)


@EXPERT_MLPS.register("swiglu")
def swiglu_experts(module: nn.Module, cfg: Any, layout: Any, x: jax.Array) -> jax.Array:
    D, F = cfg.d_model, cfg.expert_dim
    gate = _linear(module, layout, x, "gate", D, F, ("embed", "mlp"), cfg.init_std, cfg)
    up = _linear(module, layout, x, "up", D, F, ("embed", "mlp"), cfg.init_std, cfg)
    h = jax.nn.silu(gate) * up
    return _linear(module, layout, h, "down", F, D, ("mlp", "embed"), out_std(cfg), cfg)


def route(cfg: Any, logits_NxE: jax.Array) -> Routing:
    moe = cfg.moe
    return ROUTERS.get(moe.router)(logits_NxE, moe.top_k, moe.renormalize)


def run_experts(
    module: nn.Module, cfg: Any, x_NxD: jax.Array, routing: Routing
) -> Float[Array, "N D"]:
    """sum_j gate_nj * MLP_{expert_nj}(x_n), every assignment computed (sorted by expert)."""
    moe = cfg.moe
    N, K = routing.experts_NxK.shape
    experts_M = routing.experts_NxK.reshape(-1)  # M = N * K assignments, token-major
    order_M = jnp.argsort(experts_M, stable=True)
    tokens_M = order_M // K
    group_sizes_E = jnp.bincount(experts_M, length=moe.n_experts)
    layout = GROUPED.get(moe.kernel)(group_sizes_E, rows=N * K, block_size=moe.block_size)
    h = layout.pack(x_NxD[tokens_M])
    y_sorted_MxD = layout.unpack(EXPERT_MLPS.get(cfg.mlp)(module, cfg, layout, h))
    # Back to token-major order: assignment order_M[i] sits at sorted row i.
    inverse_M = jnp.zeros_like(order_M).at[order_M].set(jnp.arange(N * K), unique_indices=True)
    y_NxKxD = y_sorted_MxD[inverse_M].reshape(N, K, -1)
    return jnp.einsum("nkd,nk->nd", y_NxKxD, routing.gates_NxK.astype(y_NxKxD.dtype))


class MoEMLP(nn.Module):
    """The MoE MLP of one layer: (output [B, T, D], stats) with stats "aux_loss", "z_loss"
    (scalars) and "load" [E] (each expert's share of the assignments)."""

    cfg: Any

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        cfg, moe = self.cfg, self.cfg.moe
        B, T, D = x_BxTxD.shape
        x_NxD = x_BxTxD.reshape(B * T, D).astype(dtype_of(cfg.dtype))
        router = param(self, "router", (D, moe.n_experts), ("embed", None),
                       normal(cfg.init_std), cfg.param_dtype)  # fmt: skip
        # The router runs in float32 whatever the compute dtype: top-k and the losses are
        # sensitive to rounding of the logits (ST-MoE).
        logits_NxE = jnp.dot(x_NxD.astype(jnp.float32), router.astype(jnp.float32))
        routing = route(cfg, logits_NxE)
        y_NxD = run_experts(self, cfg, x_NxD, routing)
        y_BxTxD = y_NxD.reshape(B, T, D)
        if moe.n_shared_experts:
            shared_cfg = dataclasses.replace(cfg, d_ff=cfg.shared_expert_dim)
            shared_BxTxD = MLPS.get(cfg.mlp)(shared_cfg, name="shared")(x_BxTxD)
            if moe.shared_gate:
                w_D = param(self, "shared_gate", (D,), ("embed",), normal(cfg.init_std),
                            cfg.param_dtype)  # fmt: skip
                gate_N = jax.nn.sigmoid(jnp.dot(x_NxD, w_D.astype(x_NxD.dtype)))
                shared_BxTxD = shared_BxTxD * gate_N.reshape(B, T, 1).astype(shared_BxTxD.dtype)
            y_BxTxD = y_BxTxD + shared_BxTxD
        stats = {
            "aux_loss": load_balancing_loss(routing.probs_NxE, routing.experts_NxK),
            "z_loss": router_z_loss(logits_NxE),
            "load": expert_load(routing.experts_NxK, moe.n_experts),
        }
        return constrain(y_BxTxD, ("batch", "length", "embed")), stats
