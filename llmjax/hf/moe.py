"""Mixture-of-experts families: Mixtral (`mixtral`), Qwen2-MoE (`qwen2_moe`) and Qwen3-MoE
(`qwen3_moe`).

Each is its dense family (Mistral, Qwen2, Qwen3) with every layer's MLP replaced by SwiGLU
experts behind a softmax top-k router: llmjax's `model.moe` with `router="softmax"`. Mixtral
always divides the chosen probabilities by their sum; the Qwen families do when `norm_topk_prob`
is set. Qwen2-MoE adds one shared expert (`shared_expert_intermediate_size` wide) on every
token, its output scaled by sigmoid(x . w) (`model.moe.n_shared_experts=1`, `d_shared`,
`shared_gate=true`).

Checkpoints store one tensor per expert (`...experts.{e}.w1.weight`, as transformers saves
them); llmjax stacks them on the expert axis of `blocks/mlp/{gate,up,down}` and splits them
again on export. The router's `router_aux_loss_coef` becomes `model.moe.aux_loss_coef` (llmjax
adds the balance loss whenever it trains); neither family has a router z-loss, so an imported
model trains with `z_loss_coef=0`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from llmjax.config import ModelConfig
from llmjax.config.moe import MoEConfig
from llmjax.hf.family import HFError, TensorMap, linear, register_hf, required
from llmjax.hf.llama import Mistral, Qwen2
from llmjax.hf.qwen3 import Qwen3

_LAYER = "model.layers.{i}."


class _Experts:
    """What the MoE families share; mixed in before their dense family."""

    moe_module: str  # the layer's MoE submodule in the checkpoint
    expert_weights: tuple[str, str, str]  # HF names of each expert's gate, up and down
    # config.json keys of the number of experts (newer transformers write the last); the first
    # is exported.
    n_experts_keys: tuple[str, ...]
    norm_topk_key: str | None  # config.json key switching renormalization; None: always on
    shared_expert = False  # one sigmoid-gated shared expert per layer (Qwen2-MoE)

    def moe_from_hf(self, hf: dict[str, Any]) -> MoEConfig:
        t = self.model_type
        renormalize = True if self.norm_topk_key is None else bool(hf.get(self.norm_topk_key))
        return MoEConfig(
            n_experts=required(hf, self._n_experts_key(hf), t),
            top_k=required(hf, "num_experts_per_tok", t),
            router="softmax",
            renormalize=renormalize,
            aux_loss_coef=float(hf.get("router_aux_loss_coef", 0.001)),
            z_loss_coef=0.0,
        )

    def _n_experts_key(self, hf: dict[str, Any]) -> str:
        return next((k for k in self.n_experts_keys if k in hf), self.n_experts_keys[0])

    def moe_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        out = {
            self.n_experts_keys[0]: cfg.moe.n_experts,
            "num_experts_per_tok": cfg.moe.top_k,
            "router_aux_loss_coef": cfg.moe.aux_loss_coef,
            "output_router_logits": False,
        }
        if self.norm_topk_key is not None:
            out[self.norm_topk_key] = cfg.moe.renormalize
        return out

    def config_from_hf(self, hf: dict[str, Any]) -> ModelConfig:
        return dataclasses.replace(super().config_from_hf(hf), moe=self.moe_from_hf(hf))

    def config_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        return {**super().config_to_hf(cfg), **self.moe_to_hf(cfg)}

    def moe_cannot_express(self, cfg: ModelConfig) -> list[str]:
        name, moe = type(self).__name__, cfg.moe
        if not moe.enabled:
            return [f"{name} is a mixture of experts, this model has dense MLPs (model.moe."
                    f"n_experts=0)"]  # fmt: skip
        reasons = []
        if moe.router != "softmax":
            reasons.append(f"{name} routes with a softmax, this model with model.moe.router="
                           f"{moe.router!r}")  # fmt: skip
        if self.norm_topk_key is None and not moe.renormalize:
            reasons.append(f"{name} always renormalizes the top-k gates (model.moe.renormalize"
                           f"=true)")  # fmt: skip
        if self.shared_expert and not (moe.n_shared_experts and moe.shared_gate):
            reasons.append(f"{name} has one sigmoid-gated shared expert in every layer (model."
                           f"moe.n_shared_experts=1, shared_gate=true)")  # fmt: skip
        if not self.shared_expert and moe.n_shared_experts:
            reasons.append(f"{name} has no shared experts (model.moe.n_shared_experts=0)")
        if moe.every != 1 or moe.first_dense != 0:
            reasons.append(f"llmjax converts {name} with every layer MoE (model.moe.every=1, "
                           f"first_dense=0)")  # fmt: skip
        return reasons

    def expert_tensors(self, cfg: ModelConfig) -> list[TensorMap]:
        D, E, F = cfg.d_model, cfg.moe.n_experts, cfg.expert_dim
        M = _LAYER + self.moe_module + "."
        gate, up, down = (M + "experts.{e}." + w + ".weight" for w in self.expert_weights)
        return [
            linear(M + "gate.weight", "blocks/mlp/router", (D,), (E,)),
            linear(gate, "blocks/mlp/gate", (D,), (F,)),
            linear(up, "blocks/mlp/up", (D,), (F,)),
            linear(down, "blocks/mlp/down", (F,), (D,)),
        ]

    def tensors(self, cfg: ModelConfig) -> list[TensorMap]:
        dense = {_LAYER + f"mlp.{w}_proj.weight" for w in ("gate", "up", "down")}
        kept = [m for m in super().tensors(cfg) if m.hf not in dense]
        return kept + self.expert_tensors(cfg)


def _all_layers_moe(hf: dict[str, Any], model_type: str) -> None:
    step, dense = hf.get("decoder_sparse_step", 1), hf.get("mlp_only_layers") or []
    if step != 1 or dense:
        raise HFError(
            f"this {model_type} checkpoint has decoder_sparse_step={step} and mlp_only_layers="
            f"{dense}; llmjax converts it when every layer is MoE (decoder_sparse_step=1, "
            f"mlp_only_layers=[])"
        )


@register_hf("mixtral")
class Mixtral(_Experts, Mistral):
    """Mixtral: Mistral's attention, `num_local_experts` experts `intermediate_size` wide."""

    architecture = "MixtralForCausalLM"
    export_rank = 60
    moe_module = "block_sparse_moe"
    expert_weights = ("w1", "w3", "w2")
    n_experts_keys = ("num_local_experts",)
    norm_topk_key = None

    def export_config(self, cfg: ModelConfig) -> ModelConfig:
        # One width: the experts' (intermediate_size); no dense MLP is left to need another.
        moe = dataclasses.replace(cfg.moe, d_expert=None)
        return dataclasses.replace(cfg, d_ff=cfg.expert_dim, moe=moe)


