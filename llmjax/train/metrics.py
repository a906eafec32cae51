"""Metrics as JSON lines (one record per log or eval step) and the loss-curve plot."""

import contextlib
import json
import logging
import math
import os
import threading
from pathlib import Path
from typing import Any

from llmjax.files import write_atomic

log = logging.getLogger(__name__)

# Fields of a record that differ between two runs of one config: timing and wall time.
TIMING_FIELDS = ("tokens_per_s", "mfu", "first_step_s", "wall_time")


def _clean(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


class MetricsLog:
    """Appends records to `metrics.jsonl`; on resume, drops records past the restored step."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")

    def truncate_after(self, step: int) -> None:
        records = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in records))


class MetricsFileError(ValueError):
    """metrics.jsonl has a damaged line that is not the last (a torn last line is dropped)."""


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics file. A torn last line (a write cut off by a crash or a full
    disk) is dropped with a warning; `MetricsLog.truncate_after` then rewrites the file
    without it."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise MetricsFileError(f"cannot read {path} ({e}); move it away to start it anew") from None
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError:
            if n == len(lines):
                log.warning("%s: dropped its torn last line %d", path, n)
                break
            raise MetricsFileError(
                f"{path} line {n} is not a JSON record; delete that line (or move the file "
                f"away) and run again"
            ) from None
        records.append(record)
    return records


def preload_plotting() -> threading.Thread:
    """Imports matplotlib (about a second) on a background thread, so that the loss plot at the
    end of a run does not pay for it; XLA compiles meanwhile with the interpreter lock free."""

    def load() -> None:
        # A broken install is plot_losses's to report, at the end of the run.
        with contextlib.suppress(Exception):
            import matplotlib.pyplot  # noqa: F401

    thread = threading.Thread(target=load, name="llmjax-preload", daemon=True)
    thread.start()
    return thread


def loss_figure(records: list[dict[str, Any]], title: str = "") -> Any:
    """A matplotlib figure of train and validation loss against step, with the learning rate
    of the train records on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for split, style in (("train", "-"), ("val", "o-")):
        points = _points(records, split, "loss")
        if points:
            steps, losses = zip(*points, strict=True)
            ax.plot(steps, losses, style, label=split, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    lr = _points(records, "train", "lr")
    if lr:
        lr_ax = ax.twinx()
        steps, rates = zip(*lr, strict=True)
        lr_ax.plot(steps, rates, "--", color="tab:gray", linewidth=1, label="lr")
        lr_ax.set_ylabel("learning rate")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        more_handles, more_labels = lr_ax.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    if handles:
        ax.legend(handles, labels)
    fig.tight_layout()
    return fig


def plot_losses(records: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """`loss_figure` saved as a PNG; a reader sees the old plot or the new one, never a torn
    file (it is redrawn during the run)."""
    path = Path(path)
    fig = loss_figure(records, title)
    import matplotlib.pyplot as plt  # after loss_figure chose the Agg backend

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    return path


def _points(records: list[dict[str, Any]], split: str, key: str) -> list[tuple[int, float]]:
    return [
        (r["step"], r[key])
        for r in records
        if r.get("split") == split and isinstance(r.get(key), float) and math.isfinite(r[key])
    ]
