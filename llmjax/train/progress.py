"""What a run shows while it trains: a tqdm bar on a terminal (or in a notebook), plain
one-line records when its output goes to a file or a pipe (a log gets no carriage returns)."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from llmjax.train.trainer import Hook, Trainer

# Record fields the plain lines leave out (the step and split lead each line).
_UNSHOWN = ("step", "split", "wall_time", "nonfinite_total")


def interactive(*streams: TextIO) -> bool:
    """Whether a progress bar can redraw itself: in a notebook, or every stream a terminal."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is not None and "IPKernelApp" in getattr(shell, "config", {}):
        return True
    return all(getattr(s, "isatty", lambda: False)() for s in streams)


def record_line(
    record: dict[str, Any], total: int | None = None, start: float | None = None
) -> str:
    """One line for a record: "step 20/400 train loss 2.3145 lr 1.00e-03 ... (12.3 s)"."""
    step = f"{record['step']}/{total}" if total else str(record["step"])
    parts = [f"step {step}", str(record.get("split", ""))]
    for key, value in record.items():
        if key in _UNSHOWN or isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            parts.append(f"{key} {_number(key, value)}")
    wall = record.get("wall_time")
    if start is not None and isinstance(wall, float):
        parts.append(f"({wall - start:.1f} s)")
    return " ".join(p for p in parts if p)


def _number(key: str, value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if key.endswith("_per_s") or abs(value) >= 1e4 or (value.is_integer() and abs(value) >= 10):
        return f"{value:.0f}"
    if value != 0 and abs(value) < 1e-2:
        return f"{value:.2e}"
    return f"{value:.4f}"


class ProgressBar(Hook):
    """A tqdm bar over the steps with the latest train loss, evaluations as lines under it,
    when stdout and stderr are terminals (or in a notebook); else one plain line per record
    on stdout. `plain` forces one or the other; `disable` shows nothing."""

    def __init__(self, total: int, *, disable: bool = False, plain: bool | None = None):
        self.total, self.disable, self.plain = total, disable, plain
        self.bar, self.stream, self.start = None, None, None

    def on_start(self, trainer: Trainer, step: int) -> None:
        self.start = time.time()
        if self.disable:
            return
        self.stream = sys.stdout  # looked up now: a redirected stdout is the one written to
        if self.plain if self.plain is not None else not interactive(sys.stdout, sys.stderr):
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total, initial=step, desc="train", dynamic_ncols=True)

    def on_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def on_record(self, record: dict[str, Any]) -> None:
        if self.disable:
            return
        if self.bar is None:
            self.stream.write(record_line(record, self.total, self.start) + "\n")
            self.stream.flush()
        elif record.get("split") == "train":
            shown = {"loss": f"{record['loss']:.4f}", "lr": f"{record['lr']:.2e}"}
            if "tokens_per_s" in record:
                shown["tok_s"] = f"{record['tokens_per_s']:.0f}"
            self.bar.set_postfix(shown)
        elif record.get("split") == "val" and "loss" in record:
            bpb = f", bpb {record['bits_per_byte']:.4f}" if "bits_per_byte" in record else ""
            self.bar.write(f"step {record['step']}: val loss {record['loss']:.4f}{bpb}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
