"""The pretraining vs fine-tuning experiment in --quick mode: it runs and measures what it says."""

import math

from experiments import pretrain_finetune
from llmjax.train.curves import log_steps
from tests.corpus_utils import write_word_corpus
from tests.experiment_helpers import read_results


def test_pretrain_finetune_quick(tmp_path):
    # A target unlike the source (Python code): lines of 8 words drawn from 8.
    target = write_word_corpus(tmp_path / "words.txt", lines=600)
    out = pretrain_finetune.main(["--quick", "--target", str(target), "--out-dir", str(tmp_path)])
    metrics, rows = read_results(out)
    s = pretrain_finetune.QUICK
    size = s.sizes[0]
    assert [(r["target_tokens"], r["method"]) for r in rows] == [
        (size, "fine-tune"),
        (size, "scratch"),
    ]
    ft, scratch = rows
    assert ft["lr"] == scratch["lr"] == s.lrs[0]
    # Before any target step: random init is near uniform over the 259 byte ids; the
    # pretrained model already knows bytes, spaces and lines.
    assert abs(scratch["zero_shot_test"] - math.log(259)) < 0.5
    assert ft["zero_shot_test"] < scratch["zero_shot_test"] - 0.5
    for row in rows:
        assert row["best_test_min"] <= row["best_test"] <= row["best_test_max"]
        assert row["best_test"] < row["zero_shot_test"]  # training on the target helps
    assert ft["best_test"] < scratch["best_test"]
    # The pretrained model is far better on the source than one trained on the target only.
    assert ft["source_before"] < scratch["source_end"] - 0.5

    steps = log_steps(s.steps, s.eval_points)
    tokens_per_step = s.batch * 32
    for name in (f"fine-tune {size}", f"scratch {size}"):
        curves = metrics["curves"][name]
        assert curves["tokens"] == [[step * tokens_per_step for step in steps]]
        assert all(len(curves[k][0]) == len(steps) for k in ("val", "test", "source"))
        assert all(math.isfinite(v) for k in ("val", "test", "source") for v in curves[k][0])
    # Fine-tuning reaches scratch's final loss within the budget, and sooner.
    match = metrics["sample_efficiency"]["finetune_to_match_scratch_end"]
    assert match["tokens"] is not None and match["tokens"] <= match["scratch_tokens"]
    assert match["low"] <= match["tokens"] <= match["high"]
    assert len(metrics["sample_efficiency"]["scratch_to_match_finetune"]) == len(steps) - 1
    assert [d["finetune_size"] for d in metrics["data_efficiency"]] == [size]
