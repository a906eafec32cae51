"""What a user saved is never lost, and a damaged or interrupted run stays usable: own files
only, damaged checkpoints set aside, divergence keeps the last good state, exact resume."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil

import jax
import numpy as np
import pytest

from llmjax import fit, load_run
from llmjax.config import PRESETS, apply_overrides, load_config
from llmjax.runs import Checkpointer, CheckpointError, RunDirError, init_from_config
from llmjax.train.hooks import TrainingDiverged
from llmjax.train.metrics import TIMING_FIELDS, MetricsFileError, read_metrics

TIMING = TIMING_FIELDS


@pytest.fixture(scope="module")
def cfg(word_corpus):
    return apply_overrides(
        PRESETS["test-tiny"],
        [
            f"data.path={word_corpus}",
            "train.steps=10",
            "train.eval_every=5",
            "train.checkpoint_every=3",
            "train.log_every=4",
            "train.eval_batches=1",
            "train.keep_checkpoints=2",
        ],
    )


def steps(cfg, n):
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=n))


def records(run):
    """metrics.jsonl without the timing fields, which no two runs share."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run)]


def assert_same_params(a, b):
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


# ----------------------------------------------------------------------------- own files only


def test_overwrite_keeps_files_llmjax_did_not_write(cfg, tmp_path):
    run = tmp_path / "d"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "my_model.pt").write_text("w")
    (run / "notes.txt").write_text("mine")
    fit(steps(cfg, 3), run, overwrite=True, progress=False)
    fit(steps(cfg, 3), run, overwrite=True, progress=False)  # replaces its own files
    assert (run / "checkpoints" / "my_model.pt").read_text() == "w"
    assert (run / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "3",
        "llmjax-index.json",
        "my_model.pt",
    ]


def test_overwrite_refuses_files_it_would_replace_but_did_not_write(cfg, tmp_path):
    run = tmp_path / "d"
    (run / "checkpoints" / "7").mkdir(parents=True)
    (run / "checkpoints" / "7" / "weights.bin").write_text("mine")
    (run / "config.json").write_text('{"my": "config"}')
    with pytest.raises(RunDirError, match=r"config\.json, checkpoints/7, which llmjax did not"):
        fit(steps(cfg, 2), run, overwrite=True, progress=False)
    assert (run / "config.json").read_text() == '{"my": "config"}'
    assert (run / "checkpoints" / "7" / "weights.bin").read_text() == "mine"


def test_keep_n_deletes_only_finished_steps_llmjax_saved(tmp_path):
    ckpts = tmp_path / "c"
    (ckpts / "notes").mkdir(parents=True)
    state = {"w": np.arange(4.0)}
    with Checkpointer(ckpts, keep=2, async_save=False) as ckpt:
        ckpt.save(1, state)
    shutil.copytree(ckpts / "1", ckpts / "100")  # an intact step llmjax's index does not list
    with Checkpointer(ckpts, keep=2) as ckpt:
        for step in (2, 3, 4):
            ckpt.save(step, state)
    assert sorted(p.name for p in ckpts.iterdir()) == [
        "100",
        "3",
        "4",
        "llmjax-index.json",
        "notes",
    ]


def test_a_failed_start_does_not_block_the_corrected_retry(cfg, tmp_path):
    run = tmp_path / "r"
    bad = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(tmp_path / "nope")))
    with pytest.raises(FileNotFoundError):
        fit(bad, run, progress=False)
    result = fit(steps(cfg, 2), run, progress=False)  # same out, no --overwrite
    assert int(result.state.step) == 2


def test_resume_of_a_run_without_checkpoints_starts_it_afresh(cfg, tmp_path):
    run = tmp_path / "r"
    fit(steps(cfg, 4), run, progress=False, stop_after=2)  # checkpoint at 2
    shutil.rmtree(run / "checkpoints" / "2")  # as if killed before its first checkpoint
    resumed = fit(steps(cfg, 4), run, resume=True, progress=False)
    fresh = fit(steps(cfg, 4), tmp_path / "fresh", progress=False)
    assert_same_params(resumed.state.params, fresh.state.params)
    assert records(run / "metrics.jsonl") == records(tmp_path / "fresh" / "metrics.jsonl")


# ----------------------------------------------------------------------------- damaged checkpoints


