"""The prompting vs fine-tuning experiment in --quick mode: it runs and writes what it promises."""

from experiments import prompt_vs_finetune
from tests.experiment_helpers import read_results


def test_prompt_vs_finetune_quick(tmp_path):
    out = prompt_vs_finetune.main(["--quick", "--out-dir", str(tmp_path)])
    metrics, rows = read_results(out)
    s = prompt_vs_finetune.QUICK
    groups = {(r["method"], r["examples"]) for r in rows}
    assert groups == {("prompting", k) for k in s.ks} | {("fine-tuning", n) for n in s.ns}
    for method, x in groups:  # one tuned choice per point of each curve: the best validation
        group = [r for r in rows if (r["method"], r["examples"]) == (method, x)]
        (best,) = [r for r in group if r["chosen"]]
        assert best["tune_val"] == max(r["tune_val"] for r in group)
    for r in rows:
        phrasings = [r[f"p{i}"] for i in range(4)]
        assert all(0 <= v <= 1 for v in (*phrasings, r["test_acc"], r["tune_val"]))
        assert abs(r["test_acc"] - sum(phrasings) / 4) < 1e-9  # the same questions in each
        assert r["test_min"] <= r["test_acc"] <= r["test_max"]
        assert r["phrasing_range"] == max(phrasings) - min(phrasings)
    # As many demonstrations as fit: all at k=0 and k=2 in the plain layout; the chat
    # template's longer turns fit fewer.
    used = {
        (r["examples"], r["choice"]): r["demos_used"] for r in rows if r["method"] == "prompting"
    }
    assert used[(0, "qa")] == used[(0, "chat")] == 0
    assert 0 < used[(2, "chat")] <= used[(2, "qa")] <= 2

    per_seed = metrics["per_seed"]
    assert len(per_seed) == len(s.layouts) * len(s.ks) + len(s.ns) * len(s.lrs)
    for r in per_seed:
        assert len(r["by_phrasing"]) == 4 and len(r["samples"]) == len(s.tasks)
        for sample in r["samples"]:  # replies stop at the format's end of answer
            end = "\n" if r["choice"] == "qa" else "<|user|>"
            assert end not in sample["reply"] and sample["answer"]
    assert set(metrics["prompting_curve"]) == {str(k) for k in s.ks}
    assert set(metrics["finetuning_curve"]) == {str(n) for n in s.ns}
    spread = metrics["prompting_spread_all_layouts"][str(s.ks[-1])]
    assert spread["min"] <= spread["mean"] <= spread["max"]
    base = metrics["base"]
    assert base["tokens_seen"] == s.pretrain_steps * s.batch * s.context and base["params"] > 0
    assert (
        "no chat template" in base["saw"]
        and metrics["test_questions"] == 4 * len(s.tasks) * s.test_per_task
    )
    assert metrics["wall_s"]["total"] > 0
