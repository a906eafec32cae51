"""The long-context experiments run end to end in --quick mode and write their results."""

import json


def test_context_cost_quick(tmp_path):
    from experiments import context_cost

    folder = context_cost.main(["--quick", "--out-dir", str(tmp_path)])
    payload = json.loads((folder / "metrics.json").read_text())
    metrics, rows = payload["metrics"], payload["rows"]
    assert payload["quick"] is True
    assert set(metrics["slopes"]) == set(context_cost.VARIANTS)
    assert len(rows) == len(context_cost.VARIANTS) * len(metrics["lengths"])
    assert all(r["temp_mib"] > 0 and r["seconds"] > 0 for r in rows)
    assert (folder / "context_cost.png").stat().st_size > 0


def test_long_context_quick(tmp_path):
    from experiments import long_context

    folder = long_context.main(["--quick", "--out-dir", str(tmp_path)])
    payload = json.loads((folder / "metrics.json").read_text())
    metrics = payload["metrics"]
    recall = [r for r in payload["rows"] if r["part"] == "recall"]
    assert recall and all(r["accuracy"] is None or 0 <= r["accuracy"] <= 1 for r in recall)
    ppl = metrics["perplexity"]
    assert set(ppl) == {"rope/none", "rope/yarn"}
    assert all(p is not None and p > 1 for curve in ppl.values() for p in curve)
    assert (folder / "long_context.png").stat().st_size > 0
