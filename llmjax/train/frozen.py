"""Params that training leaves alone: frozen trees beside the trained ones, and masks that
train a subset of the params.

A `Frozen` tree rides in the train state under a name (a reference policy for a KL penalty,
a reward model, a frozen base): sharded by the same logical-axis rules as the params of its
model, passed to the objective, never differentiated or updated, and checkpointed only when
asked (`save=True`; otherwise it is given again when a run resumes).

A trainable mask picks which of the params the optimizer updates (LoRA adapters, a value head):
the rest get no gradient computation, zero updates and no optimizer state.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax

from llmjax.errors import ConfigError

if TYPE_CHECKING:
    from llmjax.config import ModelConfig

# A trainable mask: None (everything), a regular expression searched in each param's path
# ("blocks/attention/query_kernel"), a predicate of (path, leaf), or a tree of bools.
TrainableSpec = str | Callable[[str, Any], bool] | Any | None


@dataclass(frozen=True)
class Frozen:
    """A param tree carried in the train state and never updated."""

    params: Any
    model: ModelConfig | None = None  # the model these are params of (None: the trained one)
    save: bool = False  # written with each checkpoint and restored on resume


def param_path(path: tuple) -> str:
    """A param's key path as "blocks/attention/query_kernel"."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def trainable_mask(params: Any, spec: TrainableSpec) -> Any | None:
    """A tree of bools over `params` (True: trained) from `spec`; None when all are trained.

    Raises ConfigError when the spec selects nothing, or is a tree of another structure.
    """
    if spec is None or (isinstance(spec, str) and not spec):
        return None
    if isinstance(spec, str):
        try:
            pattern = re.compile(spec)
        except re.error as e:
            raise ConfigError(f"train.trainable={spec!r} is not a regular expression: {e}") from e
        mask = jax.tree_util.tree_map_with_path(
            lambda p, _: bool(pattern.search(param_path(p))), params
        )
    elif callable(spec):
        mask = jax.tree_util.tree_map_with_path(lambda p, x: bool(spec(param_path(p), x)), params)
    else:
        if jax.tree.structure(spec) != jax.tree.structure(params):
            raise ConfigError(
                "the trainable mask is a tree of another structure than the params: "
                + "; ".join(tree_differences(spec, params, "mask", "params", shapes=False)[:5])
            )
        mask = jax.tree.map(bool, spec)
    if not any(jax.tree.leaves(mask)):
        names = ", ".join(param_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(params))
        raise ConfigError(
            f"the trainable mask {spec!r} selects no params, so nothing would train; the "
            f"params are: {names}"
        )
    return None if all(jax.tree.leaves(mask)) else mask


def tree_differences(
    have: Any, want: Any, have_name: str, want_name: str, *, shapes: bool = True
) -> list[str]:
    """One line per leaf path that is missing from either tree or (with `shapes`) whose shapes
    differ, e.g. "blocks/mlp/fc_in/kernel: (2, 32, 64) in the given tree, (2, 32, 128) in the
    model"."""

    def leaves(tree):
        return {
            param_path(p): tuple(getattr(x, "shape", ()))
            for p, x in jax.tree_util.tree_leaves_with_path(tree)
        }

    a, b = leaves(have), leaves(want)
    out = []
    for key in sorted(a.keys() | b.keys()):
        if key not in b:
            out.append(f"{key}: in the {have_name}, not in the {want_name}")
        elif key not in a:
            out.append(f"{key}: in the {want_name}, not in the {have_name}")
        elif shapes and a[key] != b[key]:
            out.append(f"{key}: {a[key]} in the {have_name}, {b[key]} in the {want_name}")
    return out


@dataclass(frozen=True)
class FrozenSlot:
    """What training needs to know of one frozen tree: its model, shapes and logical axes."""

    name: str
    params: Any  # the given params, in the layout of the model's own param tree
    save: bool
    module: nn.Module
    shapes: Any  # ShapeDtypeStructs of `params`
    logical: Any  # logical PartitionSpecs of every leaf (from the model's param boxes)


def frozen_slots(frozen: Mapping[str, Frozen], model_cfg: ModelConfig) -> dict[str, FrozenSlot]:
    """Checks each frozen tree against its model's params and returns their slots."""
    from llmjax.models import build_model, init_variables

    slots = {}
    for name, spec in frozen.items():
        if not isinstance(spec, Frozen):
            spec = Frozen(spec)  # a bare param tree of the trained model
        cfg = spec.model or model_cfg
        boxed = jax.eval_shape(lambda k, c=cfg: init_variables(c, k), jax.random.key(0))["params"]
        want = nn.meta.unbox(boxed)
        differ = tree_differences(spec.params, want, "given tree", "model")
        if differ:
            raise ConfigError(
                f"frozen params {name!r} do not match the params of their model "
                f"({len(differ)} leaves differ): {'; '.join(differ[:6])}"
                + ("; ..." if len(differ) > 6 else "")
                + ". Pass Frozen(params, model=<that ModelConfig>) for another model's params"
            )
        given = {param_path(p): x for p, x in jax.tree_util.tree_leaves_with_path(spec.params)}
        params = jax.tree_util.tree_map_with_path(lambda p, _, g=given: g[param_path(p)], want)
        shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
        logical = nn.get_partition_spec(boxed)
        slots[name] = FrozenSlot(name, params, spec.save, build_model(cfg), shapes, logical)
    return slots
