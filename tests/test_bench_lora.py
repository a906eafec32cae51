"""The LoRA benchmark runs and reports consistent figures (speed itself is not tested)."""

import json

import pytest

from experiments import bench_lora
from tests.experiment_helpers import read_results


def test_bench_lora_quick_reports_state_time_memory_and_packing(tmp_path, capsys):
    result = bench_lora.main(["--quick", "--out-dir", str(tmp_path)])
    full, lora, ratios = result["full_finetune"], result["lora_finetune"], result["ratios"]
    for side in (full, lora):
        assert len(side["step_ms"]) == len(side["step_cpu_ms"]) == 2
        assert side["ms_per_step"] > 0 and side["cpu_ms_per_step"] > 0
        assert side["temp_memory_bytes"] > 0 and side["opt_state_bytes"] > 0
    # Full fine-tuning trains every param; LoRA adds adapters and trains only them, so it has
    # more params, fewer trained ones, and AdamW moments for those alone.
    assert full["trained_params"] == full["params"]
    assert lora["params"] > full["params"] > lora["trained_params"]
    assert lora["opt_state_bytes"] < full["opt_state_bytes"]
    assert lora["opt_state_bytes"] == pytest.approx(8 * lora["trained_params"], abs=64)
    assert 0 < ratios["opt_state"] < 1 and 0 < ratios["trained_params"] < 1
    assert ratios["params_bytes"] > 1
    assert ratios["step_time"] == pytest.approx(lora["ms_per_step"] / full["ms_per_step"], rel=1e-2)
    assert ratios["step_cpu_time"] == pytest.approx(
        lora["cpu_ms_per_step"] / full["cpu_ms_per_step"], rel=1e-2
    )
    assert len(result["lora"]["adapted_kernels"]) == 6  # q, k, v, out, fc_in, fc_out
    pack = result["sft_packing"]
    packed, unpacked = pack["packed"], pack["unpacked"]
    assert unpacked["rows"] == pack["examples"] > packed["rows"]
    assert 0 < unpacked["batch_share_mean"] < packed["batch_share_mean"] <= 1
    assert packed["batch_share_min"] <= packed["batch_share_mean"]
    assert set(result["meets_targets"]) == {"opt_state", "step_time", "packing"}
    metrics, rows = read_results(tmp_path / "bench_lora")
    assert metrics["ratios"] == ratios
    assert [r["method"] for r in rows] == ["full fine-tuning", "LoRA r=8"]
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(printed)["ratios"] == ratios


def test_bench_lora_rejects_bad_flags_and_configs(tmp_path):
    with pytest.raises(SystemExit):
        bench_lora.main(["--steps", "0"])
    with pytest.raises(SystemExit):
        bench_lora.main(["--rank", "0"])
    with pytest.raises(SystemExit, match="unknown preset"):
        bench_lora.main(["--preset", "nope", "--out-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="rank <= "):
        bench_lora.main(["--preset", "test-tiny", "--rank", "64", "--out-dir", str(tmp_path)])
