"""Orbax checkpoints of the train state: keep N, async saves, restore with fallback.

A step that fails to restore (truncated, or written by something else) is reported by name and
left on disk; the newest step that does restore is used instead. Nothing is ever deleted here
except by orbax's own keep-N rotation of steps this manager wrote.
"""

import logging
import warnings
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """No usable checkpoint; the message names the directory and what was found."""


class Checkpointer:
    """Saves and restores train states under `directory/<step>/`."""

    def __init__(self, directory: str | Path, *, keep: int = 2, async_save: bool = True):
        self.directory = Path(directory).absolute()
        if self.directory.exists() and not self.directory.is_dir():
            raise CheckpointError(f"checkpoint path {self.directory} exists and is not a directory")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any) -> None:
        self.manager.save(step, args=ocp.args.StandardSave(state))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def restore(
        self, abstract_state: Any, step: int | None = None, *, partial: bool = False
    ) -> tuple[Any, int]:
        """Restores `step` (default: the newest that restores) onto abstract_state's shardings.

        With `partial`, abstract_state may name a subset of what was saved (a dict of some of
        the saved fields), and only that subset is read.
        """
        steps = self.steps()
        if not steps:
            raise CheckpointError(
                f"no checkpoints in {self.directory}; expected numbered step directories written "
                f"by llmjax (start a fresh run instead of resuming)"
            )
        if step is not None:
            if step not in steps:
                raise CheckpointError(
                    f"no checkpoint for step {step} in {self.directory}; available: {steps}"
                )
            return self._restore(step, abstract_state, partial), step
        failures = []
        for candidate in reversed(steps):
            try:
                state = self._restore(candidate, abstract_state, partial)
            except Exception as e:  # orbax raises many types for damaged directories
                failures.append(f"step {candidate} ({self.directory / str(candidate)}): {e!s:.200}")
                continue
            if failures:
                message = (
                    "skipped unreadable checkpoint(s), kept on disk for inspection: "
                    + "; ".join(failures)
                    + f". Resumed from step {candidate}."
                )
                log.warning(message)
                warnings.warn(message, stacklevel=2)
            return state, candidate
        raise CheckpointError(
            f"none of the checkpoints in {self.directory} could be restored: " + "; ".join(failures)
        )

    def _restore(self, step: int, abstract_state: Any, partial: bool = False) -> Any:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        if partial:
            args = ocp.args.PyTreeRestore(
                item=abstract,
                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                partial_restore=True,
            )
            return self.manager.restore(step, args=args)
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
