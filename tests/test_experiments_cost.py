"""The cost and precision experiments in --quick mode: they run and write what they promise."""

import pytest

from experiments import mixed_precision, training_cost
from tests.experiment_helpers import read_results


def test_training_cost_quick(tmp_path):
    metrics, rows = read_results(training_cost.main(["--quick", "--out-dir", str(tmp_path)]))
    assert metrics["max_formula_vs_xla_error"] < 0.10
    seq = [r for r in rows if r["sweep"] == "seq"]
    shares = [r["attention_share"] for r in seq]
    assert shares == sorted(shares) and shares[-1] > shares[0]
    width = [r for r in rows if r["sweep"] == "width"]
    assert [r["d_model"] for r in width] == sorted(r["d_model"] for r in width)
    assert all(r["step_s"] > 0 and r["temp_MB"] > 0 for r in rows)


@pytest.mark.slow
def test_mixed_precision_quick(tmp_path):
    metrics, rows = read_results(mixed_precision.main(["--quick", "--out-dir", str(tmp_path)]))
    assert [r["setting"] for r in rows] == ["fp32", "bf16", "fp16", "fp16+scaling"]
    fidelity = metrics["gradient_fidelity"]["init"]
    assert fidelity["fp32"]["rel_error"] == 0
    # Scaling keeps float16's small gradients: fewer underflow than without it.
    assert fidelity["fp16+scaling"]["underflow"] < fidelity["fp16"]["underflow"]
    assert all(len(v) == len(metrics["losses"]["fp32"]) for v in metrics["losses"].values())
    assert all(s is not None for s in metrics["loss_scale"])
