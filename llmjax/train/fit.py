"""`llmjax.fit`: a whole run from a config: data, run directory, start or resume, the loop
with evaluation, metrics, checkpoints and the loss plot."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax

from llmjax import scaling
from llmjax.config import Config, ConfigError, load_config, save_config
from llmjax.data import (
    TokenData,
    Tokenizer,
    build_tokenizer,
    load_tokenizer,
    prepare_data,
    val_batches,
)
from llmjax.data.inputs import InputOptions
from llmjax.data.sources import BatchSource, HostBatch, TextWindows
from llmjax.distributed import is_primary
from llmjax.files import write_atomic
from llmjax.layers.moe import ROUTING_METRICS
from llmjax.objectives import Objective
from llmjax.runs import RUN_FILES, Checkpointer, RunDir, Start, open_start, restore_params
from llmjax.runs.init_from import base_weights
from llmjax.train.frozen import Frozen, TrainableSpec
from llmjax.train.hooks import (
    Checkpoint,
    Evaluate,
    LossPlot,
    MetricsFile,
    Preemption,
    TrainingDiverged,
    TrainingInterrupted,
    TrainLog,
)
from llmjax.train.loggers import Loggers, logger_names
from llmjax.train.metrics import MetricsLog, preload_plotting, read_metrics
from llmjax.train.parallel import PARALLELISM
from llmjax.train.progress import ProgressBar
from llmjax.train.setup import check_names
from llmjax.train.state import TrainState
from llmjax.train.trainer import Hook, Trainer

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What a finished `fit` returns."""

    run: RunDir | None
    config: Config
    state: TrainState
    tokenizer: Tokenizer
    final_eval: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0


def with_vocab(cfg: Config, tokenizer: Tokenizer) -> Config:
    """The config with the model's vocabulary set to the tokenizer's."""
    return dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, vocab_size=tokenizer.vocab_size)
    )


