"""Whole runs on a mesh: a run moves to another mesh on resume, and loads on one device."""

import logging

import jax
import numpy as np
import pytest

from llmjax.config import PRESETS, apply_overrides
from llmjax.runs import load_run
from llmjax.train.fit import fit


@pytest.fixture
def mesh_cfg(tiny_text_file):
    return apply_overrides(
        PRESETS["test-tiny"],
        [
            f"data.path={tiny_text_file}",
            "model.n_heads=8",
            "data.batch_size=8",
            "train.steps=4",
            "train.checkpoint_every=2",
            "train.eval_every=4",
            "train.eval_batches=1",
            "train.log_every=1",
            "train.mfu=false",
            "optim.eps=1e-6",  # see test_sharding.TINY
            "parallel.mesh=data=2,fsdp=2,tensor=2",
        ],
    )


def test_a_run_resumes_on_another_mesh_and_loads_on_one_device(mesh_cfg, tmp_path):
    full = fit(mesh_cfg, tmp_path / "full", progress=False)
    # A vocabulary of 259 bytes does not divide over tensor=2: the run pads it, and saves that.
    assert full.config.model.padded_vocab_size == 384

    fit(mesh_cfg, tmp_path / "split", progress=False, stop_after=2)
    other_mesh = apply_overrides(mesh_cfg, ["parallel.mesh=fsdp=4,tensor=2"])
    resumed = fit(other_mesh, tmp_path / "split", resume=True, progress=False)
    assert int(resumed.state.step) == 4
    table = resumed.state.params["embed"]["embedding"]
    assert {s.data.shape for s in table.addressable_shards} == {(192, 8)}  # the new mesh's
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
        jax.device_get(full.state.params),
        jax.device_get(resumed.state.params),
    )

    loaded = load_run(tmp_path / "split")
    assert loaded.step == 4
    assert all(len(x.sharding.device_set) == 1 for x in jax.tree.leaves(loaded.params))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.state.params), loaded.params)


@pytest.mark.parametrize("mesh", [None, "data=2,fsdp=2,tensor=2"], ids=["one-device", "mesh"])
def test_a_fresh_run_compiles_each_step_once(mesh_cfg, mesh, tmp_path, caplog):
    """The steps compiled ahead of the first call (on other threads) are the ones the run
    uses: with the wrong stand-in shapes or shardings, each step would compile twice."""
    cfg = apply_overrides(mesh_cfg, ["train.steps=1", "train.eval_every=1"])
    if mesh is None:
        cfg = apply_overrides(cfg, ["parallel.mesh="])
    caplog.set_level(logging.WARNING, logger="jax._src.interpreters.pxla")
    # Globally, not jax.log_compiles(): the steps compile on other threads.
    jax.config.update("jax_log_compiles", True)
    try:
        fit(cfg, tmp_path / "run", progress=False)
    finally:
        jax.config.update("jax_log_compiles", False)
    compiled = [r.getMessage().split(" with ")[0] for r in caplog.records]
    assert compiled.count("Compiling jit(train_step)") == 1, compiled
    assert compiled.count("Compiling jit(eval_step)") == 1, compiled
