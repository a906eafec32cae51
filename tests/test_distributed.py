"""Multi-process runs as pure functions: initialize arguments, each process's share of a batch."""

import jax
import numpy as np
import pytest

from llmjax import sharding
from llmjax.cli import main
from llmjax.data import train_batch
from llmjax.distributed import DistributedError, distributed_args, process_region

# ----------------------------------------------------------------------------- initialize


def test_one_process_needs_no_initialize():
    assert distributed_args(env={}) is None


def test_auto_lets_jax_detect_the_cluster():
    assert distributed_args(auto=True, env={}) == {}
    assert distributed_args(env={"LLMJAX_DISTRIBUTED": "auto"}) == {}


def test_flags_win_over_environment():
    env = {
        "LLMJAX_COORDINATOR_ADDRESS": "10.0.0.1:1234",
        "LLMJAX_NUM_PROCESSES": "4",
        "LLMJAX_PROCESS_ID": "3",
    }
    assert distributed_args(env=env) == {
        "coordinator_address": "10.0.0.1:1234",
        "num_processes": 4,
        "process_id": 3,
    }
    assert distributed_args(process_id=1, env=env)["process_id"] == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(coordinator="h:1"), "missing: num_processes, process_id"),
        (dict(coordinator="h:1", num_processes=2, process_id=2), r"outside 0\.\.1"),
        (dict(env={"LLMJAX_NUM_PROCESSES": "two"}), "not an integer"),
    ],
)
def test_incomplete_settings_are_named(kwargs, match):
    kwargs.setdefault("env", {})
    with pytest.raises(DistributedError, match=match):
        distributed_args(**kwargs)


# ----------------------------------------------------------------------------- batch slices


def _fake_processes(mesh_spec: str, n_processes: int):
    """The batch sharding of a mesh over 8 devices, as if `n_processes` hosts held them in
    order (devices 0..3 on host 0, ...), and each host's region of a (8, 16) batch."""
    mesh = sharding.make_mesh(mesh_spec)
    placed = sharding.batch_sharding(mesh)
    shape = (8, 16)
    index_map = placed.devices_indices_map(shape)
    per = len(jax.devices()) // n_processes
    hosts = [jax.devices()[p * per : (p + 1) * per] for p in range(n_processes)]
    return [process_region(index_map, devices, shape) for devices in hosts]


@pytest.mark.parametrize("mesh", ["data=2,fsdp=2,tensor=2", "data=8", "fsdp=4,tensor=2"])
def test_each_process_draws_its_own_rows_of_the_global_batch(mesh):
    tokens = np.arange(5000, dtype=np.uint16)
    whole = train_batch(tokens, 7, batch_size=8, seq_len=16, seed=3)
    regions = _fake_processes(mesh, 2)
    assert [r[0] for r in regions] == [slice(0, 4), slice(4, 8)]
    parts = [
        train_batch(tokens, 7, batch_size=8, seq_len=16, seed=3, rows=rows) for rows, _ in regions
    ]
    for key in whole:
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])


def test_a_sequence_split_across_processes_gives_each_its_columns():
    rows, columns = zip(*_fake_processes("sequence=2,tensor=4", 2), strict=True)
    assert rows == (slice(0, 8), slice(0, 8))
    assert columns == (slice(0, 8), slice(8, 16))


def test_interleaved_devices_are_rejected():
    mesh = sharding.make_mesh("data=8")
    index_map = sharding.batch_sharding(mesh).devices_indices_map((8, 16))
    with pytest.raises(DistributedError, match="non-contiguous"):
        process_region(index_map, jax.devices()[::2], (8, 16))


# ----------------------------------------------------------------------------- CLI


def test_cli_reports_a_mesh_that_does_not_fit_the_devices(tiny_text_file, tmp_path, capsys):
    code = main(
        ["train", "--preset", "test-tiny", "--data", str(tiny_text_file), "--mesh", "data=3",
         "--out", str(tmp_path / "run"), "--no-progress"]
    )  # fmt: skip
    assert code == 2
    assert "mesh data=3 has 3 devices but 8 are available" in capsys.readouterr().err
    # Only llmjax's claim on the directory is written, so a rerun needs no --overwrite.
    from llmjax.runs import RunDir

    assert {p.name for p in (tmp_path / "run").iterdir()} <= {"llmjax-manifest.json", "config.json"}
    RunDir.create(tmp_path / "run")


def test_cli_reports_incomplete_multi_process_flags(capsys):
    code = main(["train", "--preset", "test-tiny", "--coordinator", "10.0.0.1:1234"])
    assert code == 2
    assert "missing: num_processes, process_id" in capsys.readouterr().err
