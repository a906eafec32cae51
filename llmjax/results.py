"""One results format for every experiment: results/NAME/metrics.json, PNG plots, a table.

`metrics.json` holds {"experiment", "created", "quick", "environment", "metrics", "rows"}: scalar
findings under "metrics", one dict per measured configuration under "rows".
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path
from typing import Any


def environment() -> dict[str, Any]:
    """Versions and hardware a result was measured on."""
    import jax

    import llmjax

    device = jax.devices()[0]
    return {
        "llmjax": llmjax.__version__,
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "device_count": jax.device_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of rows (columns in first-seen order)."""
    if not rows:
        return ""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def spread(values: Any) -> dict[str, float]:
    """The mean, min and max of a measurement over seeds (or repeats)."""
    import numpy as np

    v = np.asarray(values, np.float64)
    if not v.size:
        raise ValueError("spread needs at least one value")
    return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}


def write_results(
    name: str,
    metrics: dict[str, Any],
    *,
    rows: list[dict[str, Any]] | None = None,
    plots: dict[str, Any] | None = None,
    out_dir: str | Path = "results",
    quick: bool = False,
) -> Path:
    """Writes results/NAME/metrics.json and NAME/<plot>.png, prints the table; returns the dir.

    A plot may be a figure or a function returning one, called after metrics.json is written.
    """
    out = Path(out_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "experiment": name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": quick,
        "environment": environment(),
        "metrics": _jsonable(metrics),
        "rows": _jsonable(rows or []),
    }
    (out / "metrics.json").write_text(json.dumps(payload, indent=2) + "\n")
    for plot_name, figure in (plots or {}).items():
        if callable(figure):  # drawn only now, so a failing plot cannot lose the metrics
            figure = figure()
        figure.savefig(out / f"{plot_name}.png", dpi=110, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(figure)
    if rows:
        print(format_table(rows))
    print(f"results written to {out}")
    return out


def bar_pair(
    rows: list[dict[str, Any]],
    label: str,
    left: tuple[str, str],
    right: tuple[str, str],
    title: str,
) -> Any:
    """Two side-by-side horizontal bar charts of the rows, one bar per row labelled by
    row[label]; `left` and `right` are (column, x-axis label). Returns the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    names = [r[label] for r in rows]
    panels = zip(axes, (left, right), ("tab:blue", "tab:orange"), strict=True)
    for ax, (column, xlabel), color in panels:
        ax.barh(names, [r[column] for r in rows], color=color)
        ax.set_xlabel(xlabel)
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def seed_band(ax: Any, runs: list, label: str, *, alpha: float = 0.2, **line_kw: Any) -> None:
    """Draws the mean over seeds of (step, value) curves with their min-max as a band; a seed
    whose curve is shorter than the first one's (a run that diverged) is left out, and nothing
    is drawn when no curve is whole."""
    import numpy as np

    steps = [s for s, _ in runs[0]]
    values = np.asarray([[v for _, v in r] for r in runs if len(r) == len(steps)])
    if not values.size:
        return
    line = ax.plot(steps, values.mean(0), label=label, **line_kw)
    ax.fill_between(steps, values.min(0), values.max(0), color=line[0].get_color(), alpha=alpha)


def spread_bars(
    ax: Any, rows: list[dict[str, Any]], key: str, label: str, offset: float = 0.0,
    width: float = 0.8, **bar_kw: Any,
) -> None:  # fmt: skip
    """Bars of each row's `key` (a mean over seeds, as `llmjax.train.sweep.summarize` writes)
    at 0, 1, ... + offset, with min-max error bars from `key_min` and `key_max`."""
    import numpy as np

    mean = np.asarray([r.get(key, np.nan) for r in rows], float)
    # (clipped at 0: a mean over equal values can round a hair past its min or max)
    low = np.maximum(mean - np.asarray([r.get(f"{key}_min", np.nan) for r in rows], float), 0)
    high = np.maximum(np.asarray([r.get(f"{key}_max", np.nan) for r in rows], float) - mean, 0)
    ax.bar(np.arange(len(rows)) + offset, mean, width, yerr=[low, high], capsize=3, label=label,
           **bar_kw)  # fmt: skip


def experiment_parser(description: str) -> argparse.ArgumentParser:
    """The flags every experiment shares: --quick and --out-dir."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few seconds' version of the experiment (used by the tests)",
    )
    parser.add_argument("--out-dir", default="results", help="where results/NAME/ is written")
    return parser