def fit(
    cfg: Config,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    data: TokenData | None = None,
    stop_after: int | None = None,
    objective: Objective | None = None,
    source: BatchSource | None = None,
    val: Callable[[], Iterable[HostBatch]] | None = None,
    tokenizer: Tokenizer | None = None,
    files: Mapping[str, str] | None = None,
    frozen: Mapping[str, Frozen | Any] | None = None,
    trainable: TrainableSpec = None,
    hooks: Sequence[Hook] = (),
) -> FitResult:
    """Trains a model as `cfg` says; writes a run directory when `out` is given.

    With `resume`, continues the run in `out` from its newest checkpoint and ends with exactly
    the params an uninterrupted run would have. With cfg.train.init_from (and no `resume`), a
    new run starts from that run's newest params and tokenizer with a fresh optimizer.
    `stop_after` ends the loop early after that many total steps (with a checkpoint), as an
    interruption would. `objective`, `source` (default: random windows of the training
    text), `frozen` and `trainable` are the Trainer's; `hooks` run after the built-in ones.

    `val()` gives the batches of each evaluation (default: windows of the text's validation
    split). With both `source` and `val` (and no `data`) no text corpus is read: the
    tokenizer is `tokenizer`, else the resumed run's or train.init_from's, else the one
    data.tokenizer names (byte or a tokenizer.json). `files` are text files a new run writes
    beside its config.json (their names must be in llmjax.runs.RUN_FILES, so that the run
    claims them): what a run needs besides its config, such as a fine-tuning run's chat
    template.
    """
    t_start = time.perf_counter()
    check_names(cfg)  # a misspelt name fails before any data is read
    logger_names(cfg.train.loggers)  # so does a logger whose package is missing
    primary = is_primary()  # only process 0 writes config, tokenizer, metrics and plots
    unclaimed = sorted(set(files or {}) - set(RUN_FILES))
    if unclaimed:
        raise ValueError(
            f"files={unclaimed} are not run files a run directory claims; name them in "
            f"llmjax.runs.RUN_FILES ({', '.join(RUN_FILES)})"
        )
    start = open_start(cfg, out, resume=resume, overwrite=overwrite, primary=primary)
    cfg, run = start.cfg, start.run
    checkpointer = None
    if run is not None:
        if primary and not start.resume:  # at once, so that a --resume after a kill finds it
            save_config(cfg, run.config)
            for name, text in (files or {}).items():
                write_atomic(run.path / name, text)
        checkpointer = Checkpointer(run.checkpoints, keep=cfg.train.keep_checkpoints)
    # A run stopped before its first checkpoint is resumed by starting it afresh.
    resuming = start.resume and checkpointer is not None and bool(checkpointer.steps())
    if start.resume and not resuming:
        log.warning("%s has no checkpoint to resume from; training it from step 0", run.path)
    if data is not None:
        tokenizer = data.tokenizer
    else:
        tokenizer = _run_tokenizer(start, tokenizer)
        if source is None or val is None:
            data = prepare_data(
                cfg.data.path,
                cfg.data.tokenizer if tokenizer is None else tokenizer,
                bpe_vocab_size=cfg.data.bpe_vocab_size,
                val_fraction=cfg.data.val_fraction,
                cache_dir=cfg.data.cache_dir,
                val_split=cfg.data.val_split,
                options=InputOptions.of(cfg.data),
                progress=primary and progress,
            )
            tokenizer = data.tokenizer
        elif tokenizer is None:  # the batches are given: no corpus to build a tokenizer from
            tokenizer = _tokenizer_without_corpus(cfg)
    cfg = with_vocab(cfg, tokenizer)
    if not resuming:
        cfg = PARALLELISM.get(cfg.parallel.kind, field="parallel.mode").adapt_config(cfg)
        # The schedule's length is saved, so that resuming with more steps keeps it.
        schedule_steps = cfg.optim.schedule_steps or cfg.train.steps
        cfg = dataclasses.replace(
            cfg, optim=dataclasses.replace(cfg.optim, schedule_steps=schedule_steps)
        )
    # Checks the config against the devices before anything is written.
    trainer = Trainer(
        cfg, objective=objective, frozen=frozen, trainable=trainable, tokenizer=tokenizer
    )
    if run is not None and primary:
        if not resuming:
            save_config(cfg, run.config)
            tokenizer.save(run.path)
        elif load_config(run.config) != cfg:  # resumed with new train or optim settings
            save_config(cfg, run.config)
    if source is None:
        source = TextWindows(data.train, cfg.data.batch_size, cfg.seq_len, cfg.train.seed)

    if val is None:

        def val() -> Iterable[HostBatch]:
            return val_batches(
                data.val,
                batch_size=cfg.data.batch_size,
                seq_len=cfg.seq_len,
                max_batches=cfg.train.eval_batches,
            )

    warm: list[threading.Thread] = []
    try:
        ahead = trainer.parallel.compiles_ahead and jax.process_count() == 1
        if ahead and not resuming and isinstance(source, BatchSource):
            first = next(iter(source.batches(0, trainer.region)))
            warm = _precompile(trainer, first, next(iter(val())))
        if run is not None and primary:
            warm.append(preload_plotting())
        step, hook_states = 0, None
        if resuming:
            base = None
            if trainer.adapters_only:  # the checkpoints hold LoRA adapters, not base weights
                base_info = checkpointer.meta(checkpointer.steps()[-1]).get("base") or {}
                target = trainer.parallel.abstract_state()
                base = base_weights(
                    cfg, base_info.get("step"), target.params, target.model_state, where=run.path
                )
                trainer.checkpoint_meta["base"] = base_info
            state = trainer.restore(checkpointer, base=base)
            step = int(jax.device_get(trainer.parallel.host_state(state).step))
            hook_states = checkpointer.meta(step).get("hooks")
            if primary:
                MetricsLog(run.metrics).truncate_after(step)
            log.info("resumed %s at step %d", run.path, step)
        elif start.resume:  # stopped before its first checkpoint: start it afresh
            if primary:
                MetricsLog(run.metrics).truncate_after(0)
            state = trainer.init_state()
        elif start.source is not None:
            target = trainer.parallel.abstract_state()
            params, model_state, base_step = restore_params(
                start.source, cfg.model, target.params, target.model_state, seed=cfg.train.seed
            )
            trainer.checkpoint_meta["base"] = {"init_from": cfg.train.init_from, "step": base_step}
            state = trainer.state_from(params, model_state)
        else:
            state = trainer.init_state()
        end = cfg.train.steps if stop_after is None else min(stop_after, cfg.train.steps)
        logged = trainer.objective.logged
        if cfg.model.moe.enabled:
            logged = (*logged, *ROUTING_METRICS)
        builtin = _fit_hooks(cfg, run, checkpointer, val, primary and progress, primary, logged)
        if run is not None:
            trainer.history = read_metrics(run.metrics)
        checkpointer = None  # the Checkpoint hook closes it
        try:
            state = trainer.run(
                state,
                source,
                start=step,
                end=end,
                hooks=[*builtin, *hooks],
                hook_states=hook_states,
            )
        except TrainingDiverged as e:
            raise TrainingDiverged(f"{e} {_resume_hint(cfg, run, builtin)}") from None
    finally:
        for thread in warm:
            thread.join()
        if checkpointer is not None:
            checkpointer.close()
    preemption = next(h for h in builtin if isinstance(h, Preemption))
    if preemption.signal_name is not None:
        done = int(jax.device_get(trainer.parallel.host_state(state).step))
        saved = _saved_step(builtin)
        where = (
            f"; checkpoint saved at step {saved}. Resume with: llmjax train --resume --out "
            f"{run.path}"
            if run is not None and saved is not None
            else " (no run directory, so nothing was saved)"
        )
        raise TrainingInterrupted(
            f"stopped by {preemption.signal_name} after step {done} of {cfg.train.steps}{where}",
            signal_name=preemption.signal_name,
            step=done,
        )
    evaluations = next(h for h in builtin if isinstance(h, Evaluate))
    return FitResult(
        run,
        cfg,
        trainer.parallel.host_state(state),
        tokenizer,
        evaluations.latest,
        trainer.history,
        time.perf_counter() - t_start,
    )


