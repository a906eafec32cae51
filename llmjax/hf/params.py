"""Moving parameters between llmjax's scan layout and a family's HF tensor names.

Both directions check every tensor: a missing one, a shape that does not match the config, or a
tensor nobody asked for is an error that names it, rather than a silently wrong model.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import numpy as np

from llmjax.config import ModelConfig
from llmjax.hf.family import HFError, HFFamily
from llmjax.hf.safetensors_io import SafetensorsCheckpoint
from llmjax.models import init_model, stack_layer_params

_LIST_AT_MOST = 8


def abstract_params(cfg: ModelConfig) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of every parameter of `cfg`, by slash path (no arrays are made)."""
    shapes = jax.eval_shape(lambda key: init_model(cfg, key)[0], jax.random.key(0))
    return flatten(shapes)


def flatten(tree: dict[str, Any]) -> dict[str, Any]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(k.key) for k in path): leaf for path, leaf in leaves}


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, leaf in flat.items():
        *parents, last = path.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    return tree


def _listing(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_LIST_AT_MOST])
    return shown + (f" and {len(names) - _LIST_AT_MOST} more" if len(names) > _LIST_AT_MOST else "")


def read_params(
    family: HFFamily, cfg: ModelConfig, ckpt: SafetensorsCheckpoint
) -> dict[str, np.ndarray]:
    """llmjax params (flat, numpy, in cfg.param_dtype) from a HF checkpoint."""
    expected = abstract_params(cfg)
    dtype = np.dtype(cfg.param_dtype)
    available = ckpt.names()
    # A checkpoint of the bare base model (GPT2Model, LlamaModel) lacks the "model." prefix.
    prefix = family.base_prefix
    strip = bool(prefix) and not any(n.startswith(prefix) for n in available)

    def resolve(name: str) -> str:
        return name.removeprefix(prefix) if strip else name

    out: dict[str, np.ndarray] = {}
    used: set[str] = set()
    missing: list[str] = []
    for m in family.tensors(cfg):
        for index in m.slices(cfg):
            name = resolve(m.name(index))
            if name not in available:
                missing.append(name)
                continue
            shape = ckpt.shape(name)
            if shape != m.hf_shape:
                raise HFError(
                    f"tensor {name!r} in {ckpt.file_of(name)} has shape {shape}, but config.json "
                    f"implies {m.hf_shape}; the weights and config.json do not belong together"
                )
            used.add(name)
            for path, part in zip(m.paths, m.to_llmjax(ckpt.read(name)), strict=True):
                want = expected[path].shape
                if not index:
                    out[path] = np.asarray(part, dtype)
                else:
                    out.setdefault(path, np.empty(want, dtype))[index] = part
                got = out[path].shape
                assert got == want, f"{family.model_type} maps {name} to {path} {got} != {want}"
    if missing:
        raise HFError(
            f"{ckpt.directory} lacks {len(missing)} tensor(s) its config.json implies: "
            f"{_listing(missing)}"
        )
    ignored = [re.compile(p) for p in family.ignored]
    if cfg.tie_embeddings:  # some tied checkpoints also store the (identical) head
        ignored.append(re.compile(r"lm_head\.weight"))
    unused = sorted(n for n in available - used if not any(p.fullmatch(n) for p in ignored))
    if unused:
        raise HFError(
            f"{ckpt.directory} has {len(unused)} tensor(s) its config.json does not account for "
            f"({_listing(unused)}); the config and weights disagree (e.g. biases in the weights "
            f"but attention_bias=false in config.json)"
        )
    unmapped = sorted(set(expected) - set(out))
    assert not unmapped, f"{family.model_type} has no HF tensor for {unmapped}"
    return out


def export_layout(
    family: HFFamily, cfg: ModelConfig, params: dict[str, Any]
) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """(config as the family stores it, flat numpy params matching it).

    Converts the loop layout to the scan layout, drops padded vocabulary rows, and adds the
    biases the family has but the model lacks as zeros (adding zero changes nothing).
    """
    if "blocks" not in params and "blocks_0" in params:
        params = stack_layer_params(params, cfg.n_layers)
    flat = {path: np.asarray(jax.device_get(x)) for path, x in flatten(params).items()}
    V = cfg.vocab_size
    if "embed/embedding" in flat:
        flat["embed/embedding"] = flat["embed/embedding"][:V]
    if "lm_head/kernel" in flat:
        flat["lm_head/kernel"] = flat["lm_head/kernel"][:, :V]
    target = family.export_config(dataclasses.replace(cfg, vocab_multiple=1, scan_layers=True))
    expected = abstract_params(target)
    extra = sorted(set(flat) - set(expected))
    if extra:
        raise HFError(
            f"{family.model_type} has no place for parameter(s) {_listing(extra)}; "
            f"export with another --model-type"
        )
    for path, want in expected.items():
        if path not in flat:
            if not path.split("/")[-1].endswith("bias"):
                raise HFError(f"the params have no {path!r}; were they made with this config?")
            flat[path] = np.zeros(want.shape, next(iter(flat.values())).dtype)
        elif flat[path].shape != want.shape:
            raise HFError(
                f"parameter {path!r} has shape {flat[path].shape}, but the config implies "
                f"{want.shape}; were these params made with this config?"
            )
    return target, flat


def write_tensors(
    family: HFFamily, cfg: ModelConfig, flat: dict[str, np.ndarray], dtype: np.dtype
) -> dict[str, np.ndarray]:
    """HF tensor name -> array for params already in `export_layout` form."""
    tensors: dict[str, np.ndarray] = {}
    for m in family.tensors(cfg):
        for index in m.slices(cfg):
            parts = [flat[p][index] for p in m.paths]
            tensor = np.asarray(m.to_hf(*parts), dtype)
            assert tensor.shape == m.hf_shape, f"{m.hf}: {tensor.shape} != {m.hf_shape}"
            tensors[m.name(index)] = tensor
    return tensors
