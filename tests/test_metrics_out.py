"""What a run writes while it trains: wall time in every record, tokens/s timed after the
compiled first step, TensorBoard events of the records, loss.png redrawn at each evaluation
(and when the loop raises), plain one-line logs when stdout is not a terminal, and a saved
config.json that starts the same run again."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sys
import time

import pytest

from llmjax import fit
from llmjax.cli import main
from llmjax.config import PRESETS, apply_overrides, load_config, read_config_file
from llmjax.train.hooks import LossPlot, TrainLog
from llmjax.train.metrics import loss_figure, read_metrics
from llmjax.train.progress import ProgressBar
from llmjax.train.trainer import Hook


class PlotWatch(Hook):
    """The bytes of loss.png when each evaluation's record has been handed out."""

    def __init__(self, path):
        self.path, self.seen = path, {}

    def on_record(self, record):
        if record.get("split") == "val":
            data = self.path.read_bytes() if self.path.exists() else b""
            self.seen[record["step"]] = hashlib.sha256(data).hexdigest() if data else None


@pytest.fixture(scope="module")
def run(word_corpus, tmp_path_factory):
    """A 6-step run logging every 2 steps, evaluating at 3 and 6, with TensorBoard, its
    progress going to a stdout that is not a terminal."""
    out = tmp_path_factory.mktemp("metrics") / "run"
    cfg = apply_overrides(
        PRESETS["test-tiny"],
        [f"data.path={word_corpus}", "train.steps=6", "train.log_every=2", "train.eval_every=3",
         "train.eval_batches=1", "train.loggers=tensorboard"],
    )  # fmt: skip
    watch = PlotWatch(out / "loss.png")
    stdout = io.StringIO()
    before = time.time()
    with contextlib.redirect_stdout(stdout):
        result = fit(cfg, out, progress=True, hooks=[watch])
    records = read_metrics(out / "metrics.jsonl")
    return {"out": out, "result": result, "stdout": stdout.getvalue(), "plots": watch.seen,
            "before": before, "after": time.time(), "records": records}  # fmt: skip


def test_every_record_has_its_wall_time(run):
    records = run["records"]
    assert [(r["step"], r["split"]) for r in records] == [
        (2, "train"), (3, "val"), (4, "train"), (6, "train"), (6, "val")
    ]  # fmt: skip
    times = [r["wall_time"] for r in records]
    assert run["before"] < times[0] and times[-1] < run["after"]
    assert times == sorted(times)


def test_the_first_records_tokens_per_s_leaves_the_compiled_step_out(run):
    train = [r for r in run["records"] if r["split"] == "train"]
    first, later = train[0], train[1:]
    assert first["first_step_s"] > 0 and "first_step_s" not in later[0]
    # With the compiling step inside its window the first rate was ~300x below the others.
    assert first["tokens_per_s"] > 0.1 * min(r["tokens_per_s"] for r in later)
    assert all(0 < r["mfu"] < 1 for r in train)


def test_tensorboard_events_hold_the_records_scalars(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run["out"] / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/tokens_per_s", "val/loss", "val/bits_per_byte"} <= tags
    for split in ("train", "val"):
        records = [r for r in run["records"] if r["split"] == split]
        scalars = events.Scalars(f"{split}/loss")
        assert [s.step for s in scalars] == [r["step"] for r in records]
        assert [s.value for s in scalars] == pytest.approx([r["loss"] for r in records], rel=1e-6)
        assert [s.wall_time for s in scalars] == [r["wall_time"] for r in records]


def test_plain_one_line_records_when_stdout_is_not_a_terminal(run):
    text = run["stdout"]
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) == len(run["records"])
    for line, record in zip(lines, run["records"], strict=True):
        assert line.startswith(f"step {record['step']}/6 {record['split']} loss ")
    assert "tokens_per_s" in lines[0] and "bits_per_byte" in lines[1]