def _run_tokenizer(start: Start, given: Tokenizer | None) -> Tokenizer | None:
    """`given`, checked to be the tokenizer the run must use (the resumed run's, or
    train.init_from's) if it has one; else that one; None if neither is known."""
    saved = None if start.tokenizer_file is None else load_tokenizer(start.tokenizer_file)
    if given is not None and saved is not None and given != saved:
        raise ConfigError(
            f"the tokenizer given ({given!r}) is not {start.tokenizer_file}, which this run "
            f"must use (the params were trained on its token ids); encode the data with that "
            f"tokenizer"
        )
    return saved if given is None else given


def _tokenizer_without_corpus(cfg: Config) -> Tokenizer:
    """data.tokenizer, for a run that reads no text corpus (its batches are given)."""
    if cfg.data.tokenizer in ("char", "bpe"):
        raise ConfigError(
            f"data.tokenizer={cfg.data.tokenizer} is built from a text corpus, and this run "
            f"reads none (its source and val batches are given); pass tokenizer=..., or start "
            f"from a run (train.init_from) whose tokenizer the batches use"
        )
    return build_tokenizer(cfg.data.tokenizer, b"")


def _saved_step(hooks: Sequence[Hook]) -> int | None:
    """The step of the newest checkpoint the run has (None without checkpoints)."""
    saving = [h for h in hooks if isinstance(h, Checkpoint)]
    return saving[0].saved_step if saving else None


