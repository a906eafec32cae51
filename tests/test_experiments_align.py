"""The alignment experiments in --quick mode: they run and write what they promise."""

from pathlib import Path

import pytest

from experiments import reward_hacking, rlhf
from tests.experiment_helpers import read_results


@pytest.mark.slow
def test_rlhf_quick(tmp_path):
    out = Path(rlhf.main(["--quick", "--out-dir", str(tmp_path)])["results_dir"])
    metrics, rows = read_results(out)
    assert [r["method"] for r in rows] == list(rlhf.METHODS)
    by_method = {r["method"]: r for r in rows}
    # SFT against itself: an even win rate, no KL.
    assert by_method["SFT"]["win_vs_SFT"] == 0.5 and by_method["SFT"]["KL_vs_SFT"] == 0
    for row in rows:
        assert 0 <= row["gold"] <= 1.5 and 0 <= row["win_vs_SFT"] <= 1
    stages = metrics["seeds"][0]["stages"]
    assert 0 <= stages["rm"]["heldout_accuracy"] <= 1
    assert set(metrics["chosen_lr"]) == {"sft", "rm", "dpo", "ppo", "grpo"}
    assert not (tmp_path / "rlhf" / "runs" / "seed1").exists()  # one seed in --quick


@pytest.mark.slow
def test_reward_hacking_quick(tmp_path):
    out = Path(reward_hacking.main(["--quick", "--out-dir", str(tmp_path)])["results_dir"])
    metrics, rows = read_results(out)
    seed = metrics["seeds"][0]
    for name, points in seed["curves"].items():
        assert points[0]["step"] == 0 and len(points) >= 2, name  # probed from the start
        assert abs(points[0]["kl"]) < 1e-4  # the policy starts as SFT
    accuracy = seed["rm_accuracy"]
    assert {"proxy RM, like training", "full RM, unlike replies"} <= set(accuracy)
    assert set(seed["unlike_prompts"]) == {"SFT", *seed["curves"]}
