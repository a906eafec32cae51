"""What a checkpoint directory holds: the steps llmjax saved (its index), which step
directories are intact, and moving damaged ones aside.

    DIR/llmjax-index.json   the steps llmjax started and finished saving, with their metadata
    DIR/<step>/             an orbax checkpoint (`_CHECKPOINT_METADATA`, `default/`)
    DIR/damaged/<step>/     a step directory that could not be a checkpoint, moved aside

Only steps the index lists as llmjax's are ever deleted; anything else found in DIR is left
alone, or, when it has a step's name but is no intact checkpoint, moved under `damaged/`.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmjax.files import write_atomic

log = logging.getLogger(__name__)

INDEX_NAME = "llmjax-index.json"
DAMAGED_DIR = "damaged"
# orbax writes a step to `<step>.orbax-checkpoint-tmp-<n>` and renames it when it is complete.
_TMP = re.compile(r"^(\d+)\.orbax-checkpoint-tmp.*$")


def write_json(path: Path, obj: Any) -> None:
    """Writes JSON so that a reader sees the old file or the new one, never a torn one."""
    write_atomic(path, json.dumps(obj, indent=1, sort_keys=True))


def damage(step_dir: Path) -> str | None:
    """Why `step_dir` cannot be an intact checkpoint written by llmjax, or None if it can.

    A cheap look at its structure; damage inside the array files shows only when reading.
    """
    if not step_dir.is_dir():
        return "not a directory"
    if not any(step_dir.iterdir()):
        return "empty directory"
    for name in ("_CHECKPOINT_METADATA", "default/_METADATA"):
        part = step_dir / name
        if not part.is_file():
            return f"no {name} (not a complete orbax checkpoint)"
        try:
            json.loads(part.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            return f"{name} is truncated or not JSON"
    return None


def step_dirs(directory: Path) -> dict[int, Path]:
    """Every entry of `directory` named like a step (digits only), by step."""
    if not directory.is_dir():
        return {}
    return {int(p.name): p for p in directory.iterdir() if p.name.isdigit()}


def unfinished_saves(directory: Path) -> dict[Path, int]:
    """orbax's temporary directories of saves that never completed, with their steps."""
    if not directory.is_dir():
        return {}
    found = {}
    for p in directory.iterdir():
        match = _TMP.match(p.name)
        if match:
            found[p] = int(match.group(1))
    return found


def move_aside(directory: Path, entry: Path) -> Path:
    """Moves `entry` to `directory/damaged/<name>` (a fresh name if taken); returns where."""
    target_dir = directory / DAMAGED_DIR
    target_dir.mkdir(exist_ok=True)
    target = target_dir / entry.name
    n = 1
    while target.exists():
        n += 1
        target = target_dir / f"{entry.name}-{n}"
    shutil.move(str(entry), str(target))
    return target


@dataclass
class StepIndex:
    """The steps llmjax saved in a checkpoint directory: status ("saving" or "finished") and
    metadata (host-side state of the loop, e.g. the logging window) per step."""

    path: Path
    steps: dict[int, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: Path) -> StepIndex:
        path = directory / INDEX_NAME
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text())
            steps = {int(k): dict(v) for k, v in data["steps"].items()}
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
            # Written atomically, so this is outside damage: no step counts as llmjax's (none
            # will be deleted) until the next save writes a fresh index.
            log.warning("%s is unreadable; treating its steps as not written by llmjax", path)
            return cls(path)
        return cls(path, steps)

    def save(self) -> None:
        data = {"written_by": "llmjax", "steps": {str(k): v for k, v in sorted(self.steps.items())}}
        write_json(self.path, data)

    def start(self, step: int, meta: dict[str, Any] | None) -> None:
        self.steps[step] = {"status": "saving", "meta": meta or {}}

    def finish(self, step: int) -> None:
        if step in self.steps:
            self.steps[step]["status"] = "finished"

    def remove(self, step: int) -> None:
        self.steps.pop(step, None)

    def finished(self) -> list[int]:
        return sorted(s for s, v in self.steps.items() if v.get("status") == "finished")

    def meta(self, step: int) -> dict[str, Any]:
        return dict(self.steps.get(step, {}).get("meta", {}))


def remove_own_steps(directory: Path) -> list[str]:
    """Deletes the step directories (and unfinished saves) the index lists as llmjax's, and
    the index; returns the names of what else is left in `directory` (kept)."""
    index = StepIndex.load(directory)
    for step, path in step_dirs(directory).items():
        if step in index.steps:
            shutil.rmtree(path)
    for path, step in unfinished_saves(directory).items():
        if step in index.steps:
            shutil.rmtree(path)
    if index.path.exists():
        index.path.unlink()
    kept = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    if directory.is_dir() and not kept:
        directory.rmdir()
    return kept
