"""Loading a run's weights for sampling, evaluation, export or fine-tuning (no optimizer)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from llmjax.config import Config, load_config
from llmjax.data import Tokenizer, load_tokenizer
from llmjax.models import build_model
from llmjax.models.lora import merge_adapters
from llmjax.runs.checkpoint import Checkpointer
from llmjax.runs.generation import read_eos_ids
from llmjax.runs.init_from import read_params, saves_adapters_only
from llmjax.runs.rundir import RunDir, RunDirError
from llmjax.runs.shapes import check_saved_shapes


@dataclass
class LoadedRun:
    """A trained model ready for sampling or evaluation."""

    run: RunDir
    config: Config
    tokenizer: Tokenizer
    params: Any
    model_state: dict
    step: int
    # Ids generation stops at, from generation_config.json (a converted HF chat model's EOS
    # list); empty: the tokenizer's EOS.
    eos_ids: tuple[int, ...] = ()

    @property
    def model(self):
        return build_model(self.config.model)

    def merged(self) -> LoadedRun:
        """The run with its LoRA adapters folded into the weights (the same function, decoded
        at the base model's speed); itself when it has none."""
        if not self.config.model.lora.rank:
            return self
        params, model = merge_adapters(self.params, self.config.model)
        cfg = dataclasses.replace(self.config, model=model)
        return dataclasses.replace(self, config=cfg, params=params)


def save_weights(run: RunDir, step: int, params: Any, model_state: dict | None = None) -> None:
    """Writes a checkpoint of params alone (no optimizer state) at `step`: what `load_run`
    and init-from read, e.g. of a model converted from another library."""
    weights = {
        "step": jnp.asarray(step, jnp.int32),
        "params": params,
        "opt_state": None,
        "model_state": model_state or {},
    }
    with Checkpointer(run.checkpoints, keep=1, async_save=False) as ckpt:
        ckpt.save(step, weights)


def load_run(path: str | Path, step: int | None = None) -> LoadedRun:
    """Config, tokenizer and params of a run directory (its newest restorable checkpoint)."""
    run = RunDir.open(path)
    cfg = load_config(run.config)
    if not run.tokenizer.exists():
        raise RunDirError(f"{run.path} has no tokenizer.json; it was not written by llmjax train")
    adapters_only = saves_adapters_only(cfg)
    check_saved_shapes(str(path), run, cfg.model, adapters_only=adapters_only)
    tokenizer = load_tokenizer(run.tokenizer)
    have, want = tokenizer.vocab_size, cfg.model.vocab_size
    # A run trains on its tokenizer's exact vocabulary; a converted one may have more
    # embedding rows than its tokenizer has ids, never fewer.
    if have > want or (tokenizer.kind in ("byte", "char") and have != want):
        raise RunDirError(
            f"{path}: {run.tokenizer} has {have} token ids but the model in {run.config} has "
            f"{want}, so it is not the tokenizer this run was trained with; restore the run's "
            f"own tokenizer.json"
        )
    # Sampling and evaluation need no optimizer state: it is not read (two thirds of a trained
    # AdamW run's bytes), and runs made by `llmjax convert` do not store one.
    try:
        eos_ids = read_eos_ids(run.generation_config, cfg.model.vocab_size)
    except ValueError as e:
        raise RunDirError(str(e)) from None
    params, model_state, step = read_params(run, cfg, step)
    return LoadedRun(run, cfg, tokenizer, params, model_state, step, eos_ids)
