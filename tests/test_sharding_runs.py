"""Whole runs on a mesh: a run moves to another mesh on resume, and loads on one device."""

import jax
import numpy as np
import pytest

from llmjax.config import PRESETS, apply_overrides
from llmjax.train.loop import fit, load_run


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
