"""Model families (registered by name) and helpers to build and initialize them."""

import dataclasses
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmjax.models.family import DecodingLimits, DecodingState, ModelFamily, missing_members
from llmjax.models.output import ModelOutput
from llmjax.models.remat import REMAT_POLICIES
from llmjax.models.rnn import GRU, LSTM
from llmjax.models.transformer import Decoder, stack_layer_params, unstack_layer_params
from llmjax.registry import Registry
from llmjax.runtime import jit_once

if TYPE_CHECKING:
    from llmjax.config import ModelConfig

# Families by ModelConfig.arch; each entry follows llmjax.models.family.ModelFamily.
MODELS: Registry = Registry("model architecture")
MODELS.register("transformer")(Decoder)
MODELS.register("lstm")(LSTM)
MODELS.register("gru")(GRU)


def family_of(cfg: "ModelConfig") -> type[ModelFamily]:
    """The registered family class of `cfg.arch`."""
    family = MODELS.get(cfg.arch, field="model.arch")
    missing = missing_members(family)
    if missing:
        raise TypeError(
            f"model family {cfg.arch!r} ({family.__name__}) lacks {', '.join(missing)}; "
            f"see llmjax.models.family for what a family provides"
        )
    return family


def build_model(cfg: "ModelConfig") -> nn.Module:
    """The family's module for `cfg`, after the family checked the names of its parts."""
    family = family_of(cfg)
    family.check_config(cfg)
    if cfg.lora.rank:
        from llmjax.models.lora import lora_targets

        lora_targets(cfg)  # targets that match nothing, a rank too large
    return family(cfg)


def init_cache(
    cfg: "ModelConfig", batch_size: int, length: int, *, rolling: bool = False
) -> DecodingState:
    """The empty decoding state of `batch_size` rows, `length` tokens long, for cfg's family."""
    return family_of(cfg).init_cache(cfg, batch_size, length, rolling=rolling)


def _init_variables(cfg: "ModelConfig", key: jax.Array) -> dict[str, Any]:
    # The layers' scan stays rolled here: the values are the same bits (the scan splits the
    # keys before its loop), and unrolled, every layer's random-number loops are compiled
    # again (the shakespeare-char initializer took 2.4 CPU-seconds to compile unrolled, 1.4
    # rolled).
    model = build_model(dataclasses.replace(cfg, scan_unroll=1))
    tokens = jnp.zeros((1, min(cfg.max_seq_len, 8)), jnp.int32)
    return model.init({"params": key, "dropout": key}, tokens)


# Compiled once per config: run eagerly, initialization dispatches hundreds of tiny ops.
_init_variables_jit = jit_once(_init_variables, static_argnums=0)


def init_variables(cfg: "ModelConfig", key: jax.Array) -> dict[str, Any]:
    """All variables, params still wrapped in their logical-axis boxes (for sharding)."""
    return _init_variables(cfg, key)


def init_model(cfg: "ModelConfig", key: jax.Array) -> tuple[dict, dict]:
    """Returns (params, model_state): plain pytrees of arrays; model_state holds e.g. BatchNorm
    statistics and is empty for most configs."""
    variables = dict(nn.meta.unbox(_init_variables_jit(cfg, key)))
    variables.pop("perturbations", None)  # zero-valued gradient hooks, not state
    params = variables.pop("params")
    return params, variables


def logical_axes(cfg: "ModelConfig") -> dict[str, Any]:
    """Logical axis names (PartitionSpecs over names like 'embed', 'heads') of every variable."""
    boxed = jax.eval_shape(lambda k: _init_variables(cfg, k), jax.random.key(0))
    return nn.get_partition_spec(boxed)


def count_params(params: Any) -> int:
    return sum(x.size for x in jax.tree.leaves(params))


__all__ = [
    "MODELS",
    "REMAT_POLICIES",
    "Decoder",
    "DecodingLimits",
    "DecodingState",
    "ModelFamily",
    "ModelOutput",
    "build_model",
    "count_params",
    "family_of",
    "init_cache",
    "init_model",
    "init_variables",
    "logical_axes",
    "stack_layer_params",
    "unstack_layer_params",
]
