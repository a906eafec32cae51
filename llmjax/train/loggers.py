"""Where a run's records go besides metrics.jsonl: TensorBoard (tensorboardX) and Weights &
Biases, named in train.loggers (`llmjax train --log-to tensorboard,wandb`).

A logger is registered under its name and gets every record (the step, the split, numbers)
as scalars tagged "split/metric" ("train/loss", "val/loss"). Each needs its package, an extra
of llmjax: `pip install 'llmjax[tensorboard]'`, `pip install 'llmjax[wandb]'`.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from pathlib import Path
from typing import Any, ClassVar

from llmjax.config import Config, ConfigError, to_dict
from llmjax.errors import summarize
from llmjax.registry import Registry
from llmjax.train.trainer import Hook, Trainer

log = logging.getLogger(__name__)

# Fields of a record that are not a metric.
_NOT_SCALARS = ("step", "split", "wall_time")


class Logger:
    """Receives a run's records. `open` comes before the first `write`, after the loop's
    start: `start_step` is the step the run starts (or resumes) from, `state` what
    `state_dict` gave when the checkpoint it resumes from was saved (None for a new run)."""

    package: ClassVar[str]  # the module it imports
    extra: ClassVar[str]  # the llmjax extra that installs it

    def __init__(self, run_dir: Path, cfg: Config):
        self.run_dir, self.cfg = Path(run_dir), cfg

    def open(self, start_step: int, state: dict[str, Any] | None) -> None:
        raise NotImplementedError

    def write(self, record: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flushes and closes; called once, also when the loop raised."""

    def state_dict(self) -> dict[str, Any] | None:
        """What a resumed run needs to continue logging where this one was (kept as JSON with
        each checkpoint); None if nothing."""
        return None


LOGGERS: Registry[type[Logger]] = Registry("logger")


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a record, tagged "split/metric" ("train/loss", "val/bits_per_byte")."""
    split = record.get("split", "train")
    return {
        f"{split}/{key}": float(value)
        for key, value in record.items()
        if key not in _NOT_SCALARS
        and isinstance(value, int | float)
        and not isinstance(value, bool)
    }


def logger_names(spec: str) -> list[str]:
    """The logger names in a train.loggers value ("tensorboard, wandb"), checked: each is a
    registered logger whose package imports. A missing package names the extra to install."""
    names = list(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))
    for name in names:
        cls = LOGGERS.get(name, field="train.loggers")
        try:
            importlib.import_module(cls.package)
        except ImportError as e:
            raise ConfigError(
                f"train.loggers={spec!r} names {name}, which needs the {cls.package} package "
                f"({summarize(e)}); install it with pip install 'llmjax[{cls.extra}]', or drop "
                f"{name} from train.loggers (--log-to)"
            ) from None
    return names


@LOGGERS.register("tensorboard")
class TensorBoard(Logger):
    """Scalars as TensorBoard event files in RUN/tensorboard (`tensorboard --logdir RUN`), at
    each record's step and wall time. A resumed run purges the events past its checkpoint, as
    metrics.jsonl drops those records; a new run purges those of an earlier run in its place."""

    package, extra = "tensorboardX", "tensorboard"

    @property
    def directory(self) -> Path:
        return self.run_dir / "tensorboard"

    def open(self, start_step: int, state: dict[str, Any] | None) -> None:
        from tensorboardX import SummaryWriter

        # TensorBoard drops the events of step >= purge_step written before this point.
        purge = start_step + 1 if start_step else 0
        # Event files are named by the whole second they were opened in: the suffix keeps the
        # file of a run restarted within that second from replacing the one before it, and
        # sorts after it (TensorBoard reads the files in name order).
        suffix = f".{time.time_ns()}"
        self.writer = SummaryWriter(str(self.directory), purge_step=purge, filename_suffix=suffix)

    def write(self, record: dict[str, Any]) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, record["step"], walltime=record.get("wall_time"))
        self.writer.flush()  # a killed run keeps every record it wrote

    def close(self) -> None:
        self.writer.close()


@LOGGERS.register("wandb")
class WandB(Logger):
    """Records to a Weights & Biases run named after the run directory, with the config as
    its config and its files in RUN/wandb. The project is $WANDB_PROJECT (default: llmjax);
    the other WANDB_* variables work as in wandb (WANDB_MODE=offline logs without a network,
    for `wandb sync` later; disabled logs nothing). A resumed run continues the same W&B run:
    its id is kept with each checkpoint."""

    package, extra = "wandb", "wandb"

    def open(self, start_step: int, state: dict[str, Any] | None) -> None:
        import wandb

        run_id = (state or {}).get("id")
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "llmjax"),
                # Read here, not once per process by wandb: each run of a process sees its own.
                mode=os.environ.get("WANDB_MODE"),
                name=self.run_dir.name,
                dir=str(self.run_dir),
                config=to_dict(self.cfg),
                id=run_id,
                resume="allow" if run_id else None,
            )
        except Exception as e:  # noqa: BLE001  (wandb's errors have no common base)
            raise ConfigError(
                f"train.loggers: wandb could not start a run ({summarize(e)}); log in with "
                f"`wandb login`, or set WANDB_MODE=offline (and `wandb sync` later) or "
                f"WANDB_MODE=disabled"
            ) from None

    def write(self, record: dict[str, Any]) -> None:
        self.run.log(scalars(record), step=int(record["step"]))

    def close(self) -> None:
        self.run.finish()

    def state_dict(self) -> dict[str, Any] | None:
        run_id = getattr(self.run, "id", None)
        return {"id": run_id} if run_id else None


class Loggers(Hook):
    """Hands every record to the named loggers, which open when the loop has started (with
    what they kept with the checkpoint a run resumes from) and close with it."""

    def __init__(self, names: list[str], run_dir: str | Path, cfg: Config):
        self.loggers = {name: LOGGERS.get(name, field="train.loggers")(Path(run_dir), cfg)
                        for name in names}  # fmt: skip
        self.start_step, self.saved, self.opened = 0, {}, None

    def on_start(self, trainer: Trainer, step: int) -> None:
        self.start_step, self.saved, self.opened = step, {}, None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.saved = dict(state)

    def _open(self) -> dict[str, Logger]:
        if self.opened is None:
            self.opened = {}
            for name, logger in self.loggers.items():
                logger.open(self.start_step, self.saved.get(name))
                self.opened[name] = logger
        return self.opened

    def on_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        self._open()  # at the first step: a logger that cannot start stops the run at once

    def on_record(self, record: dict[str, Any]) -> None:
        for logger in self._open().values():
            logger.write(record)

    def state_dict(self) -> dict[str, Any] | None:
        if self.opened is None:
            return self.saved or None
        states = {name: logger.state_dict() for name, logger in self.opened.items()}
        return {name: state for name, state in states.items() if state is not None} or None

    def close(self) -> None:
        for name, logger in (self.opened or {}).items():
            try:
                logger.close()
            except Exception as e:  # noqa: BLE001  (closing one must not hide the run's end)
                log.warning("closing the %s logger failed: %s", name, summarize(e))
        self.opened = None
