"""The training loop: data, jitted steps, periodic eval, metrics, checkpoints, exact resume."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from llmjax import scaling
from llmjax.config import Config, ParallelConfig, load_config, save_config
from llmjax.data import TokenData, Tokenizer, load_tokenizer, prepare_data, train_batch, val_batches
from llmjax.distributed import barrier, is_primary
from llmjax.models import build_model
from llmjax.train.checkpoint import Checkpointer
from llmjax.train.init_from import check_not_overwritten, open_source, restore_params
from llmjax.train.loss import bits_per_byte, perplexity
from llmjax.train.metrics import MetricsLog, plot_losses, preload_plotting, read_metrics
from llmjax.train.parallel import PARALLELISM
from llmjax.train.rundir import RunDir, RunDirError
from llmjax.train.setup import build_training
from llmjax.train.state import TrainState

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """Too many non-finite steps in a row."""


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


def create_state(cfg: Config) -> tuple[Any, Any, TrainState]:
    """(model, optimizer, freshly initialized state placed as cfg.parallel says) for a config."""
    training = build_training(cfg)
    return training.model, training.tx, training.init_state()


def abstract_state(cfg: Config) -> TrainState:
    """The state's shapes on one device: what sampling and evaluation restore onto."""
    return build_training(dataclasses.replace(cfg, parallel=ParallelConfig())).abstract_state()


def evaluate(
    eval_step: Callable,
    params: Any,
    model_state: dict,
    tokens: np.ndarray,
    *,
    batch_size: int,
    seq_len: int,
    max_batches: int | None,
    token_bytes: np.ndarray,
    place: Callable[[dict], Any] | None = None,
) -> dict[str, float]:
    """Loss, perplexity, bits-per-byte and accuracy over (the first max_batches of) a split.

    `place` puts a host batch where eval_step expects it (e.g. sharded over a mesh).
    """
    nll = n_tokens = correct = n_bytes = 0.0
    for batch in val_batches(
        tokens, batch_size=batch_size, seq_len=seq_len, max_batches=max_batches
    ):
        placed = batch if place is None else place(batch)
        sums = jax.device_get(eval_step(params, model_state, placed))
        nll += float(sums["nll_sum"])
        n_tokens += float(sums["tokens"])
        correct += float(sums["correct_sum"])
        n_bytes += float((token_bytes[batch["targets"]] * batch["mask"]).sum())
    loss = nll / max(n_tokens, 1.0)
    return {
        "loss": loss,
        "perplexity": perplexity(loss),
        "bits_per_byte": bits_per_byte(nll, n_bytes),
        "accuracy": correct / max(n_tokens, 1.0),
        "tokens": n_tokens,
    }


