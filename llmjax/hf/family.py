"""Hugging Face model families, registered by `model_type`: config translation and tensor maps.

A family says three things: how its `config.json` becomes a `ModelConfig` (and back), which
HF tensor holds which llmjax parameter (`TensorMap`, with the pure reshapes between the two
layouts), and which llmjax configs it can express at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from llmjax.config import ModelConfig
from llmjax.registry import Registry

HF_FAMILIES: Registry = Registry("Hugging Face model_type")


class HFError(ValueError):
    """A Hugging Face checkpoint or export request llmjax cannot handle; says why and what to do."""


def register_hf(model_type: str) -> Callable[[type[HFFamily]], type[HFFamily]]:
    """Class decorator: `@register_hf("llama")` makes the family convert that `model_type`."""

    def add(cls: type[HFFamily]) -> type[HFFamily]:
        cls.model_type = model_type
        return HF_FAMILIES.register(model_type)(cls)

    return add


def get_family(model_type: Any, where: str = "config.json") -> HFFamily:
    if model_type not in HF_FAMILIES:
        raise HFError(
            f"{where}: model_type {model_type!r} is not one llmjax converts; supported model "
            f"types: {', '.join(HF_FAMILIES.names())}"
        )
    return HF_FAMILIES.get(model_type)()


# ----------------------------------------------------------------------------- tensor maps


@dataclass(frozen=True)
class TensorMap:
    """One HF tensor and the llmjax parameter(s) it holds.

    `{i}` in `hf` marks a per-layer tensor; its llmjax paths then live under `blocks` with a
    leading layer axis, and `to_llmjax` / `to_hf` see one layer's slice. `{e}` marks one
    expert's tensor of an MoE layer: the llmjax paths have an expert axis after the layer axis,
    and the maps see one expert's slice.
    """

    hf: str
    paths: tuple[str, ...]  # slash-separated llmjax param paths, e.g. "blocks/mlp/up/kernel"
    hf_shape: tuple[int, ...]
    to_llmjax: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    to_hf: Callable[..., np.ndarray]

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf

    def slices(self, cfg: ModelConfig) -> list[tuple[int, ...]]:
        """The (layer, expert) indices of the llmjax arrays this map fills, one per HF tensor;
        [()] for a tensor stored once (the embeddings)."""
        layers = range(cfg.n_layers) if self.per_layer else [None]
        experts = range(cfg.moe.n_experts) if "{e}" in self.hf else [None]
        return [tuple(x for x in (i, e) if x is not None) for i in layers for e in experts]

    def name(self, index: tuple[int, ...]) -> str:
        """The HF tensor name at one of `slices`."""
        keys = [k for k in ("i", "e") if "{" + k + "}" in self.hf]
        return self.hf.format(**dict(zip(keys, index, strict=True)))


def same(hf: str, path: str, shape: tuple[int, ...]) -> TensorMap:
    """A tensor stored identically in both layouts (embeddings, norm scales, flat biases)."""
    return TensorMap(hf, (path,), tuple(shape), lambda x: (x,), lambda x: x)


def bias(hf: str, path: str, shape: tuple[int, ...]) -> TensorMap:
    """A flat HF bias that llmjax keeps per head, e.g. (N*H,) <-> (N, H)."""
    return TensorMap(
        hf, (path,), (math.prod(shape),), lambda b: (b.reshape(shape),), lambda b: b.reshape(-1)
    )


def linear(hf: str, path: str, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> TensorMap:
    """A torch `nn.Linear` weight (out, in) <-> an llmjax kernel (*in_shape, *out_shape)."""
    n_in, n_out = math.prod(in_shape), math.prod(out_shape)
    return TensorMap(
        hf,
        (path,),
        (n_out, n_in),
        lambda w: (w.T.reshape(*in_shape, *out_shape),),
        lambda k: k.reshape(n_in, n_out).T,
    )


def conv1d(hf: str, path: str, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> TensorMap:
    """A GPT-2 `Conv1D` weight, stored (in, out) unlike nn.Linear <-> (*in_shape, *out_shape)."""
    n_in, n_out = math.prod(in_shape), math.prod(out_shape)
    return TensorMap(
        hf,
        (path,),
        (n_in, n_out),
        lambda w: (w.reshape(*in_shape, *out_shape),),
        lambda k: k.reshape(n_in, n_out),
    )


# ----------------------------------------------------------------------------- families


def required(hf: dict[str, Any], key: str, model_type: str) -> Any:
    value = hf.get(key)
    if value is None:
        raise HFError(f"config.json (model_type={model_type!r}) has no {key!r}; it is required")
    return value


class HFFamily:
    """Base of the registered families; subclasses fill in the four methods."""

    model_type: ClassVar[str]
    architecture: ClassVar[str]  # the `architectures` entry transformers instantiates
    base_prefix: ClassVar[str]  # checkpoints of the bare base model lack it (e.g. "model.")
    # Tensors some checkpoints carry that are not parameters (buffers), as regexes.
    ignored: ClassVar[tuple[str, ...]] = ()
    # Tried first when an export does not name its model_type (lower first).
    export_rank: ClassVar[int] = 0

    def config_from_hf(self, hf: dict[str, Any]) -> ModelConfig:
        raise NotImplementedError

    def config_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        raise NotImplementedError

    def tensors(self, cfg: ModelConfig) -> list[TensorMap]:
        raise NotImplementedError

    def cannot_express(self, cfg: ModelConfig) -> list[str]:
        """Why this family cannot hold `cfg` (empty when it can, maybe with zero biases)."""
        raise NotImplementedError

    def export_config(self, cfg: ModelConfig) -> ModelConfig:
        """The config as this family stores it; biases it adds are exported as zeros."""
        return cfg


def mismatch(cfg: ModelConfig, field: str, wanted: Any, family: str) -> list[str]:
    """[reason] when cfg.<field> is not `wanted`, else []."""
    value = getattr(cfg, field)
    if value == wanted:
        return []
    return [f"{family} needs model.{field}={wanted!r}, this model has {value!r}"]


# Block features a family either stores (and names in its `features`) or must find off: their
# off values, as ModelConfig's defaults.
BLOCK_FEATURES: dict[str, Any] = {
    "qk_norm_scope": "head",
    "attn_logit_softcap": None,
    "attn_scale_dim": None,
    "final_logit_softcap": None,
    "global_every": None,
    "rope_local_theta": None,
    "rotary_fraction": 1.0,
    "parallel_block": False,
}


def features_off(cfg: ModelConfig, family: str, stores: frozenset[str] = frozenset()) -> list[str]:
    """Reasons for each block feature `cfg` turns on that the family does not store."""
    reasons = []
    for name, off in BLOCK_FEATURES.items():
        if name not in stores:
            reasons += mismatch(cfg, name, off, family)
    return reasons


def choose_family(cfg: ModelConfig, model_type: str | None = None) -> HFFamily:
    """The family to export `cfg` as: the one named, or the best that holds it exactly."""
    if model_type is not None:
        family = get_family(model_type, where="--model-type")
        reasons = family.cannot_express(cfg)
        if reasons:
            raise HFError(f"cannot export this model as {model_type!r}: " + "; ".join(reasons))
        return family
    families = sorted(
        (HF_FAMILIES.get(name)() for name in HF_FAMILIES.names()), key=lambda f: f.export_rank
    )
    able = [f for f in families if not f.cannot_express(cfg)]
    # Prefer a family that stores the model as is over one that must add zero biases.
    exact = [f for f in able if f.export_config(cfg) == cfg]
    if exact or able:
        return (exact or able)[0]
    reasons = [f"{f.model_type}: {'; '.join(f.cannot_express(cfg))}" for f in families]
    raise HFError(
        "no Hugging Face model type can hold this model exactly, so it cannot be exported ("
        + " | ".join(reasons)
        + ")"
    )
