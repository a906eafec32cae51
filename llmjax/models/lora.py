"""LoRA on whole models: which kernels a config adapts, checks, merging adapters into the base,
and splitting a param tree into base and adapters.

The adapters themselves are params of the model (`llmjax.layers.lora`); these functions work on
param trees and configs, so they serve training (fresh adapters beside a loaded base), export
(merged weights, PEFT adapters) and decoding (merge once, then decode at the base's speed).
"""

from __future__ import annotations

import dataclasses
import math
import re
import string
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llmjax.config import LoraConfig
from llmjax.errors import ConfigError
from llmjax.layers.lora import ADDED_PARAMS, LORA_PARAMS, adapter_names
from llmjax.runtime import jit_once

if TYPE_CHECKING:
    from llmjax.config import ModelConfig


@dataclass(frozen=True)
class Target:
    """One adapted kernel: its param path and the sizes of its input and output."""

    path: str  # "blocks/attention/query_kernel"
    fan_in: int
    fan_out: int

    @property
    def adapters(self) -> tuple[str, str]:
        """The param paths of its A and B."""
        head, _, kernel = self.path.rpartition("/")
        return tuple(f"{head}/{name}" if head else name for name in adapter_names(kernel))


def _flat(tree: Any) -> dict[str, Any]:
    def name(path: tuple) -> str:
        return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)

    return {name(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}


@lru_cache(maxsize=32)
def _adapted(cfg: ModelConfig) -> tuple[Target, ...]:
    """The kernels `cfg` puts adapters on (from the shapes of its params, nothing computed)."""
    from llmjax.models import family_of

    model = family_of(cfg)(cfg)
    tokens = jnp.zeros((1, min(cfg.max_seq_len, 8)), jnp.int32)
    shapes = jax.eval_shape(lambda k: model.init({"params": k}, tokens), jax.random.key(0))
    flat = {k: v.shape for k, v in _flat(nn.meta.unbox(shapes["params"])).items()}
    layer_axis = 1 if cfg.scan_layers else 0
    targets = []
    for path, shape in flat.items():
        head, _, name = path.rpartition("/")
        if not name.endswith("kernel"):
            continue
        a_name, b_name = adapter_names(name)
        a = flat.get(f"{head}/{a_name}" if head else a_name)
        if a is None:
            continue
        lead = layer_axis if path.startswith("blocks/") else 0
        fan_in = math.prod(a[lead:-1])
        targets.append(Target(path, fan_in, math.prod(shape[lead:]) // fan_in))
    return tuple(targets)


def eligible_kernels(cfg: ModelConfig) -> tuple[Target, ...]:
    """Every kernel LoRA can adapt in `cfg`'s model (attention and MLP projections)."""
    return _adapted(_with_lora(cfg, LoraConfig(rank=1, targets=".")))


def lora_targets(cfg: ModelConfig) -> tuple[Target, ...]:
    """The kernels cfg.lora adapts; raises ConfigError when its targets match none, or its rank
    is larger than a target's input or output size."""
    if not cfg.lora.rank:
        return ()
    targets = _adapted(cfg)
    if not targets:
        names = ", ".join(t.path for t in eligible_kernels(cfg))
        raise ConfigError(
            f"model.lora.targets={cfg.lora.targets!r} matches no weight LoRA can adapt; it is "
            f"searched in these param paths: {names} (e.g. 'attention/' for all attention "
            f"projections, 'query|value' for two of them, 'attention/|mlp/' for all)"
        )
    too_big = [t for t in targets if cfg.lora.rank > min(t.fan_in, t.fan_out)]
    if too_big:
        sizes = ", ".join(f"{t.path} ({t.fan_in} -> {t.fan_out})" for t in too_big)
        smallest = min(min(t.fan_in, t.fan_out) for t in too_big)
        raise ConfigError(
            f"model.lora.rank={cfg.lora.rank} is larger than the input or output size of "
            f"{sizes}; a low-rank update has rank at most min(in, out): choose a rank <= "
            f"{smallest}"
        )
    return targets


def _with_lora(cfg: ModelConfig, lora: LoraConfig) -> ModelConfig:
    return dataclasses.replace(cfg, lora=lora)


def without_lora(cfg: ModelConfig) -> ModelConfig:
    """The config of the base model (no adapters)."""
    return _with_lora(cfg, LoraConfig())


_LORA = re.compile(LORA_PARAMS)
_ADDED = re.compile(ADDED_PARAMS)


def is_adapter(path: str) -> bool:
    """Whether a param path is a LoRA adapter (lora_a / lora_b)."""
    return _LORA.search(path) is not None


def is_added(path: str) -> bool:
    """Whether a param path is one a run adds to its base: an adapter or the value head."""
    return _ADDED.search(path) is not None


def split_adapters(params: Any) -> tuple[dict, dict]:
    """(base params, added params: LoRA adapters and the value head) as two nested dicts of
    the same layout."""
    base: dict = {}
    adapters: dict = {}
    for path, leaf in _flat(params).items():
        _put(adapters if is_added(path) else base, path, leaf)
    return base, adapters


def join(*trees: Any) -> dict:
    """One nested dict holding the leaves of all `trees` (disjoint paths)."""
    out: dict = {}
    for tree in trees:
        for path, leaf in _flat(tree).items():
            _put(out, path, leaf)
    return out


def _put(tree: dict, path: str, leaf: Any) -> None:
    *heads, last = path.split("/")
    for key in heads:
        tree = tree.setdefault(key, {})
    tree[last] = leaf


def low_rank_update(a: Any, b: Any, kernel_ndim: int, scale: float) -> Any:
    """scale * A B in the kernel's shape; A is (*lead, *in, r), B (*lead, r, *out), where
    `lead` is a stacked-layers axis or nothing."""
    lead = a.ndim + b.ndim - kernel_ndim - 2
    n_in, n_out = a.ndim - 1 - lead, b.ndim - 1 - lead
    letters = iter(string.ascii_letters)
    lead_s = "".join(next(letters) for _ in range(lead))
    in_s = "".join(next(letters) for _ in range(n_in))
    out_s = "".join(next(letters) for _ in range(n_out))
    r = next(letters)
    spec = f"{lead_s}{in_s}{r},{lead_s}{r}{out_s}->{lead_s}{in_s}{out_s}"
    xp = jnp if isinstance(a, jax.Array) else np
    update = xp.einsum(spec, a.astype(np.float32), b.astype(np.float32))
    return update * scale


def merge_adapters(params: Any, cfg: ModelConfig) -> tuple[dict, ModelConfig]:
    """(params with every adapter folded into its kernel, the config without LoRA): the same
    function of the tokens, as the base model's params (for export and fast decoding)."""
    if not cfg.lora.rank:
        return params, cfg
    flat = _flat(params)
    merged = {p: x for p, x in flat.items() if not is_adapter(p)}  # the value head stays
    for target in _adapted(cfg):
        a_path, b_path = target.adapters
        if a_path not in flat or b_path not in flat:
            raise ConfigError(
                f"the params have no adapters for {target.path} ({a_path}, {b_path}), though "
                f"model.lora says it is adapted; were they saved with another model.lora?"
            )
        w = flat[target.path]
        update = low_rank_update(flat[a_path], flat[b_path], w.ndim, cfg.lora.scale)
        merged[target.path] = (w.astype(np.float32) + update).astype(w.dtype)
    return join(merged), without_lora(cfg)


def adapter_count(params: Any) -> int:
    """The number of adapter params in a tree."""
    return sum(int(np.prod(x.shape)) for p, x in _flat(params).items() if is_adapter(p))


def with_fresh_adapters(base: Any, cfg: ModelConfig, seed: int) -> dict:
    """`base` (params of the model without adapters) with new adapters of cfg.lora beside its
    kernels, drawn as a fresh run of `seed` draws them: B = 0, so the result computes what
    `base` computes; with model.value_head, a new (zero) value head too. Without either,
    `base` itself. (For params in memory; a run directory's are read by `train.init_from`.)"""
    if not cfg.lora.rank and not cfg.value_head:
        return base
    if adapter_count(base):
        raise ConfigError(
            "the base params already hold LoRA adapters; fold them in with merge_adapters "
            "(params, their model config) before adding fresh ones"
        )
    return join(base, fresh_adapters(cfg, seed))


def fresh_adapters(cfg: ModelConfig, seed: int) -> dict:
    """New adapters of cfg.lora (and value head) alone, as a fresh run of `seed` draws them."""
    return _fresh_adapters(cfg, jax.random.key(seed))


def _adapters_of(cfg: ModelConfig, key: jax.Array) -> dict:
    from llmjax.models import init_model

    return split_adapters(init_model(cfg, key)[0])[1]


# Compiled once per config; only the adapters are computed (XLA drops the rest of the init).
_fresh_adapters = jit_once(_adapters_of, static_argnums=0)