def _damage(ckpts):
    """An empty step, a truncated step and a user's directory with a step's name."""
    (ckpts / "25").mkdir()
    (ckpts / "30").mkdir()
    (ckpts / "30" / "mine.txt").write_text("mine")
    newest = ckpts / "9"
    for p in newest.rglob("*"):
        if p.is_file() and p.stat().st_size:
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])


def test_damaged_steps_are_set_aside_and_training_continues(cfg, tmp_path, caplog):
    full = fit(cfg, tmp_path / "full", progress=False)
    run = tmp_path / "r"
    fit(cfg, run, progress=False, stop_after=9)  # checkpoints at 6 and 9
    ckpts = run / "checkpoints"
    _damage(ckpts)
    with caplog.at_level(logging.WARNING):
        resumed = fit(cfg, run, resume=True, progress=False)
    assert int(resumed.state.step) == 10
    assert_same_params(resumed.state.params, full.state.params)
    moved = sorted(p.name for p in (ckpts / "damaged").iterdir())
    assert moved == ["25", "30", "9"]
    assert (ckpts / "damaged" / "30" / "mine.txt").read_text() == "mine"
    assert "checkpoints/25 is damaged (empty directory)" in caplog.text
    assert sorted(p.name for p in ckpts.iterdir() if p.name.isdigit()) == ["10", "9"]
    assert records(run / "metrics.jsonl") == records(tmp_path / "full" / "metrics.jsonl")


def test_reading_skips_damaged_steps_and_moves_nothing(cfg, tmp_path):
    run = tmp_path / "r"
    fit(cfg, run, progress=False, stop_after=9)
    _damage(run / "checkpoints")
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    with pytest.warns(UserWarning, match="skipping damaged checkpoint"):
        loaded = load_run(run)
    assert loaded.step == 6
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    tuned = fit(init_from_config(run, steps(cfg, 2)), tmp_path / "tuned", progress=False)
    assert int(tuned.state.step) == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_nothing_restores_onto_another_shape_and_nothing_is_moved(cfg, tmp_path):
    run = tmp_path / "r"
    fit(steps(cfg, 3), run, progress=False)
    with (
        Checkpointer(run / "checkpoints") as ckpt,
        pytest.raises(CheckpointError, match="none of the checkpoints"),
    ):
        ckpt.restore({"step": np.zeros((), np.int32), "w": np.zeros(3)})
    assert not (run / "checkpoints" / "damaged").exists()


# ----------------------------------------------------------------------------- divergence


def test_divergence_writes_no_checkpoint_and_names_the_last_good_one(cfg, tmp_path):
    run = tmp_path / "r"
    fit(steps(cfg, 10), run, progress=False, stop_after=3)  # a good checkpoint at 3
    bad = ["optim.lr=1e30", "optim.clip_norm=1e30", "train.max_nonfinite=3"]
    blown = apply_overrides(steps(cfg, 10), [*bad, "train.checkpoint_every=1"])
    with pytest.raises(TrainingDiverged, match=r"good checkpoint is step \d+ in .*--resume --out"):
        fit(blown, run, resume=True, progress=False)
    for step in sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()):
        loaded = load_run(run, step=step)  # every checkpoint left is a finite state
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(loaded.params)))
    assert step < 10
    assert (run / "loss.png").exists()


# ----------------------------------------------------------------------------- exact resume


def test_records_after_a_mid_window_resume_equal_the_uninterrupted_run(cfg, tmp_path):
    fit(cfg, tmp_path / "full", progress=False)
    fit(cfg, tmp_path / "r", progress=False, stop_after=6)  # windows are steps 5..8
    fit(cfg, tmp_path / "r", resume=True, progress=False)
    assert records(tmp_path / "r" / "metrics.jsonl") == records(tmp_path / "full" / "metrics.jsonl")


