"""The instruction-tuning experiment in --quick mode: it runs and writes what it promises."""

import pytest

from experiments import instruction_tuning
from tests.experiment_helpers import read_results


@pytest.mark.slow
def test_instruction_tuning_quick(tmp_path):
    out = instruction_tuning.main(["--quick", "--out-dir", str(tmp_path)])
    metrics, rows = read_results(out)
    by_method = {r["method"]: r for r in rows}
    assert list(by_method) == ["base (before SFT)", "full", "full, all tokens", "LoRA r=4"]
    base = by_method.pop("base (before SFT)")
    # The base never saw an end-of-reply token in pretraining, so it never stops a reply.
    assert base["exact_a"] == base["exact_b"] == base["exact_c"] == 0
    for method, row in by_method.items():
        assert 0 <= row["exact_a"] <= row["answer_a"] <= 1, method
        assert row["reply_loss_a"] < base["reply_loss_a"], method  # SFT learnt the replies
        assert row["seeds"] == 1 and row["lr"] in metrics["settings"]["lrs"]
        assert row["ms_per_step"] > 0 and row["xla_temp_KB"] > 0
        # Adam keeps two float32 moments per trained param (and a few counters).
        assert row["opt_state_KB"] == pytest.approx(8 * row["trained_params"] / 1e3, abs=0.1)
    full, lora = by_method["full"], by_method["LoRA r=4"]
    assert by_method["full, all tokens"]["trained_params"] == full["trained_params"]
    assert full["params_KB"] == pytest.approx(4 * full["trained_params"] / 1e3)
    assert lora["trained_params"] < full["trained_params"] / 5
    assert lora["params_KB"] > full["params_KB"]  # the base weights and the adapters
    assert set(metrics["lr_grid_val"]) == set(by_method)
    tasks = metrics["by_task_exact"]["full"]
    assert {"lookup (c)", "subtract (c)"} <= set(tasks) and "count (a)" in tasks
    assert metrics["pretraining"]["steps"] == metrics["settings"]["pretrain_steps"]
    data = metrics["data"]
    assert data["sft_all"]["trained_tokens"] > 3 * data["sft_responses"]["trained_tokens"]
    assert data["val_examples"] == data["a_examples"] == metrics["settings"]["eval_examples"]
