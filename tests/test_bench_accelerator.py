"""The accelerator benchmark's code path on CPU (`--quick` shapes, fewer pairs): training rows
with MFU and memory, the batch search stopping at the first batch that does not fit (with the
out-of-memory message), decoding against the bandwidth limit, the time budget."""

import json

import jax
import pytest

from experiments import bench_accelerator as bench
from tests.experiment_helpers import read_results

SMALL = ["--quick", "--attention", "auto,flash", "--remat", "none", "--batches", "2",
         "--decode-batches", "1,2", "--steps", "1"]  # fmt: skip


def test_quick_run_reports_training_and_decoding(tmp_path, capsys):
    report = bench.main([*SMALL, "--out-dir", str(tmp_path)])
    assert report["backend"] == "cpu" and report["jax"] == jax.__version__
    train = [r for r in report["rows"] if r["part"] == "train"]
    # The batch search (auto + dots), then the other pairs at that batch.
    assert [(r["attention"], r["remat"]) for r in train] == [
        ("auto", "dots"), ("auto", "none"), ("flash", "none")
    ]  # fmt: skip
    for row in train:
        assert row["fits"] and row["ms_per_step"] > 0 and row["step_memory_gib"] > 0
        assert row["tokens_per_s"] == pytest.approx(2 * 128 / (row["ms_per_step"] / 1e3), 1e-2)
        assert 0 < row["mfu"] < 1
    assert report["best_batch"] == 2
    assert report["best_train"]["tokens_per_s"] == max(r["tokens_per_s"] for r in train)
    decode = [r for r in report["rows"] if r["part"] == "decode"]
    assert [r["batch"] for r in decode] == [1, 2]
    assert all(r["tokens_per_s"] > 0 and r["bandwidth_fraction"] is None for r in decode)
    assert report["skipped"] == [] and report["decode_target_met"] is None
    metrics, rows = read_results(tmp_path / "bench_accelerator")
    assert metrics["best_batch"] == 2 and len(rows) == 5
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert json.loads(printed[-1])["preset"] == "llama-tiny"


def test_batch_search_stops_at_the_first_batch_that_does_not_fit(monkeypatch, tmp_path):
    out_of_memory = jax.errors.JaxRuntimeError(
        "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 123456789012 bytes."
    )

    def compile_step(cfg):
        if cfg.data.batch_size > 2:
            raise out_of_memory
        return compiled(cfg)

    from llmjax.train import bench as train_bench

    compiled = train_bench.compile_step
    monkeypatch.setattr(train_bench, "compile_step", compile_step)
    report = bench.main([*SMALL, "--batches", "2,4,8", "--attention", "auto", "--remat", "dots",
                         "--decode-batches", "1", "--out-dir", str(tmp_path)])  # fmt: skip
    train = [r for r in report["rows"] if r["part"] == "train"]
    assert [(r["batch"], r["fits"]) for r in train] == [(2, True), (4, False)]  # 8 not tried
    assert report["best_batch"] == 2
    error = train[1]["error"]
    assert "out of device memory: XLA asked for an allocation of 115.0 GiB" in error
    assert "data.batch_size=4" in error and "To fit:" in error


def test_budget_skips_what_is_left(tmp_path):
    report = bench.main([*SMALL, "--budget-s", "0", "--out-dir", str(tmp_path)])
    assert report["rows"] == [] and report["best_batch"] is None
    assert report["skipped"] == ["train batch 2", "decode"]


def test_bandwidth_table_and_decode_bytes():
    assert bench.table_bandwidth("NVIDIA H200") == 4.8e12
    assert bench.table_bandwidth("TPU v5 lite") == 819e9
    assert bench.table_bandwidth("cpu") is None
    from llmjax.config import get_preset
    from llmjax.scaling import param_counts

    cfg = get_preset("llama-1b").model
    weights, cache = bench.decode_bytes(cfg, batch=32, prompt=128, new=256)
    assert weights == 2 * param_counts(cfg).total  # bfloat16
    # K and V, 16 layers x 8 KV heads x 64 dims, 256 tokens on average, 32 rows, 2 bytes.
    assert cache == 2 * 2 * 16 * 8 * 64 * 256 * 32