def _resume_hint(cfg: Config, run: RunDir | None, hooks: Sequence[Hook]) -> str:
    """Where a diverged run can go on from, and with which settings."""
    saved = _saved_step(hooks)
    if run is None or not saved:
        return "No checkpoint was saved; start again with a lower optim.lr."
    return (
        f"The newest good checkpoint is step {saved} in {run.path}; resume from it with "
        f"changed settings, e.g. llmjax train --resume --out {run.path} --set "
        f"optim.lr={cfg.optim.lr / 2:g} (now {cfg.optim.lr:g}; also optim.warmup_steps, now "
        f"{cfg.optim.warmup_steps}, and optim.clip_norm, now {cfg.optim.clip_norm})."
    )


def _fit_hooks(cfg, run, checkpointer, val, show_progress, primary, logged=()) -> list[Hook]:
    """Logging, evaluation, checkpoints, metrics.jsonl, the loggers, the loss plot and the
    progress bar of a fit run. The hooks that write records come first: TrainLog, which times
    the steps, restarts its clock after they took an evaluation's record."""
    hooks: list[Hook] = []
    if run is not None and primary:
        hooks.append(MetricsFile(MetricsLog(run.metrics)))
        names = logger_names(cfg.train.loggers)
        if names:
            hooks.append(Loggers(names, run.path, cfg))
        hooks.append(LossPlot(run.plot, title=str(run.path.name)))
    elif cfg.train.loggers and run is None:
        log.warning("train.loggers=%s: a run without a directory logs nothing", cfg.train.loggers)
    hooks += [
        TrainLog(
            log_every=cfg.train.log_every,
            last=cfg.train.steps,
            max_nonfinite=cfg.train.max_nonfinite,
            tokens_per_step=cfg.data.batch_size * cfg.seq_len,
            flops_per_token=scaling.train_flops_per_token(cfg.model, cfg.seq_len),
            peak_flops=scaling.peak_flops if cfg.train.mfu else None,
            logged=logged,
        ),
        Evaluate(val, every=cfg.train.eval_every, last=cfg.train.steps),
    ]
    if checkpointer is not None:
        hooks.append(Checkpoint(checkpointer, every=cfg.train.checkpoint_every))
    hooks.append(ProgressBar(cfg.train.steps, disable=not show_progress))
    hooks.append(Preemption())
    return hooks


def _precompile(trainer: Trainer, batch: dict, val: dict) -> list[threading.Thread]:
    """Compiles the train and eval steps (and the check before each checkpoint) on two more
    threads while the caller compiles and runs the initializer: a fresh run's start-up takes
    the longest compile, not the sum. JAX keeps the programs, so the first real calls find them
    ready.

    The train step, the longest compile, is traced here on the caller's thread before the
    others: tracing holds the interpreter lock, and traced beside the initializer and the eval
    step, it started compiling two seconds later on a 2-core CPU. The stand-ins are the shapes
    (and, on a mesh, the shardings) the real calls will have.
    """
    state, placed = trainer.lower_shapes(batch)
    val_placed = trainer.parallel.batch_shapes(val)
    threads = []
    try:
        threads.append(_compile_in_background(trainer.train_step.lower(state, placed).compile))
    except Exception:  # noqa: BLE001  (the real call reports any genuine error)
        log.debug("tracing the train step ahead failed", exc_info=True)

    def compile_eval() -> None:
        trainer.eval_step.lower(state.params, state.model_state, val_placed, state.frozen).compile()
        trainer.compile_params_finite(state.params)

    threads.append(_compile_in_background(compile_eval))
    return threads


def _compile_in_background(compile_fn: Callable[[], Any]) -> threading.Thread:
    """Runs `compile_fn` on a second thread (and core) while the caller goes on.

    JAX keeps the compiled program, so the later call finds it ready. Purely a head start: if
    it fails, the call compiles as usual.
    """

    def run() -> None:
        try:
            compile_fn()
        except Exception:  # noqa: BLE001  (the real call reports any genuine error)
            log.debug("background compile failed", exc_info=True)

    thread = threading.Thread(target=run, name="llmjax-compile", daemon=True)
    thread.start()
    return thread
