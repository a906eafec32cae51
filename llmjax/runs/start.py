"""Where a run starts, decided in one place: fresh, resumed from its own newest checkpoint, or
a new run from another run's params (init-from).

`start_config` gives the config a command line starts from, before its --set overrides;
`open_start` then checks that config against what is on disk and opens or creates the run
directory. `llmjax train` calls both; `llmjax.fit` calls the second.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from llmjax.config import Config, ConfigError, get_preset, load_config
from llmjax.distributed import barrier
from llmjax.runs.init_from import Source, check_not_overwritten, init_from_config, open_source
from llmjax.runs.rundir import RunDir, RunDirError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Start:
    """How a run begins: its config, its directory, and what it continues or starts from."""

    cfg: Config
    run: RunDir | None  # None: nothing is written to disk
    resume: bool  # continue `run` from its newest checkpoint
    source: Source | None  # a run whose params a new run starts from

    @property
    def tokenizer_file(self) -> Path | None:
        """The tokenizer the run must use: its own when resuming, else the source's."""
        if self.resume and self.run is not None and self.run.tokenizer.exists():
            return self.run.tokenizer
        if self.source is not None:
            return self.source.run.tokenizer
        return None


def start_config(
    *,
    preset: str | None = None,
    resume: str | Path | None = None,
    init_from: str | Path | None = None,
    default_preset: str = "nano",
    base: Config | None = None,
) -> Config:
    """The config before overrides: the run's saved one when resuming the run in `resume`; the
    source's model and tokenizer on `preset` (else on the source's config) with `init_from`;
    else `preset` (default: `default_preset`). `base` (a config file's, read over the preset)
    takes the preset's place."""
    if resume is not None:
        if preset is not None or base is not None:
            raise ConfigError(
                f"--{'preset' if base is None else 'config'} cannot be combined with --resume: "
                f"the run's saved config is used; change train settings with --set "
                f"train.KEY=VALUE"
            )
        if init_from is not None:
            raise ConfigError(
                "--init-from starts a new run and --resume continues one; drop one of them"
            )
        # The run's own config is the base; overrides may change train.* (e.g. more steps).
        return load_config(RunDir.open(resume).config)
    if base is None and preset is not None:
        base = get_preset(preset)
    if init_from is not None:
        return init_from_config(init_from, base)
    return base if base is not None else get_preset(default_preset)


def open_start(
    cfg: Config,
    out: str | Path | None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    primary: bool = True,
) -> Start:
    """Checks `cfg` against the run directory `out` and opens it (resume) or creates it.

    Resuming keeps the saved model, data and optimizer settings (changing them is refused) and
    takes train and parallel settings from `cfg`: the mesh may change, the checkpoint is
    resharded onto it. With cfg.train.init_from (and no resume) the source is opened and
    checked before anything is written. Only the primary process creates the directory.
    """
    source = None
    if cfg.train.init_from and not resume:  # checked before a run directory is written
        source = open_source(cfg.train.init_from)
        check_not_overwritten(source, out)
    if out is None:
        if resume:
            raise RunDirError("resume needs the run directory to continue (--out DIR)")
        return Start(cfg, None, False, source)
    if resume:
        run = RunDir.open(out)
        saved = load_config(run.config)
        if cfg.optim.schedule_steps is None:  # not asked to change: the saved length stays
            optim = dataclasses.replace(cfg.optim, schedule_steps=saved.optim.schedule_steps)
            cfg = dataclasses.replace(cfg, optim=optim)
        changed = check_resumable(saved, cfg)
        if changed:
            log.warning("resuming %s with %s", run.path, "; ".join(changed))
        _check_schedule(saved, cfg)
        cfg = dataclasses.replace(saved, train=cfg.train, parallel=cfg.parallel, optim=cfg.optim)
        return Start(cfg, run, True, None)
    run = RunDir.create(out, overwrite=overwrite) if primary else RunDir(Path(out))
    barrier("llmjax-run-directory")
    return Start(cfg, run, False, source)


# Optimizer settings a resumed run may change: the optimizer state keeps its structure.
RESUMABLE_OPTIM = (
    "lr",
    "schedule",
    "warmup_steps",
    "min_lr_ratio",
    "decay_fraction",
    "schedule_steps",
    "b1",
    "b2",
    "eps",
    "weight_decay",
)


def _check_schedule(saved: Config, requested: Config) -> None:
    """Says what a resumed run with another train.steps does to its lr schedule."""
    steps, spans = requested.train.steps, requested.optim.schedule_steps
    if steps == saved.train.steps:
        return
    if spans is None:  # a run saved before schedules had their own length
        log.warning(
            "train.steps changed from %d to %d, and the lr schedule stretches with it: the lr "
            "from here on differs from the first run's plan. Pass --set "
            "optim.schedule_steps=%d to keep the planned schedule",
            saved.train.steps,
            steps,
            saved.train.steps,
        )
    elif steps > spans:
        log.warning(
            "train.steps is now %d but the lr schedule spans %d steps (optim.schedule_steps): "
            "after step %d the lr stays at its final value. Pass --set optim.schedule_steps=%d "
            "to stretch the schedule instead",
            steps,
            spans,
            spans,
            steps,
        )


def check_resumable(saved: Config, requested: Config) -> list[str]:
    """Resuming may change train settings (e.g. more steps) and the optimizer's
    hyperparameters, but not the model, the data or the optimizer's kind; returns what
    changed in the optimizer section ("optim.lr: 0.001 -> 0.0005")."""
    for section in ("model", "data", "optim"):
        old, new = getattr(saved, section), getattr(requested, section)
        if section == "model":
            # The vocabulary comes from the tokenizer, and a mesh run may have padded it further.
            multiple = old.vocab_multiple
            if multiple % new.vocab_multiple:
                multiple = new.vocab_multiple
            new = dataclasses.replace(new, vocab_size=old.vocab_size, vocab_multiple=multiple)
        changed = [
            f.name for f in dataclasses.fields(old) if getattr(old, f.name) != getattr(new, f.name)
        ]
        if section == "optim":
            clip_kept = (old.clip_norm is None) == (new.clip_norm is None)
            allowed = (*RESUMABLE_OPTIM, "clip_norm") if clip_kept else RESUMABLE_OPTIM
            changed = [c for c in changed if c not in allowed]
        if changed:
            hint = ""
            if section == "optim":
                hint = (
                    f" (a resumed run may change {', '.join(RESUMABLE_OPTIM)}, and clip_norm "
                    f"between values; the optimizer's kind and structure stay)"
                )
            raise RunDirError(
                f"cannot resume with a different {section} config (changed: "
                f"{', '.join(f'{section}.{c}' for c in changed)}){hint}; drop those --set "
                f"options or start a new run with --out"
            )
    return [
        f"optim.{f.name}: {getattr(saved.optim, f.name)!r} -> {getattr(requested.optim, f.name)!r}"
        for f in dataclasses.fields(saved.optim)
        if getattr(saved.optim, f.name) != getattr(requested.optim, f.name)
    ]
