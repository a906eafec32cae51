"""The train state: a plain pytree of step, params, optimizer state and model state."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from llmjax.models import init_variables
from llmjax.train.precision import LossScaleState

if TYPE_CHECKING:
    from llmjax.config import ModelConfig
    from llmjax.train.precision import DynamicLossScale


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training; the model and optimizer are kept outside."""

    step: jax.Array
    params: Any
    opt_state: optax.OptState
    model_state: dict[str, Any]  # non-param collections, e.g. BatchNorm's batch_stats
    loss_scale: LossScaleState | None = None  # only with dynamic loss scaling (float16)
    # Param trees carried beside the trained ones and never updated (a reference policy, a
    # reward model, a frozen base), by name; None when there are none.
    frozen: dict[str, Any] | None = None

    @classmethod
    def create(
        cls,
        params: Any,
        model_state: dict[str, Any],
        tx: optax.GradientTransformation,
        loss_scale: LossScaleState | None = None,
    ):
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            model_state=model_state,
            loss_scale=loss_scale,
        )

    def checkpointed(self, frozen: frozenset[str] = frozenset()) -> dict[str, Any]:
        """The state as a checkpoint holds it: a dict of its fields, with only the frozen trees
        named in `frozen` (and no "frozen" entry at all when none are), so that checkpoints
        written before frozen trees existed restore into the same layout."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        kept = {k: v for k, v in (self.frozen or {}).items() if k in frozen}
        del out["frozen"]
        if kept:
            out["frozen"] = kept
        return out

    @classmethod
    def from_checkpoint(cls, restored: dict[str, Any]) -> TrainState:
        """The inverse of `checkpointed`."""
        return cls(**restored)


def state_initializer(
    model_cfg: "ModelConfig",
    tx: optax.GradientTransformation,
    scaler: "DynamicLossScale | None" = None,
    *,
    boxed: bool = False,
) -> Callable[[jax.Array], TrainState]:
    """key -> fresh TrainState. With `boxed`, params and the optimizer state built from them
    keep flax's logical-axis boxes, so `nn.get_partition_spec` reads every leaf's axes."""

    create = state_from_params(tx, scaler)

    def init(key: jax.Array) -> TrainState:
        variables = dict(init_variables(model_cfg, key))
        variables.pop("perturbations", None)  # zero-valued gradient hooks, not state
        params_boxed = variables.pop("params")
        # The optimizer sees plain arrays: some (Muon) read the params' structure by name.
        state = create(nn.meta.unbox(params_boxed), nn.meta.unbox(variables))
        if not boxed:
            return state
        return state.replace(
            params=params_boxed,
            model_state=variables,
            opt_state=_box_like_params(state.opt_state, params_boxed),
        )

    return init


def state_from_params(
    tx: optax.GradientTransformation, scaler: "DynamicLossScale | None" = None
) -> Callable[[Any, dict[str, Any]], TrainState]:
    """(params, model_state) -> a step-0 TrainState around them with a fresh optimizer state:
    the start of a run that fine-tunes given weights."""

    def create(params: Any, model_state: dict[str, Any]) -> TrainState:
        return TrainState.create(
            params, model_state, tx, None if scaler is None else scaler.init_state()
        )

    return create


def _box_like_params(opt_state: optax.OptState, params_boxed: Any) -> optax.OptState:
    """Gives every optimizer-state leaf that mirrors a param (Adam's moments, momentum, ...) the
    param's logical axes: a leaf whose path ends with the param's path and has its shape."""
    is_box = lambda x: isinstance(x, nn.Partitioned)  # noqa: E731
    boxes = dict(jax.tree_util.tree_leaves_with_path(params_boxed, is_leaf=is_box))

    def box(path, leaf):
        for start in range(len(path)):
            found = boxes.get(tuple(path[start:]))
            if found is not None:
                return found.replace_boxed(leaf) if found.value.shape == leaf.shape else leaf
        return leaf

    return jax.tree_util.tree_map_with_path(box, opt_state)


def nonfinite_counts(opt_state: optax.OptState) -> tuple[jax.Array, jax.Array]:
    """(non-finite steps in a row, total non-finite steps) from optax.apply_if_finite's state."""
    return opt_state.notfinite_count, opt_state.total_notfinite


def last_step_finite(opt_state: optax.OptState) -> jax.Array:
    """Whether optax.apply_if_finite applied the last update (its gradients were finite)."""
    return opt_state.last_finite
