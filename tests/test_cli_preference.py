"""`llmjax reward` and `llmjax dpo`: short runs end to end (the held-out accuracy printed, the
data settings recorded, a LoRA DPO run resumed to the result of an uninterrupted one), and each
bad input as one line with exit status 2 and no traceback."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from llmjax.cli import main
from llmjax.config import load_config
from llmjax.data.preference import PREFERENCE_FILE, read_record
from llmjax.runs import load_run
from tests.preference_helpers import RUN_SET, base_run

SET = [a for s in RUN_SET for a in ("--set", s)] + ["--set", "train.eval_batches=1"]


def _records(n: int = 24) -> list[dict]:
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    out = [{"prompt": f"say {i}", "chosen": "ok yes", "rejected": "no no no"} for i in range(n)]
    out.append(
        {"prompt": chat, "chosen": [{"role": "assistant", "content": "yes"}], "rejected": "n"}
    )
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory, word_corpus):
    """(a tiny byte-tokenizer run, a JSONL of pairs)."""
    tmp = tmp_path_factory.mktemp("cli-pref")
    data = tmp / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _records()))
    return base_run(tmp, word_corpus), data


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_reward_trains_and_prints_the_held_out_accuracy(files, tmp_path, capsys):
    base, _ = files
    out = tmp_path / "rm"
    code, stdout, err = _run(
        capsys,
        "reward", "--init-from", base, "--data", "builtin", "--builtin-pairs", 100,
        "--out", out, "--steps", 4, "--margin", 0.1, "--no-progress", *SET,
    )  # fmt: skip
    assert code == 0, err
    assert "held-out accuracy" in err and "train 90 pairs" in err
    summary = _last_json(stdout)
    assert summary["steps"] == 4 and summary["pairs"] == 10 and 0 <= summary["accuracy"] <= 1
    cfg = load_config(out / "config.json")
    assert cfg.model.value_head and cfg.train.objective == "reward"
    assert cfg.preference.margin == 0.1
    record = read_record(out)
    assert (
        record.data.builtin and record.data.builtin_pairs == 100 and record.reference_step is None
    )
    # Resumed with more steps: the recorded data, the next steps.
    code, stdout, err = _run(
        capsys, "reward", "--resume", "--out", out, "--steps", 6, "--no-progress"
    )
    assert code == 0, err
    assert _last_json(stdout)["steps"] == 6


@pytest.mark.slow
def test_lora_dpo_resumed_ends_as_an_uninterrupted_run(files, tmp_path, capsys):
    base, data = files
    common = ["--init-from", base, "--data", data, "--beta", 0.2, "--lora-rank", 2, "--no-progress"]
    common += [*SET, "--set", "train.checkpoint_every=2", "--set", "train.eval_every=2"]
    # The first part of the split run plans the lr schedule of the whole one.
    common += ["--set", "optim.schedule_steps=4"]
    code, stdout, err = _run(capsys, "dpo", *common, "--out", tmp_path / "whole", "--steps", 4)
    assert code == 0, err
    whole = _last_json(stdout)
    assert whole["steps"] == 4 and whole["pairs"] == 2 and "loss" in whole
    code, _, err = _run(capsys, "dpo", *common, "--out", tmp_path / "split", "--steps", 2)
    assert code == 0, err
    code, stdout, err = _run(
        capsys, "dpo", "--resume", "--out", tmp_path / "split", "--steps", 4, "--no-progress"
    )
    assert code == 0, err
    resumed = _last_json(stdout)
    assert resumed["steps"] == 4 and resumed["loss"] == whole["loss"]
    cfg = load_config(tmp_path / "split" / "config.json")
    assert cfg.model.lora.rank == 2 and cfg.preference.beta == 0.2
    assert json.loads((tmp_path / "split" / PREFERENCE_FILE).read_text())["reference_step"] == 2
    a, b = load_run(tmp_path / "whole"), load_run(tmp_path / "split")
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _fails(capsys, argv, *words):
    code, _, err = _run(capsys, *argv)
    assert code == 2, err
    # One error line, last (after at most the line saying what the data holds).
    lines = err.strip().splitlines()
    assert "Traceback" not in err and [i for i, x in enumerate(lines) if "error:" in x] == [
        len(lines) - 1
    ], err
    for word in words:
        assert word in lines[-1], lines[-1]


def test_bad_input_is_one_line_without_a_traceback(files, tmp_path, capsys, word_corpus):
    base, data = files
    out = ["--out", tmp_path / "x", "--no-progress"]
    start = ["--init-from", base, *out]
    _fails(capsys, ["dpo", *start, "--data", data, "--beta", 0], "--beta must be > 0")
    _fails(capsys, ["dpo", *start, "--data", data, "--beta", -1], "--beta must be > 0")
    _fails(capsys, ["dpo", *start], "needs its pairs", "--data")
    _fails(capsys, ["reward", *start], "needs its pairs")
    _fails(capsys, ["reward", *out, "--data", data], "--init-from RUN")
    _fails(capsys, ["reward", *start, "--data", tmp_path / "none.jsonl"], "does not exist")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "chosen": "b"}) + "\n")
    _fails(capsys, ["dpo", *start, "--data", bad], f"{bad}, line 1", "'rejected'", "missing")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    _fails(capsys, ["dpo", *start, "--data", empty], "holds no records")
    _fails(capsys, ["reward", *start, "--data", data, "--val-fraction", 2], "--val-fraction")
    _fails(
        capsys,
        ["dpo", *start, "--data", data, "--set", "model.d_model=48"],
        "other shapes",
    )
    _fails(capsys, ["dpo", "--resume", *out, "--data", data], "drop --data")
    _fails(capsys, ["dpo", "--resume", "--out", tmp_path / "nothing"], str(tmp_path / "nothing"))


def test_a_reference_with_another_vocabulary_is_refused(files, tmp_path, capsys, word_corpus):
    from llmjax import fit
    from llmjax.config import apply_overrides, get_preset

    base, data = files
    cfg = apply_overrides(
        get_preset("test-tiny"),
        [f"data.path={word_corpus}", "data.tokenizer=char", "train.steps=1", "train.mfu=false",
         "train.eval_every=1", "train.eval_batches=1"],
    )  # fmt: skip
    fit(cfg, tmp_path / "char", progress=False)
    _fails(
        capsys,
        ["dpo", "--init-from", base, "--data", data, "--reference", tmp_path / "char",
         "--out", tmp_path / "x", "--no-progress"],
        "another tokenizer",
        "the reference policy",
    )  # fmt: skip
