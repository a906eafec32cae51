"""Experiment outputs: results/NAME/metrics.json, PNG plots, and a table printed to stdout."""

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _clean(value: Any) -> Any:
    """JSON-safe values: NumPy scalars become floats/ints, NaN and inf become None."""
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows of dicts as an aligned text table (columns in first-seen order)."""
    if not rows:
        return ""
    columns = list(dict.fromkeys(key for row in rows for key in row))

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def write_results(
    name: str,
    metrics: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]] | None = None,
    plots: Mapping[str, Any] | None = None,
    out_dir: str | Path = "results",
) -> Path:
    """Writes out_dir/name/metrics.json ({**metrics, "rows": rows}) and one PNG per matplotlib
    figure in `plots` (file stem -> figure), prints the rows as a table; returns the folder."""
    folder = Path(out_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    payload = dict(metrics)
    if rows is not None:
        payload["rows"] = list(rows)
    (folder / "metrics.json").write_text(json.dumps(_clean(payload), indent=2) + "\n")
    for stem, figure in (plots or {}).items():
        figure.savefig(folder / f"{stem}.png")
        import matplotlib.pyplot as plt

        plt.close(figure)
    if rows:
        print(format_table(rows))
    print(f"wrote {folder}")
    return folder
