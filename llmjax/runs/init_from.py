"""Starting a run from another run's params (fine-tuning), with a fresh optimizer state.

The source is any run directory: one `llmjax train` wrote, or one `llmjax convert` made from a
Hugging Face checkpoint. The new run takes the source's tokenizer and newest params; its model
config must give the same parameter shapes (settings that change no shape, such as dropout,
remat, the attention kernel or the compute dtype, may differ). The source is only read.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from llmjax.config import Config, ModelConfig, load_config
from llmjax.runs.checkpoint import Checkpointer
from llmjax.runs.rundir import RunDir, RunDirError
from llmjax.runs.shapes import check_saved_shapes, param_shapes, weights_target

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """A run directory to start from, and its saved config."""

    path: str | Path  # as given, for messages
    run: RunDir
    config: Config


def open_source(path: str | Path) -> Source:
    """The source run directory and its config, checked to hold what a start needs."""
    run = RunDir.open(path)
    if not run.tokenizer.is_file():
        raise RunDirError(
            f"train.init_from={path} has no tokenizer.json, so its token ids mean nothing to a "
            f"new run; pass a directory written by `llmjax train` or `llmjax convert`"
        )
    if not run.checkpoints.is_dir():
        raise RunDirError(
            f"train.init_from={path} has no checkpoints/ directory; pass a run that saved at "
            f"least one checkpoint"
        )
    config = load_config(run.config)
    check_saved_shapes(
        f"train.init_from={path}", run, config.model, adapters_only=saves_adapters_only(config)
    )
    return Source(path, run, config)


def init_from_config(source: str | Path, base: Config | None = None) -> Config:
    """The config of a run starting from `source`: `base` (default: the source's own config)
    with the source's model section and tokenizer, and train.init_from set to the source."""
    src = open_source(source)
    cfg = src.config if base is None else base
    return dataclasses.replace(
        cfg,
        model=src.config.model,
        # The source saved the length its own schedule spanned; a new run spans its own steps.
        optim=dataclasses.replace(cfg.optim, schedule_steps=None),
        data=dataclasses.replace(cfg.data, tokenizer=str(src.run.tokenizer.absolute())),
        train=dataclasses.replace(cfg.train, init_from=str(src.run.path.absolute())),
    )


def check_not_overwritten(source: Source, out: str | Path | None) -> None:
    """A run may not be written over the run it starts from (--overwrite would delete it)."""
    if out is not None and Path(out).resolve() == source.run.path.resolve():
        raise RunDirError(
            f"train.init_from and the output directory are both {out}; starting there would "
            f"replace the params being read. Choose another --out"
        )


def saves_adapters_only(cfg: Config) -> bool:
    """Whether the checkpoints of a run of `cfg` hold its LoRA adapters without the base
    weights: a LoRA run started from another run, which holds those weights."""
    return bool(cfg.model.lora.rank) and bool(cfg.train.init_from)


def restore_params(
    source: Source,
    model: ModelConfig,
    target: Any,
    target_model_state: Any,
    *,
    seed: int = 0,
    step: int | None = None,
) -> tuple[Any, dict[str, Any], int]:
    """(params, model_state, step) of the source's checkpoint `step` (default: the newest that
    restores), restored onto `target` (abstract params with the new run's shardings), after
    checking the shapes.

    LoRA: a source with other adapters than `model.lora` (or none) gives its weights with its
    adapters merged in, and this run's adapters start fresh (from `seed`): B = 0, so the start
    computes what the source computes. A source that saved only adapters is read with its own
    base.
    """
    from llmjax.models.lora import join, merge_adapters, split_adapters

    run, saved = source.run, source.config
    if saved.model.vocab_size != model.vocab_size:
        raise RunDirError(
            f"train.init_from={source.path} has a vocabulary of {saved.model.vocab_size} ids and "
            f"this run's tokenizer {model.vocab_size}; a run that starts from another uses its "
            f"tokenizer (leave data.tokenizer unset, or pass that run's tokenizer.json)"
        )
    # The source's adapters and value head carry over when this run has the same ones; else
    # its adapters are merged into its weights, its value head dropped, and this run's start
    # fresh.
    same_added = saved.model.lora == model.lora and saved.model.value_head == model.value_head
    base_target, adapter_target = (target, {}) if same_added else split_adapters(target)
    have = weights_target(saved.model)["params"]
    have_base = have if same_added else split_adapters(have)[0]
    resized = _check_shapes(source.path, saved.model, model, have_base, base_target)
    merging = bool(saved.model.lora.rank) and not same_added
    if saves_adapters_only(saved):  # its base lives in its own init-from run
        params, model_state, step = read_params(run, saved, step)
        restored = {"model_state": model_state}
        resized = True  # placed below
    else:
        with Checkpointer(run.checkpoints, read_only=True) as ckpt:
            # Params whose padded vocabulary differs (a mesh may pad it further) are read whole
            # and then cut or padded; the padding rows' logits are masked, so their values never
            # matter. Adapters to merge are read with their base onto one device first.
            onto = have if resized or merging else base_target
            restored, step = ckpt.restore(
                {"params": onto, "model_state": target_model_state}, step, partial=True
            )
        params = restored["params"]
    if merging:
        params, _ = merge_adapters(params, saved.model)
    if not same_added:
        params = split_adapters(params)[0]
    if resized or merging:
        params = jax.tree.map(_fit_to, params, base_target)
    if adapter_target:
        params = join(params, fresh_adapters(model, seed, adapter_target))
    log.info("starting from %s at its step %d", run.path, step)
    return params, restored["model_state"], step


def read_params(run: RunDir, cfg: Config, step: int | None = None) -> tuple[Any, dict, int]:
    """(params, model_state, step) of `run`'s checkpoint `step` (default: the newest that
    restores), on one device; a run of `cfg` that checkpoints LoRA adapters alone gets them
    joined with their base weights."""
    from llmjax.models.lora import join, split_adapters

    adapters_only = saves_adapters_only(cfg)
    whole = weights_target(cfg.model)
    target = whole
    if adapters_only:  # the base weights come from the run it started from
        target = {**whole, "params": split_adapters(whole["params"])[1]}
    with Checkpointer(run.checkpoints, read_only=True) as ckpt:
        restored, step = ckpt.restore(target, step, partial=True)
        meta = ckpt.meta(step)
    params = restored["params"]
    if adapters_only:
        base_step = (meta.get("base") or {}).get("step")
        base = base_weights(
            cfg, base_step, whole["params"], whole["model_state"], where=str(run.path)
        )
        params = join(base, params)
    return params, restored["model_state"], step


def base_weights(
    cfg: Config, base_step: int | None, target: Any, target_model_state: Any, *, where: str
) -> Any:
    """The base weights (without adapters) under the LoRA adapters of a run of `cfg` whose
    checkpoints hold only adapters: step `base_step` of its train.init_from run, placed as
    `target` (the run's whole abstract params) says."""
    from llmjax.models.lora import split_adapters
    from llmjax.runs.checkpoint import CheckpointError

    at = "its newest step" if base_step is None else f"step {base_step}"
    try:
        params, _, _ = restore_params(
            open_source(cfg.train.init_from), cfg.model, target, target_model_state, step=base_step
        )
    except (RunDirError, CheckpointError) as e:
        raise RunDirError(
            f"{where} holds LoRA adapters only; their base weights are {at} of "
            f"train.init_from={cfg.train.init_from}, which cannot be read ({e}). Restore that run "
            f"(or that checkpoint) to use these adapters"
        ) from None
    return split_adapters(params)[0]


def fresh_adapters(model: ModelConfig, seed: int, target: Any) -> Any:
    """New LoRA adapters of `model` (as a fresh run of `seed` draws them), placed as `target`
    says."""
    from llmjax.models.lora import fresh_adapters as draw

    return jax.device_put(draw(model, seed), jax.tree.map(lambda t: t.sharding, target))


def _fit_to(x: jax.Array, want: jax.ShapeDtypeStruct) -> jax.Array:
    """x cut or zero-padded at the end of each axis to `want`'s shape, placed as `want` says."""
    x = np.asarray(jax.device_get(x))
    x = x[tuple(slice(0, n) for n in want.shape)]
    x = np.pad(x, [(0, n - m) for m, n in zip(x.shape, want.shape, strict=True)])
    return jax.device_put(x.astype(want.dtype), want.sharding)


def _check_shapes(source, saved: ModelConfig, model: ModelConfig, have: Any, want: Any) -> bool:
    """Whether some params differ only in their padded vocabulary; raises if any differ
    otherwise."""
    have, want = param_shapes(have), param_shapes(want)
    vocab = {saved.padded_vocab_size, model.padded_vocab_size}

    def padding_only(a: tuple[int, ...] | None, b: tuple[int, ...] | None) -> bool:
        return (
            a is not None
            and b is not None
            and len(a) == len(b)
            and all(m == n or {m, n} == vocab for m, n in zip(a, b, strict=True))
        )

    differ = [k for k in sorted(have.keys() | want.keys()) if have.get(k) != want.get(k)]
    wrong = [
        f"{k}: {have.get(k, 'missing')} in the source, {want.get(k, 'missing')} here"
        for k in differ
        if not padding_only(have.get(k), want.get(k))
    ]
    if not wrong:
        return bool(differ)
    changed = [
        f"model.{f.name} ({getattr(saved, f.name)!r} -> {getattr(model, f.name)!r})"
        for f in dataclasses.fields(saved)
        if getattr(saved, f.name) != getattr(model, f.name) and f.name != "vocab_multiple"
    ]
    raise RunDirError(
        f"train.init_from={source} has params of other shapes than this run's model "
        f"({len(wrong)} differ, e.g. {'; '.join(wrong[:3])}). Changed model settings: "
        f"{', '.join(changed) or 'none'}; drop those --set model.* options (the model section "
        f"comes from the source run)"
    )
