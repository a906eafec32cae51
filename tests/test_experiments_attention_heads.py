"""The attention-heads experiment's --quick run: what it writes, and the properties its head
scores, ablations and pruning curves must have even after a few steps."""

import numpy as np
import pytest

from tests.experiment_helpers import read_results


@pytest.mark.slow
def test_attention_heads_quick(tmp_path):
    from experiments.attention_heads import QUICK, TOLERANCE, main
    from llmjax.analysis.heads import KINDS

    metrics, rows = read_results(main(["--quick", "--out-dir", str(tmp_path)]))
    text = sorted((r for r in rows if r["part"] == "text"), key=lambda r: r["heads"])
    assert [r["heads"] for r in text] == sorted(QUICK["heads"])
    assert all(r["val_loss"] > 0 and r["lr"] in QUICK["lrs"] for r in rows)
    for name in ("text", "copy"):
        a = metrics[name]["analysis"][0]
        heads = a["heads"]
        layers = len(a["kinds"])
        assert np.shape(a["previous_token"]) == np.shape(a["ablation"]) == (layers, heads // layers)
        for score in ("previous_token", "induction", "first_token", "positional_peak"):
            assert np.min(a[score]) >= 0.0 and np.max(a[score]) <= 1.0 + 1e-6
        assert all(k.split(" ")[0] in KINDS for row in a["kinds"] for k in row)
        assert sum(a["kind_counts"].values()) == heads
        # pruning: every head once; the first removal is the cheapest single ablation
        assert sorted(map(tuple, a["pruning_order"])) == sorted(
            (i, j) for i in range(layers) for j in range(heads // layers)
        )
        choosing = np.asarray(a["pruning_losses_choosing_batch"])
        assert len(choosing) == len(a["pruning_losses"]) == heads + 1
        np.testing.assert_allclose(choosing[1] - choosing[0], np.min(a["ablation"]), atol=1e-5)
        held = np.asarray(a["pruning_losses"])
        over = np.nonzero(held - held[0] > TOLERANCE)[0]
        assert a["removable"] == (over[0] - 1 if over.size else heads)
        distance = np.asarray(a["mean_distance"])
        assert np.all(distance >= 0) and np.all(distance <= QUICK["task"]["seq_len"] - 1)
        probes = metrics[name]["probes"][0]
        steps = [p["step"] for p in probes]
        assert steps == sorted(steps) and steps[-1] == 4
        assert all(np.shape(p["induction"]) == np.shape(a["ablation"]) for p in probes)
    for name, rows_of, task in (("copy", "train", QUICK["task"]), ("copy", "probe", QUICK["probe"]),
                                ("text", "probe", QUICK["probe"])):  # fmt: skip
        by = metrics[name]["analysis"][0][f"loss_by_period_{rows_of}"]
        periods = {int(k) for k in by}
        assert periods <= set(range(task["min_block"], task["max_block"] + 1))
        assert len(periods) > 1 and all(v > 0 for v in by.values())
