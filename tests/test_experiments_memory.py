"""The memory experiments in --quick mode: they run and write what they promise."""

import pytest

from experiments import fsdp_memory, remat_memory
from llmjax.models import REMAT_POLICIES
from tests.experiment_helpers import read_results


@pytest.mark.slow
def test_remat_memory_quick(tmp_path):
    metrics, rows = read_results(remat_memory.main(["--quick", "--out-dir", str(tmp_path)]))
    assert [r["policy"] for r in rows] == REMAT_POLICIES.names()
    by_policy = {r["policy"]: r for r in rows}
    assert by_policy["full"]["temp_MB"] < by_policy["none"]["temp_MB"]
    assert metrics["full_temp_reduction"] > 1


@pytest.mark.slow
def test_fsdp_memory_quick(tmp_path):
    metrics, rows = read_results(fsdp_memory.main(["--quick", "--out-dir", str(tmp_path)]))
    assert [r["mesh"] for r in rows] == ["one device", "data=8", "fsdp=8", "data=2,fsdp=2,tensor=2"]
    assert metrics["fsdp8_state_fraction"] <= 1 / 7
    assert metrics["data8_state_fraction"] == 1