def test_resume_with_more_steps_keeps_the_schedule_unless_asked(cfg, tmp_path, caplog):
    base = apply_overrides(cfg, ["optim.warmup_steps=0", "train.log_every=1"])
    fit(steps(base, 4), tmp_path / "r", progress=False)
    assert load_config(tmp_path / "r" / "config.json").optim.schedule_steps == 4
    with caplog.at_level(logging.WARNING):
        fit(steps(base, 6), tmp_path / "r", resume=True, progress=False)
    assert "lr schedule spans 4 steps" in caplog.text
    lrs = train_lrs(tmp_path / "r")
    final = base.optim.lr * base.optim.min_lr_ratio
    assert lrs[5] == pytest.approx(final) and lrs[6] == pytest.approx(final)
    stretched = apply_overrides(steps(base, 8), ["optim.schedule_steps=8"])
    fit(stretched, tmp_path / "r", resume=True, progress=False)
    assert load_config(tmp_path / "r" / "config.json").optim.schedule_steps == 8
    lrs = train_lrs(tmp_path / "r")
    assert lrs[7] > final


def train_lrs(run):
    return {r["step"]: r["lr"] for r in read_metrics(run / "metrics.jsonl") if "lr" in r}


def test_resume_may_change_the_lr_but_not_the_optimizer(cfg, tmp_path):
    fit(steps(cfg, 3), tmp_path / "r", progress=False)
    lower = apply_overrides(steps(cfg, 5), ["optim.lr=0.0005"])
    fit(lower, tmp_path / "r", resume=True, progress=False)
    assert load_config(tmp_path / "r" / "config.json").optim.lr == 0.0005
    other = apply_overrides(steps(cfg, 6), ["optim.name=sgd"])
    with pytest.raises(RunDirError, match=r"optim\.name"):
        fit(other, tmp_path / "r", resume=True, progress=False)


def test_a_torn_last_metrics_line_is_repaired(cfg, tmp_path):
    fit(cfg, tmp_path / "full", progress=False)
    run = tmp_path / "r"
    fit(cfg, run, progress=False, stop_after=6)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "split": "tr')  # a write cut off by a crash
    fit(cfg, run, resume=True, progress=False)
    assert records(run / "metrics.jsonl") == records(tmp_path / "full" / "metrics.jsonl")


def test_a_damaged_metrics_line_names_the_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(MetricsFileError, match=r"metrics\.jsonl line 2"):
        read_metrics(path)
    assert json.loads(path.read_text().splitlines()[0]) == {"step": 1}


def test_a_step_with_truncated_arrays_is_set_aside_when_an_older_one_restores(cfg, tmp_path):
    run = tmp_path / "r"
    fit(cfg, run, progress=False, stop_after=9)  # checkpoints at 6 and 9
    arrays = [
        p
        for p in (run / "checkpoints" / "9" / "default").rglob("*")
        if p.is_file() and p.parent.name == "d" and p.stat().st_size
    ]
    assert arrays
    for p in arrays:  # the metadata stays intact: only reading shows the damage
        p.write_bytes(p.read_bytes()[:8])
    with pytest.warns(UserWarning, match=r"checkpoints/9 is damaged \(reading it failed"):
        resumed = fit(cfg, run, resume=True, progress=False)
    assert int(resumed.state.step) == 10
    assert (run / "checkpoints" / "damaged" / "9").is_dir()


def test_sample_and_eval_skip_an_empty_step_directory(cfg, tmp_path, capsys):
    from llmjax.cli import main

    run = tmp_path / "r"
    fit(steps(cfg, 3), run, progress=False)
    (run / "checkpoints" / "25").mkdir()
    assert main(["sample", "--run", str(run), "--prompt", "a", "--max-new-tokens", "3"]) == 0
    assert main(["eval", "--run", str(run)]) == 0
    assert (run / "checkpoints" / "25").is_dir()  # reading moves nothing


def test_an_unfinished_save_of_llmjax_is_cleared_and_a_foreign_one_kept(tmp_path):
    ckpts = tmp_path / "c"
    with Checkpointer(ckpts, async_save=False) as ckpt:
        ckpt.save(1, {"w": np.arange(3.0)})
        ckpt.index.start(5, {})  # as if killed while orbax was writing step 5
        ckpt.index.save()
    (ckpts / "5.orbax-checkpoint-tmp").mkdir()
    (ckpts / "7.orbax-checkpoint-tmp").mkdir()  # not in llmjax's index: not its own
    with Checkpointer(ckpts) as ckpt:
        assert ckpt.steps() == [1] and 5 not in ckpt.index.steps
    assert not (ckpts / "5.orbax-checkpoint-tmp").exists()
    assert (ckpts / "7.orbax-checkpoint-tmp").exists()
