"""A run directory: config, tokenizer, checkpoints, metrics and plots of one training run.

Layout::

    RUN/config.json      the full Config, vocabulary size included
    RUN/tokenizer.json   the tokenizer the run was trained with
    RUN/checkpoints/N/   orbax checkpoints of the train state after N steps
    RUN/metrics.jsonl    one JSON record per log / eval step
    RUN/loss.png         loss curves
    RUN/chat_template.json, chat_template.jinja   the chat template a chat model uses
    RUN/generation_config.json   the ids generation stops at (a converted HF model's EOS list)
    RUN/sft.json         the instruction data of a `llmjax sft` run (to resume it)
    RUN/preference.json  the pairs of a `llmjax reward` / `llmjax dpo` run (to resume it)
    RUN/llmjax-manifest.json   which of these files llmjax wrote (and may replace)
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from llmjax.runs.steps import StepIndex, damage, remove_own_steps, step_dirs, write_json

log = logging.getLogger(__name__)

# What a run writes beside its checkpoints. The manifest names the ones a run claimed; only
# those (and the checkpoint steps its index lists) are ever removed.
MANIFEST = "llmjax-manifest.json"
RUN_FILES = (
    "config.json",
    "tokenizer.json",
    "metrics.jsonl",
    "loss.png",
    # What a fine-tuned or converted chat model adds (llmjax.runs.chat_template, finetune).
    "chat_template.json",
    "chat_template.jinja",
    # The EOS ids of a model converted from Hugging Face (llmjax.hf.run).
    "generation_config.json",
    "sft.json",
    "preference.json",
)
CHECKPOINTS = "checkpoints"


class RunDirError(ValueError):
    """A run directory is missing, not an llmjax run, or would be overwritten."""


def read_manifest(path: Path) -> list[str] | None:
    """The files the manifest in run directory `path` claims, or None if it has none."""
    file = path / MANIFEST
    if not file.is_file():
        return None
    try:
        files = json.loads(file.read_text())["files"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise RunDirError(
            f"{file} is damaged, so llmjax cannot tell its files in {path} from yours; move the "
            f"directory away or choose another --out"
        ) from None
    return [f for f in files if f in RUN_FILES]


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
    def generation_config(self) -> Path:
        return self.path / "generation_config.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def plot(self) -> Path:
        return self.path / "loss.png"

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST

    def claim(self) -> None:
        """Writes the manifest: the run files below are llmjax's to replace and remove."""
        write_json(self.manifest, {"written_by": "llmjax", "files": list(RUN_FILES)})

    def has_checkpoint(self) -> bool:
        """Whether an intact checkpoint llmjax saved is there (something to resume)."""
        index = StepIndex.load(self.checkpoints)
        return any(
            s in index.steps and damage(p) is None for s, p in step_dirs(self.checkpoints).items()
        )

    @classmethod
    def create(cls, path: str | Path, *, overwrite: bool = False) -> "RunDir":
        """A fresh run directory. An existing one is replaced when `overwrite` is set, or when
        it is a run that never saved a checkpoint (a start that failed or was killed); only
        llmjax's own files are removed, and a user's file in the way stops the start."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise RunDirError(f"{path} exists and is not a directory; choose another --out")
        run = cls(path)
        if path.is_dir() and any(path.iterdir()):
            claimed = read_manifest(path)
            restart = claimed is not None and not run.has_checkpoint()
            if not (overwrite or restart):
                raise RunDirError(
                    f"run directory {path} already exists; pass --resume to continue it, "
                    f"--overwrite to replace it, or choose another --out"
                )
            if restart and not overwrite:
                log.warning("%s holds no checkpoint yet; starting the run there afresh", path)
            for name in claimed or []:
                if (path / name).is_file():
                    (path / name).unlink()
            if claimed is not None:
                kept = remove_own_steps(run.checkpoints)
                if kept:
                    log.warning("kept files llmjax did not write in %s: %s", run.checkpoints, kept)
                run.manifest.unlink()
            clashes = [n for n in (*RUN_FILES, MANIFEST) if (path / n).exists()]
            clashes += [f"{CHECKPOINTS}/{s}" for s in sorted(step_dirs(run.checkpoints))]
            if clashes:
                raise RunDirError(
                    f"{path} holds {', '.join(clashes)}, which llmjax did not write (no "
                    f"{MANIFEST} lists them) and a run would replace; move them away or choose "
                    f"another --out"
                )
            kept = sorted(p.name for p in path.iterdir())
            if kept:
                log.warning("kept files llmjax did not write in %s: %s", path, kept)
        try:
            path.mkdir(parents=True, exist_ok=True)
            run.claim()
        except OSError as e:
            raise RunDirError(
                f"cannot write the run directory {path} ({e.strerror or e}); choose an --out "
                f"you can write to"
            ) from None
        return run

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
        if not run.config.is_file() and run.manifest.is_file():
            raise RunDirError(
                f"{path} is a run that stopped before writing its config.json; start it again "
                f"with the original command (without --resume): nothing was trained there yet"
            )
        if not run.config.is_file():
            raise RunDirError(
                f"{path} is not an llmjax run directory (no config.json); pass a directory "
                f"created by `llmjax train --out DIR` or `llmjax convert`"
            )
        return run