def test_loss_png_is_redrawn_at_each_evaluation(run):
    plots = run["plots"]
    assert set(plots) == {3, 6}
    assert plots[3] is not None  # drawn by the first evaluation, mid-run
    assert plots[6] is not None and plots[6] != plots[3]
    assert (run["out"] / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_saved_config_reads_back_to_the_runs_config(run, capsys):
    saved = run["out"] / "config.json"
    assert read_config_file(saved, PRESETS["nano"]) == load_config(saved) == run["result"].config
    assert main(["config", "show", "--config", str(saved), "--format", "json"]) == 0
    assert capsys.readouterr().out == saved.read_text()


@pytest.mark.slow  # a second whole run, which compiles its steps again
def test_a_saved_config_starts_the_same_run_again(run, tmp_path, capsys):
    saved = run["out"] / "config.json"
    again = tmp_path / "again"
    assert main(["train", "--config", str(saved), "--out", str(again), "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 6
    assert (again / "config.json").read_text() == saved.read_text()


# ----------------------------------------------------------------------------- the parts alone


class FakeTrainer:
    def __init__(self):
        self.history = []

    def emit(self, record):
        self.history.append(record)


def metrics(loss=1.0):
    return {"nonfinite_streak": 0, "loss": loss, "lr": 1e-3, "grad_norm": 1.0,
            "nonfinite_total": 0}  # fmt: skip


@pytest.mark.parametrize("log_every", [1, 2])
def test_trainlog_times_the_steps_after_the_first(log_every):
    now = [0.0]
    hook = TrainLog(log_every=log_every, last=4, max_nonfinite=3, tokens_per_step=100,
                    clock=lambda: now[0])  # fmt: skip
    trainer = FakeTrainer()
    hook.on_start(trainer, 0)
    for step, t in zip(range(1, 5), (10.0, 10.5, 11.0, 11.5), strict=True):
        now[0] = t  # step 1 compiles for 10 s, then each step takes 0.5 s
        hook.on_metrics(step, metrics())
    first = trainer.history[0]
    assert first["first_step_s"] == 10.0
    if log_every == 1:  # its window holds the compiled step alone: no rate to give
        assert "tokens_per_s" not in first
        assert [r["tokens_per_s"] for r in trainer.history[1:]] == [200.0] * 3
    else:
        assert [r["tokens_per_s"] for r in trainer.history] == [200.0, 200.0]
    assert all("first_step_s" not in r for r in trainer.history[1:])


def test_loss_plot_draws_when_the_loop_raises(tmp_path):
    trainer, path = FakeTrainer(), tmp_path / "loss.png"
    plot = LossPlot(path)
    plot.on_start(trainer, 0)
    trainer.history.append({"step": 2, "split": "train", "loss": 3.0, "lr": 1e-3})
    plot.on_record(trainer.history[-1])
    assert not path.exists()  # train records alone wait for an evaluation or the end
    plot.close()  # e.g. a second Ctrl-C: the loop raised KeyboardInterrupt
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_loss_plot_draws_once_when_the_last_evaluation_drew_it(tmp_path, monkeypatch):
    import llmjax.train.metrics as metrics

    draws = []
    monkeypatch.setattr(metrics, "plot_losses", lambda records, path, title="": draws.append(1))
    trainer, plot = FakeTrainer(), LossPlot(tmp_path / "loss.png")
    plot.on_start(trainer, 0)
    for record in ({"step": 4, "split": "train", "loss": 3.0}, {"step": 4, "split": "val"}):
        trainer.history.append(record)
        plot.on_record(record)
    plot.on_end(4, None)
    assert draws == [1]  # drawn at the evaluation, and nothing came after it
    trainer.history.append({"step": 5, "split": "train", "loss": 2.9})
    plot.on_record(trainer.history[-1])
    plot.on_end(5, None)
    assert draws == [1, 1]  # a record after the evaluation: drawn again at the end


def test_the_loss_figure_has_train_val_and_the_lr_on_a_second_axis():
    import matplotlib.pyplot as plt

    records = [{"step": s, "split": "train", "loss": 4.0 / s, "lr": 1e-3 * s} for s in (1, 2, 3)]
    records.append({"step": 3, "split": "val", "loss": 1.5})
    fig = loss_figure(records)
    loss_ax, lr_ax = fig.axes
    assert [line.get_label() for line in loss_ax.lines] == ["train", "val"]
    assert list(lr_ax.lines[0].get_ydata()) == pytest.approx([1e-3, 2e-3, 3e-3])
    assert lr_ax.get_ylabel() == "learning rate"
    plt.close(fig)


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_the_bar_and_a_pipe_plain_lines(monkeypatch):
    record = {"step": 2, "split": "train", "loss": 2.5, "lr": 1e-3, "tokens_per_s": 900.0,
              "wall_time": time.time()}  # fmt: skip
    for terminal in (True, False):
        out, err = (Terminal(), Terminal()) if terminal else (io.StringIO(), io.StringIO())
        monkeypatch.setattr(sys, "stdout", out)
        monkeypatch.setattr(sys, "stderr", err)
        bar = ProgressBar(4)
        bar.on_start(None, 0)
        bar.on_metrics(2, {})
        bar.on_record(record)
        bar.close()
        if terminal:
            assert "\r" in err.getvalue() and "loss=2.5000" in err.getvalue()
        else:
            assert err.getvalue() == "" and "\r" not in out.getvalue()
            assert out.getvalue().startswith("step 2/4 train loss 2.5000 lr 1.00e-03")
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    quiet = ProgressBar(4, disable=True)
    quiet.on_start(None, 0)
    quiet.on_record(record)
    assert sys.stdout.getvalue() == ""
