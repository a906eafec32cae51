"""The TensorBoard and Weights & Biases loggers on their own: tags, steps and wall times; a
resumed run's TensorBoard purge; W&B's calls (a stand-in module), its resumed run id, and the
real package in disabled and offline mode; an unknown logger or a missing package."""

from __future__ import annotations

import re
import sys
import types

import pytest

from llmjax.cli import main
from llmjax.config import PRESETS, ConfigError, to_dict
from llmjax.train.loggers import Loggers, TensorBoard, WandB, logger_names, scalars

CFG = PRESETS["test-tiny"]


def record(step, split="train", loss=1.0):
    return {"step": step, "split": split, "loss": loss, "lr": 1e-3, "nonfinite_total": 0,
            "wall_time": 1000.0 + step}  # fmt: skip


def test_scalars_are_tagged_by_split_and_leave_the_keys_out():
    assert scalars({**record(4, "val"), "ok": True, "note": "x"}) == {
        "val/loss": 1.0, "val/lr": 1e-3, "val/nonfinite_total": 0.0
    }  # fmt: skip


def tensorboard_scalars(directory, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory))
    events.Reload()
    return [(s.step, s.value, s.wall_time) for s in events.Scalars(tag)]


def test_a_resumed_run_replaces_the_tensorboard_events_past_its_checkpoint(tmp_path):
    first = TensorBoard(tmp_path, CFG)
    first.open(0, None)
    for step in range(1, 7):  # the run is killed after step 6, its checkpoint is step 4
        first.write(record(step, loss=float(step)))
    first.close()
    resumed = TensorBoard(tmp_path, CFG)
    resumed.open(4, None)
    for step in (5, 6):
        resumed.write(record(step, loss=10.0 * step))
    resumed.close()
    got = tensorboard_scalars(tmp_path / "tensorboard", "train/loss")
    assert got == [(1, 1.0, 1001.0), (2, 2.0, 1002.0), (3, 3.0, 1003.0), (4, 4.0, 1004.0),
                   (5, 50.0, 1005.0), (6, 60.0, 1006.0)]  # fmt: skip


class FakeRun:
    def __init__(self, **kwargs):
        self.kwargs, self.logged, self.finished = kwargs, [], False
        self.id = kwargs["id"] or "abc123"

    def log(self, data, step):
        self.logged.append((step, data))

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    module = types.SimpleNamespace(runs=[])

    def init(**kwargs):
        module.runs.append(FakeRun(**kwargs))
        return module.runs[-1]

    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    return module


def test_wandb_gets_the_config_and_every_record_at_its_step(fake_wandb, tmp_path):
    hook = Loggers(["wandb"], tmp_path / "run-a", CFG)
    hook.on_start(None, 0)
    hook.on_metrics(1, {})
    hook.on_record(record(2))
    hook.on_record(record(2, "val", 0.5))
    assert hook.state_dict() == {"wandb": {"id": "abc123"}}
    hook.close()
    (run,) = fake_wandb.runs
    assert run.kwargs == {"project": "llmjax", "mode": None, "name": "run-a",
                          "dir": str(tmp_path / "run-a"), "config": to_dict(CFG), "id": None,
                          "resume": None}  # fmt: skip
    assert run.logged == [
        (2, {"train/loss": 1.0, "train/lr": 1e-3, "train/nonfinite_total": 0.0}),
        (2, {"val/loss": 0.5, "val/lr": 1e-3, "val/nonfinite_total": 0.0}),
    ]
    assert run.finished


def test_a_resumed_run_continues_its_wandb_run(fake_wandb, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "mine")
    hook = Loggers(["wandb"], tmp_path, CFG)
    hook.on_start(None, 4)
    hook.load_state_dict({"wandb": {"id": "abc123"}})  # kept with the checkpoint of step 4
    assert hook.state_dict() == {"wandb": {"id": "abc123"}}  # saved again before it opens
    hook.on_metrics(5, {})
    hook.close()
    kwargs = fake_wandb.runs[0].kwargs
    assert (kwargs["project"], kwargs["id"], kwargs["resume"]) == ("mine", "abc123", "allow")


def test_wandb_that_cannot_start_says_how_to_log_without_a_network(fake_wandb, tmp_path):
    def refuse(**kwargs):
        raise RuntimeError("api_key not configured (no-tty)")

    fake_wandb.init = refuse
    hook = Loggers(["wandb"], tmp_path, CFG)
    hook.on_start(None, 0)
    with pytest.raises(ConfigError, match="wandb login.*WANDB_MODE=offline"):
        hook.on_metrics(1, {})
    hook.close()  # nothing opened, nothing to close


def test_the_wandb_package_in_disabled_mode(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    logger = WandB(tmp_path, CFG)
    logger.open(0, None)
    logger.write(record(2))
    logger.close()


@pytest.mark.slow  # wandb starts its service process (several seconds)
def test_the_wandb_package_in_offline_mode_writes_the_run_under_the_run_directory(
    tmp_path, monkeypatch
):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandB(tmp_path, CFG)
    logger.open(0, None)
    for step in (2, 4):
        logger.write(record(step))
    run_id = logger.state_dict()["id"]
    logger.close()
    (run_dir,) = (tmp_path / "wandb").glob(f"offline-run-*-{run_id}")
    assert (run_dir / f"run-{run_id}.wandb").stat().st_size > 0


# ----------------------------------------------------------------------------- bad input


def test_an_unknown_logger_lists_the_known_ones():
    known = "train.loggers='tensorbord' is not known; valid choices: tensorboard, wandb"
    with pytest.raises(ConfigError, match=re.escape(known)):
        logger_names("tensorbord")
    assert logger_names(" tensorboard, tensorboard ,") == ["tensorboard"]


@pytest.mark.parametrize("name, package", [("tensorboard", "tensorboardX"), ("wandb", "wandb")])
def test_a_logger_whose_package_is_missing_names_the_extra(name, package, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # what `import` sees when it is absent
    with pytest.raises(ConfigError) as error:
        logger_names(name)
    assert f"needs the {package} package" in str(error.value)
    assert f"pip install 'llmjax[{name}]'" in str(error.value)


def test_train_with_a_missing_logger_package_stops_before_training(
    word_corpus, tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    args = ["train", "--preset", "test-tiny", "--data", str(word_corpus), "--steps", "2",
            "--out", str(tmp_path / "run"), "--no-progress", "--log-to", "tensorboard"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "pip install 'llmjax[tensorboard]'" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
