"""Where a run starts, decided in one place: fresh, resumed from its own newest checkpoint, or
a new run from another run's params (init-from).

`start_config` gives the config a command line starts from, before its --set overrides;
`open_start` then checks that config against what is on disk and opens or creates the run
directory. `llmjax train` calls both; `llmjax.fit` calls the second.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from llmjax.config import Config, ConfigError, get_preset, load_config
from llmjax.distributed import barrier
from llmjax.runs.init_from import Source, check_not_overwritten, init_from_config, open_source
from llmjax.runs.rundir import RunDir, RunDirError


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
) -> Config:
    """The config before overrides: the run's saved one when resuming the run in `resume`; the
    source's model and tokenizer on `preset` (else on the source's config) with `init_from`;
    else `preset` (default: `default_preset`)."""
    if resume is not None:
        if preset is not None:
            raise ConfigError(
                "--preset cannot be combined with --resume: the run's saved config "
                "is used; change train settings with --set train.KEY=VALUE"
            )
        if init_from is not None:
            raise ConfigError(
                "--init-from starts a new run and --resume continues one; drop one of them"
            )
        # The run's own config is the base; overrides may change train.* (e.g. more steps).
        return load_config(RunDir.open(resume).config)
    if init_from is not None:
        return init_from_config(init_from, None if preset is None else get_preset(preset))
    return get_preset(preset or default_preset)


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
        check_resumable(saved, cfg)
        cfg = dataclasses.replace(saved, train=cfg.train, parallel=cfg.parallel)
        return Start(cfg, run, True, None)
    run = RunDir.create(out, overwrite=overwrite) if primary else RunDir(Path(out))
    barrier("llmjax-run-directory")
    return Start(cfg, run, False, source)


def check_resumable(saved: Config, requested: Config) -> None:
    """Resuming may change train settings (e.g. more steps) but not the model or data."""
    for section in ("model", "data", "optim"):
        old, new = getattr(saved, section), getattr(requested, section)
        if section == "model":
            # The vocabulary comes from the tokenizer, and a mesh run may have padded it further.
            multiple = old.vocab_multiple
            if multiple % new.vocab_multiple:
                multiple = new.vocab_multiple
            new = dataclasses.replace(new, vocab_size=old.vocab_size, vocab_multiple=multiple)
        if old != new:
            changed = [
                f.name
                for f in dataclasses.fields(old)
                if getattr(old, f.name) != getattr(new, f.name)
            ]
            raise RunDirError(
                f"cannot resume with a different {section} config (changed: "
                f"{', '.join(f'{section}.{c}' for c in changed)}); drop those --set options or "
                f"start a new run with --out"
            )
