"""The training benchmark runs and reports consistent figures (speed itself is not tested)."""

import pytest

from experiments import bench_train


def test_bench_train_reports_step_time_throughput_and_mfu(monkeypatch, capsys):
    monkeypatch.setenv("LLMJAX_PEAK_FLOPS", "1e11")  # skip timing a matmul
    result = bench_train.main(["--preset", "test-tiny", "--steps", "2", "--warmup", "1"])
    tokens = result["batch_size"] * result["seq_len"]
    assert result["tokens_per_s"] == pytest.approx(tokens / result["ms_per_step"] * 1e3, rel=1e-2)
    assert result["matmul_peak_gflops"] == pytest.approx(100.0)
    assert result["mfu"] == pytest.approx(result["achieved_gflops"] / 100.0, rel=1e-2)
    assert result["loss_first_last"][1] < result["loss_first_last"][0]
    assert '"ms_per_step"' in capsys.readouterr().out


def test_bench_train_rejects_bad_flags():
    with pytest.raises(SystemExit):
        bench_train.main(["--steps", "0"])
    with pytest.raises(SystemExit):
        bench_train.main(["--cpu-devices", "2"])  # JAX is already imported in this process