class _QwenExperts(_Experts):
    """What the Qwen MoE families share: `num_experts` experts `moe_intermediate_size` wide,
    every layer MoE, renormalized gates when `norm_topk_prob`."""

    moe_module = "mlp"
    expert_weights = ("gate_proj", "up_proj", "down_proj")
    n_experts_keys = ("num_experts", "num_local_experts")
    norm_topk_key = "norm_topk_prob"

    def config_from_hf(self, hf: dict[str, Any]) -> ModelConfig:
        _all_layers_moe(hf, self.model_type)
        cfg = super().config_from_hf(hf)
        d_expert = required(hf, "moe_intermediate_size", self.model_type)
        return dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, d_expert=d_expert))

    def config_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        return {
            **super().config_to_hf(cfg),
            "moe_intermediate_size": cfg.expert_dim,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
        }

    def export_config(self, cfg: ModelConfig) -> ModelConfig:
        cfg = super().export_config(cfg)
        return dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, d_expert=cfg.expert_dim))


@register_hf("qwen3_moe")
class Qwen3Moe(_QwenExperts, Qwen3):
    """Qwen3-MoE: Qwen3's QK-normed attention and the Qwen experts."""

    architecture = "Qwen3MoeForCausalLM"
    export_rank = 61

    def window_from_hf(self, hf: dict[str, Any]) -> int | None:
        # Qwen3-MoE applies its window in every layer when use_sliding_window is set.
        return hf.get("sliding_window") if hf.get("use_sliding_window", False) else None

    def extra_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        window = cfg.attention_window
        return {
            "attention_bias": cfg.has_qkv_bias,
            "use_sliding_window": window is not None,
            "sliding_window": window,
        }


@register_hf("qwen2_moe")
class Qwen2Moe(_QwenExperts, Qwen2):
    """Qwen2-MoE (Qwen1.5-MoE): Qwen2's attention (biases on q, k and v when `qkv_bias`), the
    Qwen experts and one shared expert whose output a per-token sigmoid gate scales."""

    architecture = "Qwen2MoeForCausalLM"
    export_rank = 62
    shared_expert = True

    def config_from_hf(self, hf: dict[str, Any]) -> ModelConfig:
        cfg = super().config_from_hf(hf)
        d_shared = required(hf, "shared_expert_intermediate_size", self.model_type)
        moe = dataclasses.replace(cfg.moe, n_shared_experts=1, d_shared=d_shared, shared_gate=True)
        return dataclasses.replace(cfg, moe=moe)

    def config_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        return {
            **super().config_to_hf(cfg),
            "shared_expert_intermediate_size": cfg.shared_expert_dim,
            "qkv_bias": cfg.has_qkv_bias,
        }

    def biases_from_hf(self, hf: dict[str, Any]) -> dict[str, bool | None]:
        return {"qkv_bias": bool(hf.get("qkv_bias", True))}

    def export_config(self, cfg: ModelConfig) -> ModelConfig:
        qkv_bias = cfg.has_qkv_bias  # Qwen2's export adds q/k/v biases; Qwen2-MoE may lack them
        return dataclasses.replace(super().export_config(cfg), qkv_bias=qkv_bias)

    def expert_tensors(self, cfg: ModelConfig) -> list[TensorMap]:
        D, F = cfg.d_model, cfg.shared_expert_dim
        S = _LAYER + "mlp.shared_expert."
        return super().expert_tensors(cfg) + [
            linear(S + "gate_proj.weight", "blocks/mlp/shared/gate/kernel", (D,), (F,)),
            linear(S + "up_proj.weight", "blocks/mlp/shared/up/kernel", (D,), (F,)),
            linear(S + "down_proj.weight", "blocks/mlp/shared/down/kernel", (F,), (D,)),
            linear(_LAYER + "mlp.shared_expert_gate.weight", "blocks/mlp/shared_gate", (D,), ()),
        ]
