"""A run directory: config, tokenizer, checkpoints, metrics and plots of one training run.

Layout::

    RUN/config.json      the full Config, vocabulary size included
    RUN/tokenizer.json   the tokenizer the run was trained with
    RUN/checkpoints/N/   orbax checkpoints of the train state after N steps
    RUN/metrics.jsonl    one JSON record per log / eval step
    RUN/loss.png         loss curves
"""

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# The only entries `--overwrite` removes; anything else a user put there is kept.
RUN_FILES = ("config.json", "tokenizer.json", "checkpoints", "metrics.jsonl", "loss.png")


class RunDirError(ValueError):
    """A run directory is missing, not an llmjax run, or would be overwritten."""


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def tokenizer(self) -> Path:
        return self.path / "tokenizer.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def plot(self) -> Path:
        return self.path / "loss.png"

    @classmethod
    def create(cls, path: str | Path, *, overwrite: bool = False) -> "RunDir":
        """A fresh run directory; an existing non-empty one needs overwrite=True."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise RunDirError(f"{path} exists and is not a directory; choose another --out")
        if path.is_dir() and any(path.iterdir()):
            if not overwrite:
                raise RunDirError(
                    f"run directory {path} already exists; pass --resume to continue it, "
                    f"--overwrite to replace it, or choose another --out"
                )
            kept = sorted(p.name for p in path.iterdir() if p.name not in RUN_FILES)
            for name in RUN_FILES:
                target = path / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
            if kept:
                log.warning("--overwrite kept files llmjax did not write in %s: %s", path, kept)
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        """An existing run directory, checked to be one llmjax wrote."""
        path = Path(path)
        if not path.exists():
            raise RunDirError(
                f"run directory {path} does not exist; pass a directory created by "
                f"`llmjax train --out DIR`"
            )
        run = cls(path)
        if not run.config.is_file():
            raise RunDirError(
                f"{path} is not an llmjax run directory (no config.json); pass a directory "
                f"created by `llmjax train --out DIR` or `llmjax convert`"
            )
        return run
