"""The hooks `fit` runs: logging, evaluation, checkpoints, metrics file, loss plot,
preemption, and early stopping; evaluation on several splits at chosen steps for learning
curves (see llmjax.train.trainer.Hook for the callbacks; the progress bar is in
llmjax.train.progress, the TensorBoard and W&B loggers in llmjax.train.loggers)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import jax

from llmjax import scaling
from llmjax.train.trainer import Hook, Trainer

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from llmjax.train.state import TrainState


class TrainingDiverged(RuntimeError):
    """Too many non-finite steps in a row."""


class TrainingInterrupted(RuntimeError):
    """The run was stopped by a signal (SIGTERM, SIGINT) after saving what it had trained."""

    def __init__(self, message: str, *, signal_name: str, step: int):
        super().__init__(message)
        self.signal_name, self.step = signal_name, step


def every(n: int, step: int, last: int | None = None) -> bool:
    return step % n == 0 or step == last


class TrainLog(Hook):
    """Averages the loss (and the objective's `logged` metrics) over each logging interval and
    emits a "train" record every `log_every` steps (and at `last`): loss, lr, grad norm,
    tokens/s, MFU; stops the run with TrainingDiverged after `max_nonfinite` non-finite steps
    in a row.

    Throughput is timed from the first step's results on: the first step of a loop compiles
    (or waits for a compile), so it is left out of tokens/s and MFU and reported alone as
    "first_step_s" in the first record. A record whose interval holds no other step has no
    tokens/s. Evaluations, and the hooks that take each record, are not timed either.
    """

    def __init__(
        self,
        *,
        log_every: int,
        last: int,
        max_nonfinite: int,
        tokens_per_step: int,
        flops_per_token: float | None = None,
        peak_flops: Callable[[], float | None] | None = None,
        logged: tuple[str, ...] = (),
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.log_every, self.last, self.max_nonfinite = log_every, last, max_nonfinite
        self.clock = clock
        self.logged = tuple(logged)
        self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
        # Called at the first log record (on CPU it times a matmul), not while compiling.
        self.peak_flops = peak_flops
        self.trainer: Trainer | None = None

    def on_start(self, trainer: Trainer, step: int) -> None:
        self.trainer = trainer
        self.reset(step)
        self.started, self.first_step_s = self.t0, None

    def reset(self, step: int) -> None:
        self.loss_sum, self.count, self.step0 = 0.0, 0, step
        self.sums = dict.fromkeys(self.logged, 0.0)
        self.t0, self.timed_from = self.clock(), step

    def state_dict(self) -> dict[str, Any]:
        # A window that spans a checkpoint continues after a resume: the record at its end
        # averages the same steps as without the interruption.
        return {"loss_sum": self.loss_sum, "count": self.count, "window_start": self.step0,
                "sums": dict(self.sums)}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss_sum, self.count = float(state["loss_sum"]), int(state["count"])
        self.step0 = int(state["window_start"])
        saved = state.get("sums", {})  # absent in checkpoints written before it was kept
        self.sums = {k: float(saved.get(k, 0.0)) for k in self.logged}

    def on_metrics(self, step: int, m: dict[str, Any]) -> None:
        if self.started is not None:  # the loop's first step: compiled, so timed apart
            now = self.clock()
            self.first_step_s, self.started = now - self.started, None
            self.t0, self.timed_from = now, step
        streak = int(m["nonfinite_streak"])
        if streak:
            if streak >= self.max_nonfinite:
                raise TrainingDiverged(
                    f"loss or gradients were non-finite for {streak} steps in a row (steps "
                    f"{step - streak + 1}..{step}); every one of them was skipped, and no "
                    f"checkpoint was written while they were non-finite. Lower optim.lr, "
                    f"lengthen optim.warmup_steps, keep optim.clip_norm set, add train.z_loss, "
                    f"or check the data."
                )
        else:
            self.loss_sum += float(m["loss"])
            for k in self.sums:
                self.sums[k] += float(m[k])
            self.count += 1
        if not every(self.log_every, step, self.last):
            return
        elapsed = self.clock() - self.t0
        tokens = (step - self.timed_from) * self.tokens_per_step
        record = {
            "step": step,
            "split": "train",
            "loss": self.loss_sum / self.count if self.count else float("nan"),
            "lr": float(m["lr"]),
            "grad_norm": float(m["grad_norm"]),
            "nonfinite_total": int(m["nonfinite_total"]),
        }
        if tokens > 0 and elapsed > 0:
            record["tokens_per_s"] = tokens / elapsed
        if self.first_step_s is not None:
            record["first_step_s"], self.first_step_s = self.first_step_s, None
        for k, total in self.sums.items():
            record[k] = total / self.count if self.count else float("nan")
        peak = self.peak_flops() if self.peak_flops and "tokens_per_s" in record else None
        if peak and self.flops_per_token:
            record["mfu"] = scaling.mfu(self.flops_per_token, record["tokens_per_s"], peak)
        if "loss_scale" in m:
            record["loss_scale"] = float(m["loss_scale"])
        self.trainer.emit(record)
        self.reset(step)

    def on_record(self, record: dict[str, Any]) -> None:
        if record.get("split") == "val":  # evaluation time is not training throughput
            self.t0, self.timed_from = self.clock(), record["step"]


class Evaluate(Hook):
    """Evaluates every `every` steps (and at `last`) on `batches()` and emits a "val" record."""

    def __init__(self, batches: Callable[[], Iterable[dict]], *, every: int, last: int | None):
        self.batches, self.every, self.last = batches, every, last
        self.trainer: Trainer | None = None
        self.latest: dict[str, float] = {}

    def on_start(self, trainer: Trainer, step: int) -> None:
        self.trainer = trainer

    def due(self, step: int, end: int) -> bool:
        return every(self.every, step, self.last)

    def on_state(self, step: int, state: TrainState) -> None:
        self.latest = self.trainer.evaluate(state, self.batches())
        self.trainer.emit({"step": step, "split": "val", **self.latest})


class EvaluateAt(Hook):
    """Evaluates on each named split after each of `steps` and emits one record per split
    ({"step", "split": its name, metrics...}): learning curves at chosen (e.g. log-spaced)
    steps, on as many held-out sets as a study compares (target, source, ...)."""

    def __init__(self, splits: Mapping[str, Callable[[], Iterable[dict]]], steps: Collection[int]):
        if not splits:
            raise ValueError("EvaluateAt needs at least one split to evaluate on")
        self.splits, self.steps = dict(splits), frozenset(steps)
        self.trainer: Trainer | None = None

    def on_start(self, trainer: Trainer, step: int) -> None:
        self.trainer = trainer

    def due(self, step: int, end: int) -> bool:
        return step in self.steps

    def on_state(self, step: int, state: TrainState) -> None:
        for name, batches in self.splits.items():
            report = self.trainer.evaluate(state, batches())
            self.trainer.emit({"step": step, "split": name, **report})


class Checkpoint(Hook):
    """Saves the state every `every` steps and when the loop ends; closes the checkpointer.

    A state after non-finite steps, or with non-finite params, is never saved: the newest
    checkpoint stays the last good one. Each save keeps the hooks' `state_dict`s beside it.
    """

    def __init__(self, checkpointer: Any, *, every: int):
        self.checkpointer, self.every = checkpointer, every
        self.trainer: Trainer | None = None
        self.saved_step: int | None = None
        self.refused_step: int | None = None
        self.nonfinite = False

    def on_start(self, trainer: Trainer, step: int) -> None:
        # A resumed run starts from a checkpoint of its start step; a fresh one has none.
        self.trainer, self.saved_step = trainer, step if step > 0 else None

    def on_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        self.nonfinite = int(metrics.get("nonfinite_streak", 0)) > 0

    def due(self, step: int, end: int) -> bool:
        return every(self.every, step, end)

    def on_state(self, step: int, state: TrainState) -> None:
        if self.nonfinite or not self.trainer.params_finite(state):
            self.refused_step = step
            what = "the last step was non-finite" if self.nonfinite else "params are non-finite"
            log.warning(
                "step %d: no checkpoint written (%s); the newest good one is step %s",
                step,
                what,
                self.saved_step,
            )
            return
        meta = {**self.trainer.checkpoint_meta, "hooks": self.trainer.hook_states()}
        self.checkpointer.save(step, self.trainer.checkpoint_view(state), meta=meta)
        self.saved_step = step

    def on_end(self, step: int, state: TrainState) -> None:
        if step > 0 and step not in (self.saved_step, self.refused_step):  # stopped early
            self.on_state(step, state)

    def close(self) -> None:
        self.checkpointer.close()


class Preemption(Hook):
    """Ends the loop cleanly on SIGTERM or SIGINT (Ctrl-C): the current step finishes, and the
    loop ends as if its steps were done (the Checkpoint hook saves). A second Ctrl-C stops at
    once. With several processes, the stop comes from JAX's preemption sync point instead, so
    that every process stops after the same step."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signal_name: str | None = None
        self.trainer: Trainer | None = None
        self._previous: dict[int, Any] = {}
        self._sync_point = jax.process_count() > 1

    def on_start(self, trainer: Trainer, step: int) -> None:
        self.trainer, self.signal_name = trainer, None
        if self._sync_point or threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = name
        self.trainer.request_stop(f"received {name}")
        sys.stderr.write(
            f"\nllmjax: received {name}; finishing the current step and saving a checkpoint"
            f"{' (Ctrl-C again stops at once)' if signum == signal.SIGINT else ''}\n"
        )

    def on_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        if not self._sync_point:
            return
        from jax.experimental import multihost_utils

        try:
            reached = multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError:  # no preemption service in this cluster
            self._sync_point = False
            return
        if reached:
            self.signal_name = "SIGTERM"
            self.trainer.request_stop("preempted")

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


class EarlyStop(Hook):
    """Stops training when an evaluated metric reaches `target`, or has not improved by
    `min_delta` in `patience` evaluations (lower is better unless `mode="max"`)."""

    def __init__(
        self,
        metric: str = "loss",
        *,
        split: str = "val",
        target: float | None = None,
        patience: int | None = None,
        min_delta: float = 0.0,
        mode: str = "min",
    ):
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStop mode must be 'min' or 'max', got {mode!r}")
        if target is None and patience is None:
            raise ValueError("EarlyStop needs a target, a patience, or both")
        self.metric, self.split, self.target = metric, split, target
        self.patience, self.min_delta, self.sign = patience, min_delta, 1 if mode == "min" else -1
        self.best, self.waited, self.reason = float("inf"), 0, ""
        self.trainer: Trainer | None = None

    def on_start(self, trainer: Trainer, step: int) -> None:
        self.trainer = trainer

    def on_record(self, record: dict[str, Any]) -> None:
        if record.get("split") != self.split or self.metric not in record:
            return
        value = self.sign * float(record[self.metric])
        if self.target is not None and value <= self.sign * self.target:
            self.reason = (
                f"{self.split} {self.metric} reached {self.target} at step {record['step']}"
            )
        elif value < self.best - self.min_delta:
            self.best, self.waited = value, 0
            return
        else:
            self.waited += 1
            if self.patience is None or self.waited < self.patience:
                return
            self.reason = (
                f"{self.split} {self.metric} did not improve for {self.waited} evaluations "
                f"(step {record['step']})"
            )
        self.trainer.request_stop(self.reason)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "waited": self.waited}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.waited = float(state["best"]), int(state["waited"])


