"""The instability experiment's --quick run: what it writes, and what its measurements must
show even after a few steps."""

import math

import pytest

from tests.experiment_helpers import read_results


@pytest.mark.slow
def test_instability_quick(tmp_path):
    from experiments.instability import QUICK, main

    metrics, rows = read_results(main(["--quick", "--out-dir", str(tmp_path)]))
    assert [r["setting"] for r in rows] == [*QUICK["grid"], *QUICK["factors"]]
    cells = {c["setting"]: c for c in metrics["cells"]}
    vocab = 259  # bytes and the special tokens
    for cell in cells.values():
        # small init: the first loss is a uniform guess's; probes after step 1, 3 and 6
        assert abs(cell["initial_loss"] - math.log(vocab)) < 0.3
        assert [p["step"] for p in cell["probes"]] == [1, 3, 6]
        assert len(cell["attention_logit_by_layer"]) == 2
        assert math.isfinite(cell["val_loss"]) and not cell["diverged"]
        assert cell["spikes"] >= 0 and cell["nonfinite_steps"] >= 0
        assert cell["max_attention_logit"] >= max(cell["attention_logit_by_layer"])
    # QK-norm: unit-RMS queries and keys keep q.k / sqrt(H) near sqrt(H); without it the
    # logits start near 0 (init std 0.02)
    head_dim = QUICK["head_dim"]
    assert cells["qk-norm"]["max_attention_logit"] < 2 * math.sqrt(head_dim)
    assert cells["qk-norm"]["max_attention_logit"] > 3 * cells["baseline"]["max_attention_logit"]
    # one lr: nothing to be sensitive over
    assert all(r["lr_sensitivity"] == 0.0 and r["diverged"] == 0 for r in rows)
    assert [r["setting"] for r in metrics["seed_comparison"]] == [
        f"{name} lr={QUICK['seed_lrs'][0]:g}" for name in QUICK["seed_settings"]
    ]
    assert len(cells["baseline"]["losses"]) == 6
