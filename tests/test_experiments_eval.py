"""The evaluation experiments' --quick runs: the results they write and the properties their
measurements must show even on an untrained model."""

import json

import pytest


@pytest.mark.slow
def test_autoregressive_quick(tmp_path):
    from experiments.autoregressive import main

    m = main(["--quick", "--out-dir", str(tmp_path)])
    assert m["chain_rule"]["max_abs_seq_diff"] < 1e-4  # log p(x) = sum of the step log-probs
    for row in m["sampling"]["contexts"]:  # samples follow the softmax
        assert row["tv"] < 2 * row["tv_exact_sampling_p95"]
    assert len(m["context"]["transformer"]) == 128
    saved = json.loads((tmp_path / "autoregressive" / "metrics.json").read_text())
    assert saved["quick"] and saved["rows"]
    assert (tmp_path / "autoregressive" / "autoregressive.png").exists()


@pytest.mark.slow
def test_ngram_vs_transformer_quick(tmp_path):
    from experiments.ngram_vs_transformer import METHODS, main

    m = main(["--quick", "--out-dir", str(tmp_path)])
    bpb = {r["model"]: r["bpb"] for r in m["rows"]}
    assert bpb["3-gram Kneser-Ney"] < bpb["1-gram Kneser-Ney"] < 8.1  # uniform is log2(259)
    assert len(m["runs"]) == 1 and m["runs"][0]["train_tokens"] == 4 * 16 * 64
    (adapted,) = m["adaptation"]  # one seed: the four designs, each scored on both tasks
    assert {k: sorted(v) for k, v in adapted["exact_match"].items()} == {
        name: ["add", "reverse"] for name in METHODS
    }
    assert [r["model"] for r in m["task_rows"]] == list(METHODS)
    assert all(0 <= r["mean exact match"] <= 1 for r in m["task_rows"])
    assert (tmp_path / "ngram_vs_transformer" / "ngram_vs_transformer.png").exists()


@pytest.mark.slow
def test_scaling_laws_quick(tmp_path):
    from experiments.scaling_laws import main

    m = main(["--quick", "--out-dir", str(tmp_path)])
    assert len(m["runs"]) == 6 and {"alpha", "beta", "E"} <= set(m["law"])
    lo, hi = m["heldout_interval_90"]
    assert lo < hi and abs(m["heldout_error"]) < 10
    assert all(r["N"] < m["heldout"]["N"] for r in m["runs"])  # the held-out run is larger
    assert (tmp_path / "scaling_laws" / "scaling_laws.png").exists()


@pytest.mark.slow
def test_hallucination_quick(tmp_path):
    from experiments.hallucination import main

    m = main(["--quick", "--out-dir", str(tmp_path)])
    run = m["runs"][0]
    assert run["questions"] == 24  # 3 facts of each of the 8 held-out people
    assert sum(b["questions"] for b in run["by_count"].values()) == 24
    assert 0 <= run["ece"] <= 1 and len(run["reliability"]["counts"]) == 10
    assert (tmp_path / "hallucination" / "hallucination.png").exists()


@pytest.mark.slow
def test_evaluation_metrics_quick(tmp_path):
    from experiments.evaluation_metrics import main

    m = main(["--quick", "--out-dir", str(tmp_path)])
    assert [p["step"] for p in m["checkpoints"]] == [2, 4]  # each checkpoint of the one run
    first, last = m["checkpoints"]
    assert last["bits_per_byte"] < first["bits_per_byte"]  # training lowers held-out bpb
    assert set(m["spearman_with_minus_bpb"]) >= {"exact_match", "choice_acc"}
    assert (tmp_path / "evaluation_metrics" / "evaluation_metrics.png").exists()