class MetricsFile(Hook):
    """Writes every record to a MetricsLog (metrics.jsonl)."""

    def __init__(self, log: Any):
        self.log = log

    def on_record(self, record: dict[str, Any]) -> None:
        self.log.write(record)


class LossPlot(Hook):
    """Draws the run's loss curves (`plot_losses`: train, val and the learning rate) at each
    evaluation and when the loop ends; if the loop raises (a second Ctrl-C, divergence), when
    it closes. The records are the trainer's history (a resumed run's earlier ones included)."""

    def __init__(self, path: Any, *, title: str = ""):
        self.path, self.title = path, title
        self.trainer: Trainer | None = None
        self.stale = False

    def on_start(self, trainer: Trainer, step: int) -> None:
        self.trainer, self.stale = trainer, True

    def on_record(self, record: dict[str, Any]) -> None:
        self.stale = True
        if record.get("split") == "val":
            self.draw()

    def on_end(self, step: int, state: TrainState) -> None:
        if self.stale:  # not drawn already at the last evaluation
            self.draw()

    def draw(self) -> None:
        from llmjax.train.metrics import plot_losses

        plot_losses(self.trainer.history, self.path, title=self.title)
        self.stale = False

    def close(self) -> None:
        if self.stale and self.trainer is not None:
            try:  # the loop is raising: the plot must not hide why
                self.draw()
            except Exception as e:  # noqa: BLE001
                log.warning("could not draw %s: %s", self.path, e)
