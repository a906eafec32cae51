"""Param shapes of a model and of a run's saved checkpoint, compared before anything is
read: restoring onto other shapes fails deep inside orbax and tensorstore."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import SingleDeviceSharding

from llmjax.config import ModelConfig
from llmjax.models import init_model
from llmjax.runs.rundir import RunDir, RunDirError
from llmjax.runs.steps import step_dirs


def weights_target(model: ModelConfig) -> dict[str, Any]:
    """{"step", "params", "model_state"} of a model's train state as shapes on one device: the
    part of a checkpoint that sampling, evaluation and fine-tuning read."""
    params, model_state = jax.eval_shape(lambda k: init_model(model, k), jax.random.key(0))
    device = SingleDeviceSharding(jax.devices()[0])

    def place(tree: Any) -> Any:
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), tree)

    return {
        "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=device),
        "params": place(params),
        "model_state": place(model_state),
    }


def param_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    return {
        jax.tree_util.keystr(p): tuple(x.shape)
        for p, x in jax.tree_util.tree_leaves_with_path(tree)
    }


def _saved_param_shapes(checkpoints: Path) -> tuple[Path, dict[str, tuple[int, ...]]] | None:
    """(step directory, param shapes) of the newest checkpoint whose metadata reads, from that
    metadata alone (no array is read); None when no step's does (restoring then reports it)."""
    import orbax.checkpoint as ocp

    for _, path in sorted(step_dirs(checkpoints).items(), reverse=True):
        # The item directory orbax's CheckpointManager writes a single (StandardSave) item to.
        item = (path / "default").absolute()  # orbax wants absolute paths
        try:
            handler = ocp.StandardCheckpointHandler()
            try:
                tree = handler.metadata(item).tree
            finally:
                handler.close()
        except Exception:  # noqa: BLE001  (a damaged step: restoring skips or reports it)
            continue
        if isinstance(tree, dict) and isinstance(tree.get("params"), dict):
            return item.parent, param_shapes(tree["params"])
    return None


def check_saved_shapes(
    where: str, run: RunDir, model: ModelConfig, *, adapters_only: bool = False
) -> None:
    """The params of `run`'s newest checkpoint have the shapes its config's `model` gives (only
    its LoRA adapters, with `adapters_only`); raises RunDirError naming config.json and the
    checkpoint otherwise.

    Checked from the checkpoint's metadata before orbax reads any array: restoring onto other
    shapes fails deep inside orbax and tensorstore (or, when the tree differs, hands back
    placeholders for the params it lacks), far from the edited config that caused it.
    """
    saved = _saved_param_shapes(run.checkpoints)
    if saved is None:
        return
    step_dir, have = saved
    params = weights_target(model)["params"]
    if adapters_only:  # what such a run saves: its added params (adapters, value head)
        from llmjax.models.lora import split_adapters

        params = split_adapters(params)[1]
    want = param_shapes(params)
    wrong = _differences(have, want, "in the checkpoint", "from config.json")
    if wrong:
        raise RunDirError(
            f"{where}: the params in {step_dir} do not have the shapes {run.config} describes "
            f"({len(wrong)} differ, e.g. {'; '.join(wrong[:2])}); config.json was changed after "
            f"training. Restore it, or pass a run whose config.json matches its checkpoints"
        )


def _differences(have: dict, want: dict, have_name: str, want_name: str) -> list[str]:
    return [
        f"{k}: {have.get(k, 'missing')} {have_name}, {want.get(k, 'missing')} {want_name}"
        for k in sorted(have.keys() | want.keys())
        if have.get(k) != want.get(k)
    ]