class _Progress:
    """Aggregates per-step metrics on the host; fetched one step late to keep dispatch async."""

    def __init__(
        self,
        cfg: Config,
        metrics: MetricsLog | None,
        bar: tqdm | None,
        start: int,
        peak_flops: Callable[[], float | None] | None = None,
    ):
        self.cfg, self.metrics, self.bar = cfg, metrics, bar
        # Called at the first log record (on CPU it times a matmul), not while compiling.
        self.peak_flops = peak_flops
        self.flops_per_token = scaling.train_flops_per_token(cfg.model, cfg.seq_len)
        self.reset(start)
        self.history: list[dict[str, Any]] = []
        self.first_bad_step: int | None = None

    def reset(self, step: int) -> None:
        self.loss_sum, self.count, self.t0, self.step0 = 0.0, 0, time.perf_counter(), step

    def record(self, step: int, metrics: dict[str, Any]) -> None:
        """`step` is the number of updates done when `metrics` were produced."""
        m = jax.device_get(metrics)
        streak = int(m["nonfinite_streak"])
        if streak:
            self.first_bad_step = self.first_bad_step or step
            if streak >= self.cfg.train.max_nonfinite:
                raise TrainingDiverged(
                    f"loss or gradients were non-finite for {streak} steps in a row (steps "
                    f"{step - streak + 1}..{step}); every one of them was skipped. Lower optim.lr, "
                    f"keep optim.clip_norm set, add train.z_loss, or check the data. The last "
                    f"checkpoint on disk is untouched."
                )
        else:
            self.first_bad_step = None
            self.loss_sum += float(m["loss"])
            self.count += 1
        if step % self.cfg.train.log_every == 0 or step == self.cfg.train.steps:
            elapsed = time.perf_counter() - self.t0
            tokens = (step - self.step0) * self.cfg.data.batch_size * self.cfg.seq_len
            record = {
                "step": step,
                "split": "train",
                "loss": self.loss_sum / self.count if self.count else float("nan"),
                "lr": float(m["lr"]),
                "grad_norm": float(m["grad_norm"]),
                "tokens_per_s": tokens / elapsed if elapsed > 0 else 0.0,
                "nonfinite_total": int(m["nonfinite_total"]),
            }
            peak = self.peak_flops() if self.peak_flops else None
            if peak:
                record["mfu"] = scaling.mfu(self.flops_per_token, record["tokens_per_s"], peak)
            if "loss_scale" in m:
                record["loss_scale"] = float(m["loss_scale"])
            self.emit(record)
            if self.bar is not None:
                self.bar.set_postfix(
                    loss=f"{record['loss']:.4f}",
                    lr=f"{record['lr']:.2e}",
                    tok_s=f"{record['tokens_per_s']:.0f}",
                )
            self.reset(step)

    def emit(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self.metrics is not None:
            self.metrics.write(record)


def fit(
    cfg: Config,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    data: TokenData | None = None,
    stop_after: int | None = None,
) -> FitResult:
    """Trains a model as `cfg` says; writes a run directory when `out` is given.

    With `resume`, continues the run in `out` from its newest checkpoint and ends with exactly
    the params an uninterrupted run would have. With cfg.train.init_from (and no `resume`), a
    new run starts from that run's newest params and tokenizer with a fresh optimizer.
    `stop_after` ends the loop early after that many total steps (with a checkpoint), as an
    interruption would.
    """
    t_start = time.perf_counter()
    primary = is_primary()  # only process 0 writes config, tokenizer, metrics and plots
    source = None
    if cfg.train.init_from and not resume:  # checked before a run directory is written
        source = open_source(cfg.train.init_from)
        check_not_overwritten(source, out)
    run = None
    if out is not None:
        if resume:
            run = RunDir.open(out)
            saved = load_config(run.config)
            _check_resumable(saved, cfg)
            # The mesh may change on resume: the checkpoint is resharded onto it.
            cfg = dataclasses.replace(saved, train=cfg.train, parallel=cfg.parallel)
        else:
            run = RunDir.create(out, overwrite=overwrite) if primary else RunDir(Path(out))
            barrier("llmjax-run-directory")
    elif resume:
        raise RunDirError("resume needs the run directory to continue (--out DIR)")

    if data is None:
        tokenizer_spec: str | Tokenizer = cfg.data.tokenizer
        if resume and run is not None and run.tokenizer.exists():
            tokenizer_spec = load_tokenizer(run.tokenizer)
        elif source is not None:
            tokenizer_spec = load_tokenizer(source.run.tokenizer)
        data = prepare_data(
            cfg.data.path,
            tokenizer_spec,
            bpe_vocab_size=cfg.data.bpe_vocab_size,
            val_fraction=cfg.data.val_fraction,
            cache_dir=cfg.data.cache_dir,
        )
    cfg = with_vocab(cfg, data.tokenizer)
    if not resume:
        cfg = PARALLELISM.get(cfg.parallel.kind, field="parallel.mode").adapt_config(cfg)
    training = build_training(cfg)  # checks the config against the devices first
    if run is not None and not resume and primary:
        save_config(cfg, run.config)
        data.tokenizer.save(run.path)
    parallel = training.parallel
    train_step = training.train_step()
    eval_step = training.eval_step()
    token_bytes = data.tokenizer.token_byte_lengths().astype(np.float64)

    def run_eval(state: TrainState, max_batches: int | None) -> dict[str, float]:
        state = parallel.host_state(state)
        return evaluate(
            eval_step,
            state.params,
            state.model_state,
            data.val,
            batch_size=cfg.data.batch_size,
            seq_len=cfg.seq_len,
            max_batches=max_batches,
            token_bytes=token_bytes,
            place=parallel.put_eval_batch,
        )

    checkpointer = None
    metrics = None
    start = 0
    if run is not None:
        checkpointer = Checkpointer(run.checkpoints, keep=cfg.train.keep_checkpoints)
        metrics = MetricsLog(run.metrics) if primary else None
    warm: list[threading.Thread] = []
    if parallel.compiles_ahead and not resume and jax.process_count() == 1:
        warm = _precompile(training, train_step, eval_step, data)
    if run is not None and primary:
        warm.append(preload_plotting())
    if resume and checkpointer is not None:
        state, start = checkpointer.restore(training.abstract_state())
        state = parallel.device_state(state)
        if metrics is not None:
            metrics.truncate_after(start)
        log.info("resumed %s at step %d", run.path, start)
    elif source is not None:
        target = training.abstract_state()
        params, model_state, _ = restore_params(
            source, cfg.model, target.params, target.model_state
        )
        state = training.state_from(params, model_state)
    else:
        state = training.init_state()

    total = cfg.train.steps if stop_after is None else min(stop_after, cfg.train.steps)
    bar = tqdm(
        total=cfg.train.steps,
        initial=start,
        disable=not (progress and primary),
        desc="train",
        dynamic_ncols=True,
    )
    tracker = _Progress(cfg, metrics, bar, start, scaling.peak_flops if cfg.train.mfu else None)
    if run is not None:
        tracker.history = [r for r in read_metrics(run.metrics)]
    final_eval: dict[str, float] = {}
    global_shape = (cfg.data.batch_size, cfg.seq_len)
    rows, columns = parallel.local_slices(global_shape)
    try:
        pending = None
        for step in range(start, total):
            # Each process reads only its own rows (and columns, if the sequence is split).
            local = train_batch(
                data.train,
                step,
                batch_size=cfg.data.batch_size,
                seq_len=cfg.seq_len,
                seed=cfg.train.seed,
                rows=rows,
            )
            if columns != slice(0, cfg.seq_len):
                local = {k: v[:, columns] for k, v in local.items()}
            state, step_metrics = train_step(state, parallel.put(local, global_shape))
            if pending is not None:
                tracker.record(*pending)
            pending = (step + 1, step_metrics)
            bar.update(1)
            done = step + 1
            at_eval = done % cfg.train.eval_every == 0 or done == cfg.train.steps
            at_ckpt = done % cfg.train.checkpoint_every == 0 or done == total
            if at_eval or at_ckpt:
                tracker.record(*pending)
                pending = None
            if at_eval:
                final_eval = run_eval(state, cfg.train.eval_batches)
                tracker.emit({"step": done, "split": "val", **final_eval})
                bar.write(
                    f"step {done}: val loss {final_eval['loss']:.4f}, "
                    f"bpb {final_eval['bits_per_byte']:.4f}"
                )
                tracker.reset(done)
            if at_ckpt and checkpointer is not None:
                checkpointer.save(done, parallel.host_state(state))
        if pending is not None:
            tracker.record(*pending)
    finally:
        bar.close()
        for thread in warm:
            thread.join()
        if checkpointer is not None:
            checkpointer.close()
    if run is not None and primary:
        plot_losses(read_metrics(run.metrics), run.plot, title=str(run.path.name))
    return FitResult(
        run,
        cfg,
        parallel.host_state(state),
        data.tokenizer,
        final_eval,
        tracker.history,
        time.perf_counter() - t_start,
    )


def _precompile(
    training: Any, train_step: Callable, eval_step: Callable, data: TokenData
) -> list[threading.Thread]:
    """Compiles the train and eval steps on two more threads (and cores) while the caller
    compiles and runs the initializer: a fresh run's start-up takes the longest compile, not
    the sum. JAX keeps the programs, so the first real calls find them ready.

    The stand-ins are the shapes (and, on a mesh, the shardings) the real calls will have.
    """
    cfg = training.cfg
    spec = dict(batch_size=cfg.data.batch_size, seq_len=cfg.seq_len)
    parallel = training.parallel
    state = parallel.fresh_state_shapes(training.init, jax.random.key(cfg.train.seed))
    batch = parallel.batch_shapes(train_batch(data.train, 0, seed=cfg.train.seed, **spec))
    val = parallel.batch_shapes(next(val_batches(data.val, **spec)))
    return [
        _compile_in_background(lambda: train_step.lower(state, batch).compile()),
        _compile_in_background(
            lambda: eval_step.lower(state.params, state.model_state, val).compile()
        ),
    ]


def _compile_in_background(compile_fn: Callable[[], Any]) -> threading.Thread:
    """Compiles a step on a second thread (and core) while the first train step compiles.

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


def _check_resumable(saved: Config, requested: Config) -> None:
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


# ----------------------------------------------------------------------------- loading runs


@dataclass
class LoadedRun:
    """A trained model ready for sampling or evaluation."""

    run: RunDir
    config: Config
    tokenizer: Tokenizer
    params: Any
    model_state: dict
    step: int

    @property
    def model(self):
        return build_model(self.config.model)


def load_run(path: str | Path, step: int | None = None) -> LoadedRun:
    """Config, tokenizer and params of a run directory (its newest restorable checkpoint)."""
    run = RunDir.open(path)
    cfg = load_config(run.config)
    if not run.tokenizer.exists():
        raise RunDirError(f"{run.path} has no tokenizer.json; it was not written by llmjax train")
    tokenizer = load_tokenizer(run.tokenizer)
    # Sampling and evaluation need no optimizer state: it is not read (two thirds of a trained
    # AdamW run's bytes), and runs made by `llmjax convert` do not store one.
    full = abstract_state(cfg)
    weights = {"step": full.step, "params": full.params, "model_state": full.model_state}
    with Checkpointer(run.checkpoints, keep=cfg.train.keep_checkpoints) as ckpt:
        restored, step = ckpt.restore(weights, step, partial=True)
    return LoadedRun(run, cfg, tokenizer, restored["params"], restored["model_state"], step)


__all__ = [
    "FitResult",
    "LoadedRun",
    "TrainingDiverged",
    "create_state",
    "evaluate",
    "fit",
    "load_run",
]
