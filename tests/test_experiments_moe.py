"""The quick runs of experiments.moe_vs_dense (slow suite) and experiments.bench_moe."""

import pytest

from tests.experiment_helpers import read_results


@pytest.mark.slow
def test_moe_vs_dense_quick(tmp_path):
    from experiments.moe_vs_dense import main

    out = main(["--quick", "--out-dir", str(tmp_path)])
    metrics, rows = read_results(out)
    by = {r["setting"]: r for r in rows}
    assert set(by) == {"dense, equal active", "dense, equal total", "MoE top-2, aux loss",
                       "MoE top-2, no aux loss"}  # fmt: skip
    # Equal active parameters (up to the router), equal total (up to the router).
    moe, active, total = (
        by["MoE top-2, aux loss"],
        by["dense, equal active"],
        by["dense, equal total"],
    )
    assert (
        0
        < moe["active_matmul_params"] - active["active_matmul_params"]
        < 0.05 * active["active_matmul_params"]
    )
    assert 0 < moe["total_params"] - total["total_params"] < 0.05 * total["total_params"]
    assert all(r["diverged"] == 0 for r in rows)
    cv = metrics["extra"]["MoE top-2, aux loss"][0]["moe_load_cv"]
    assert cv and all(v >= 0 for _, v in cv)
    assert "moe_load_cv" not in metrics["extra"]["dense, equal active"][0]
    assert (out / "moe_vs_dense.png").stat().st_size > 1000


def test_bench_moe_quick_reports_the_layout_it_ran(tmp_path):
    from experiments.bench_moe import main
    from llmjax.layers import grouped

    result = main(["--quick", "--out-dir", str(tmp_path)])
    assert result["kernel"] == "auto"
    # The tests run on 8 simulated devices: the custom call has no sharding rule, so blocks.
    want = "blocks" if grouped.kernel_unavailable() else "cpu"
    assert result["grouped_layout"] == want
    assert result["moe_over_dense_time"] > 0 and isinstance(result["meets_target"], bool)
    assert result["moe_active_matmul_params"] > result["dense_active_matmul_params"]
    assert result["moe_total_params"] > result["dense_total_params"]
    assert (tmp_path / "bench_moe" / "metrics.json").exists()
    forced = main(["--quick", "--out-dir", str(tmp_path), "--set", "model.moe.kernel=blocks"])
    assert forced["grouped_layout"] == "blocks"
    # The same steps on the same tokens: the layout does not change the losses.
    assert forced["moe_loss_first_last"] == result["moe_loss_first_last"]
