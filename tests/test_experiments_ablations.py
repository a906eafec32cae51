"""The ablation experiments' --quick runs: the results they write, and the properties their
measurements must show even after a few steps."""

import pytest

from tests.experiment_helpers import read_results


@pytest.mark.slow
def test_optimizers_quick(tmp_path):
    from experiments.optimizers import OPTIMIZERS, main

    metrics, rows = read_results(main(["--quick", "--out-dir", str(tmp_path)]))
    assert [r["setting"] for r in rows] == list(OPTIMIZERS)
    assert all(r["weight_norm"] > 0 for r in rows)
    assert set(metrics["wd_grid"]) == {"adam+L2", "adamw"}


@pytest.mark.slow
def test_normalization_quick(tmp_path):
    from experiments.normalization import main

    _, rows = read_results(main(["--quick", "--out-dir", str(tmp_path)]))
    by = {r["setting"]: r for r in rows}
    for name in ("layernorm pre", "rmsnorm post"):  # causal: nothing from the future
        assert by[name]["future_share_train_mode"] == 0.0
        assert by[name]["padding_shift_train_mode"] < 1e-6
    for name in ("batchnorm pre", "batchnorm post"):  # batch statistics see the future
        assert (
            by[name]["future_share_train_mode"] > 0 and by[name]["other_rows_share_train_mode"] > 0
        )
        assert by[name]["future_share_eval_mode"] == 0.0


@pytest.mark.slow
def test_residuals_quick(tmp_path):
    from experiments.residuals import main

    metrics, rows = read_results(main(["--quick", "--out-dir", str(tmp_path)]))
    assert len(rows) == 6
    deep = {r["variant"]: r for r in rows if r["depth"] == 4}
    # without skips the tokens collapse towards one vector; with them they stay apart
    assert deep["no residual, pre-norm"]["init_rank_one_residual_last"] < 0.5
    assert deep["residual, pre-norm"]["init_rank_one_residual_last"] > 0.8
    assert len(metrics["at_init"]["residual, pre-norm, 4 layers"]["grad_norm_by_layer"]) == 4


@pytest.mark.slow
def test_loss_functions_quick(tmp_path):
    from experiments.loss_functions import LOSSES, main

    metrics, rows = read_results(main(["--quick", "--out-dir", str(tmp_path)]))
    assert [r["setting"] for r in rows] == list(LOSSES)
    assert all(0 <= r["ece"] <= 1 and r["val_nll"] > 0 for r in rows)
    g = metrics["grad_vs_p_target"]  # at the smallest p: brier's gradient has vanished
    assert g["brier"][0] < 1e-3 * g["cross-entropy"][0]


@pytest.mark.slow
def test_positional_encodings_quick(tmp_path):
    from experiments.positional_encodings import POSITIONS, main

    metrics, rows = read_results(main(["--quick", "--out-dir", str(tmp_path)]))
    assert [r["part"] for r in rows] == ["text"] * 5 + ["reverse"] * 5 + ["sort"] * 5
    text = {r["setting"]: r for r in rows if r["part"] == "text"}
    assert set(text) == set(POSITIONS)
    assert text["learned"]["loss_beyond"] == "nan"  # no table rows beyond the trained context
    assert all(text[p]["loss_beyond"] > 0 for p in ("sinusoidal", "rope", "alibi", "none"))
    assert metrics["loss_by_position_seed0"]["learned"] is None
    assert all(0 <= r["token_accuracy"] <= 1 for r in rows if r["part"] != "text")
