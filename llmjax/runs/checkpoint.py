"""Orbax checkpoints of the train state: async saves, keep the newest N, restore with fallback.

What is on disk stays usable when some of it is damaged (a save killed midway, a full disk, a
directory a user made): on opening, a step directory that is not an intact checkpoint is moved
under `damaged/` and named in a warning (read-only openers, for sampling or export, skip it
instead), and a step that fails to restore is treated the same way, falling back to the newest
one that restores. Keeping the newest N deletes only steps llmjax saved and finished (see
llmjax.runs.steps); nothing else in the directory is ever deleted.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from llmjax.distributed import barrier
from llmjax.errors import summarize
from llmjax.runs.steps import StepIndex, damage, move_aside, step_dirs, unfinished_saves

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """No usable checkpoint; the message names the directory and what was found."""


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped or moved aside (also logged)."""


class Checkpointer:
    """Saves and restores train states under `directory/<step>/`.

    `keep`: how many finished steps to keep (the newest; None keeps all). `meta` given to
    `save` is kept in the index beside the step and read back with `meta(step)`. With
    `read_only`, nothing on disk is changed: damaged steps are skipped with a warning.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        keep: int | None = 2,
        async_save: bool = True,
        read_only: bool = False,
    ):
        self.directory = Path(directory).absolute()
        if self.directory.exists() and not self.directory.is_dir():
            raise CheckpointError(f"checkpoint path {self.directory} exists and is not a directory")
        self.keep, self.async_save, self.read_only = keep, async_save, read_only
        self.primary = jax.process_index() == 0
        self.index = StepIndex.load(self.directory)
        self.skipped: dict[int, str] = {}  # damaged steps left in place (read-only)
        self._manager: ocp.CheckpointManager | None = None
        self._pending: list[int] = []
        self._check_steps()

    # ------------------------------------------------------------------------- what is there

    def _check_steps(self) -> None:
        """Sets aside damaged step directories; clears up saves of this index that a killed
        process left unfinished; marks steps finished that orbax completed."""
        changed = False
        for tmp, step in unfinished_saves(self.directory).items():
            if step in self.index.steps and not self.read_only and self.primary:
                shutil.rmtree(tmp, ignore_errors=True)  # llmjax's own half-written save
                if not (self.directory / str(step)).exists():
                    self.index.remove(step)
                changed = True
        found = step_dirs(self.directory)
        for step, path in sorted(found.items()):
            why = damage(path)
            if why is not None:
                changed |= self._set_aside(step, why)
            elif self.index.steps.get(step, {}).get("status") == "saving":
                self.index.finish(step)  # completed by orbax before the process ended
                changed = True
        for step in [s for s in self.index.steps if s not in found]:
            self.index.remove(step)  # removed by hand, or never written
            changed = True
        if changed and not self.read_only and self.primary:
            self.index.save()
        if not self.read_only:
            barrier("llmjax-checkpoint-check")

    def _set_aside(self, step: int, why: str) -> bool:
        """Moves a damaged step away (or, read-only, skips it); True if the index changed."""
        path = self.directory / str(step)
        if self.read_only or not self.primary:
            if step not in self.skipped:
                self.skipped[step] = why
                if self.primary:
                    _warn(f"skipping damaged checkpoint {path}: {why}")
            return False
        moved = move_aside(self.directory, path)
        _warn(f"checkpoint {path} is damaged ({why}); moved it to {moved}")
        self.index.remove(step)
        return True

    def steps(self) -> list[int]:
        """Steps with an intact checkpoint, oldest first."""
        return sorted(
            step
            for step, path in step_dirs(self.directory).items()
            if step not in self.skipped and damage(path) is None
        )

    def meta(self, step: int) -> dict[str, Any]:
        """What `save(step, ..., meta=)` kept beside the step ({} if nothing)."""
        return self.index.meta(step)

    # ------------------------------------------------------------------------- saving

    def _writer(self) -> ocp.CheckpointManager:
        if self.read_only:
            raise CheckpointError(f"{self.directory} was opened read-only")
        if self._manager is None:
            # Rotation is ours (only finished steps llmjax saved are deleted), not orbax's.
            options = ocp.CheckpointManagerOptions(
                max_to_keep=None, create=True, enable_async_checkpointing=self.async_save
            )
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        return self._manager

    def save(self, step: int, state: Any, meta: dict[str, Any] | None = None) -> None:
        """Starts saving `state` as `step` (in the background unless async_save=False)."""
        manager = self._writer()
        self._finish_pending()
        existing = self.directory / str(step)
        if existing.exists() and self.primary:
            if step in self.index.steps:  # a stale save of this run, trained again
                manager.delete(step)
                self.index.remove(step)
            else:  # something else with the step's name: never overwritten
                moved = move_aside(self.directory, existing)
                _warn(f"{existing} was not saved by llmjax and is in the way; moved it to {moved}")
        barrier("llmjax-checkpoint-save")
        if self.primary:
            self.index.start(step, meta)
            self.index.save()
        # force: orbax would skip a step older than the newest on disk (e.g. a foreign one).
        if not manager.save(step, args=ocp.args.StandardSave(state), force=True):
            raise CheckpointError(f"orbax declined to save step {step} in {self.directory}")
        self._pending.append(step)
        if not self.async_save:
            self._finish_pending()

    def wait(self) -> None:
        """Waits for saves in flight; then they count as finished and old steps rotate out."""
        self._finish_pending()

    def _finish_pending(self) -> None:
        if self._manager is None:
            return
        self._manager.wait_until_finished()
        if not self._pending:
            return
        for step in self._pending:
            why = damage(self.directory / str(step))
            if why is None:
                self.index.finish(step)
            else:
                _warn(f"saving checkpoint step {step} in {self.directory} failed: {why}")
        self._pending = []
        if self.keep:
            for step in self.index.finished()[: -self.keep]:
                self._manager.delete(step)
                self.index.remove(step)
        if self.primary:
            self.index.save()

    # ------------------------------------------------------------------------- restoring

    def restore(
        self, abstract_state: Any, step: int | None = None, *, partial: bool = False
    ) -> tuple[Any, int]:
        """Restores `step` (default: the newest that restores) onto abstract_state's shardings.

        With `partial`, abstract_state may name a subset of what was saved (a dict of some of
        the saved fields), and only that subset is read.
        """
        self._finish_pending()
        steps = self.steps()
        if not steps:
            skipped = "".join(
                f"; skipped damaged step {s}: {why}" for s, why in sorted(self.skipped.items())
            )
            raise CheckpointError(
                f"no intact checkpoints in {self.directory}{skipped}; expected numbered step "
                f"directories written by llmjax (start a fresh run instead of resuming)"
            )
        if step is not None:
            if step not in steps:
                raise CheckpointError(
                    f"no intact checkpoint for step {step} in {self.directory}; available: {steps}"
                )
            try:
                return self._restore(step, abstract_state, partial), step
            except Exception as e:  # orbax raises many types for damaged directories
                where = self.directory / str(step)
                raise CheckpointError(
                    f"checkpoint {where} could not be read ({summarize(e, 240)}); "
                    f"intact-looking steps: {steps}"
                ) from None
        failed: list[tuple[int, str]] = []
        for candidate in reversed(steps):
            try:
                state = self._restore(candidate, abstract_state, partial)
            except Exception as e:  # orbax raises many types for damaged directories
                failed.append((candidate, summarize(e, 240)))
                continue
            # An older step restored onto the same target, so the newer ones are damaged.
            for bad, why in failed:
                self._set_aside(bad, f"reading it failed: {why}")
            if failed and not self.read_only and self.primary:
                self.index.save()
            if failed:
                _warn(f"restored step {candidate} of {self.directory}, its newest readable one")
            return state, candidate
        # Nothing restores: more likely a state of another shape than damage everywhere, so
        # nothing is moved.
        reasons = "; ".join(f"step {s}: {why}" for s, why in failed[:3])
        raise CheckpointError(
            f"none of the checkpoints in {self.directory} could be read ({reasons}): they are "
            f"damaged, or the model or optimizer settings differ from the ones they were saved "
            f"with. Nothing was moved; restore those settings, or start a fresh run"
        )

    def _restore(self, step: int, abstract_state: Any, partial: bool = False) -> Any:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        path = self.directory / str(step) / "default"
        if partial:
            args = ocp.args.PyTreeRestore(
                item=abstract,
                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                partial_restore=True,
            )
            with ocp.PyTreeCheckpointer() as reader:
                return reader.restore(path, args=args)
        with ocp.StandardCheckpointer() as reader:
            return reader.restore(path, abstract)

    def close(self) -> None:
        self._finish_pending()
        if self._manager is not None:
            self._manager.close()
            self._manager = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _warn(message: str) -> None:
    log.warning(message)
    warnings.warn(message, CheckpointWarning, stacklevel=3)
