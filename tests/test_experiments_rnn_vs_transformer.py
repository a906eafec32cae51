"""The transformer-against-RNN experiment's --quick run: what it writes and the properties its
measurements show even after a few steps."""

import math

import pytest

from tests.experiment_helpers import read_results


@pytest.mark.slow
def test_rnn_vs_transformer_quick(tmp_path):
    from experiments.rnn_vs_transformer import ARCHS, QUICK, main

    metrics, rows = read_results(main(["--quick", "--out-dir", str(tmp_path)]))
    parts = {p: [r for r in rows if r["part"] == p] for p in ("text", "throughput", "recall")}
    assert [r["setting"] for r in parts["text"]] == list(ARCHS)
    assert [r["setting"] for r in parts["recall"]] == list(ARCHS)
    for part in ("text", "recall"):  # equal parameter counts, within 3%
        counts = metrics[part]["params"]
        assert all(abs(counts[a] / counts["transformer"] - 1) < 0.03 for a in ARCHS), counts
    for r in parts["text"]:
        assert 0 < r["val_loss"] < 1.2 * math.log(259) and r["train_s"] > 0
    assert len(parts["throughput"]) == len(ARCHS) * len(QUICK["lengths"])
    for r in parts["throughput"]:
        assert r["batch_size"] * r["seq_len"] == QUICK["tokens_per_batch"]
        assert r["tokens_per_s"] > 0 and r["compile_s"] > 0
    # Gradients from the last position's loss: causal, so every distance 0 .. T-1 gets some;
    # attention's are flat in the distance, a recurrence's shrink by orders of magnitude.
    seq_len = metrics["text"]["context"]
    gradients = metrics["text"]["gradient_by_distance"]
    for arch in ARCHS:
        for when in ("init", "trained"):
            g = gradients[arch][when]
            assert len(g) == seq_len and min(g) > 0
    decay = {a: gradients[a]["init"][-1] / gradients[a]["init"][1] for a in ARCHS}
    assert decay["transformer"] > 0.3 and decay["lstm"] < 1e-2 and decay["gru"] < 1e-2, decay
    for r in parts["recall"]:
        assert 0 <= r["accuracy"] <= 1 and r["answer_loss"] > 0
    for arch, b in metrics["recall"]["accuracy_by_distance"].items():
        assert len(b["accuracy_per_seed"]) == 1 and len(b["low"]) == len(b["high"]) > 1, arch
    assert set(metrics["findings"]["val_loss_at_equal_steps"]) == set(ARCHS)
