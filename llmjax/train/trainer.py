"""The one training loop: a compiled step of any objective over any batch source, with hooks.

A hook overrides what it needs of `Hook`. Per step the loop hands every hook the step's metrics
as host values (`on_metrics`, in step order, fetched one step late so that dispatch stays
ahead), asks `due(step, end)`, and calls `on_state` of the hooks that are due with the state
after that step. Records (train logs, evaluations) are emitted through `Trainer.emit` and reach
every hook's `on_record`. `on_end` runs when the loop finishes or is stopped; `close` always.

    trainer = Trainer(cfg)                            # objective, frozen trees, trainable mask
    state = trainer.init_state()
    state = trainer.run(state, source, hooks=[...])   # source: BatchSource or batches

Pre-training (`llmjax.fit`), fine-tuning, experiments and benchmarks all drive this loop; what
differs between them is the objective, the batch source and the hooks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from llmjax.config import Config
from llmjax.data.sources import BatchSource, HostBatch, describe, iterate
from llmjax.eval import evaluate
from llmjax.models.lora import join, split_adapters
from llmjax.objectives import Objective, check_batch
from llmjax.runs import Checkpointer
from llmjax.runs.init_from import saves_adapters_only
from llmjax.train.frozen import Frozen, TrainableSpec
from llmjax.train.setup import build_training
from llmjax.train.state import TrainState

log = logging.getLogger(__name__)


class Hook:
    """Does nothing; subclasses override the callbacks they need."""

    def on_start(self, trainer: Trainer, step: int) -> None:
        """Before the first step of a run (`step` updates already done)."""

    def on_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        """Host values of the metrics of the step that made `step` updates."""

    def due(self, step: int, end: int) -> bool:
        """Whether `on_state` runs after the step that made `step` updates (of `end`)."""
        return False

    def on_state(self, step: int, state: TrainState) -> None:
        """The state after `step` updates, when `due`."""

    def on_record(self, record: dict[str, Any]) -> None:
        """A record emitted by any hook (split "train" or "val", or another)."""

    def on_end(self, step: int, state: TrainState) -> None:
        """The loop ended (all steps done, stopped by a hook, or the source ran out)."""

    def close(self) -> None:
        """Always called last, also when the loop raised."""

    def state_dict(self) -> dict[str, Any] | None:
        """Host-side state a resumed run needs to continue exactly (e.g. a logging window that
        spans the checkpoint), kept with each checkpoint as JSON; None if there is none."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Takes back what `state_dict` gave when the checkpoint was saved (after on_start)."""


class StepMetrics(Hook):
    """Keeps every step's host metrics (in `.metrics`; with a synchronous loop, `step_s`)."""

    def __init__(self):
        self.metrics: list[dict[str, float]] = []

    def on_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        self.metrics.append({k: float(v) for k, v in metrics.items()})


class StopTraining(Exception):  # noqa: N818  (a signal, not an error)
    """Raised by a hook to end the loop after the current step."""


class Trainer:
    """A config's Training (model, objective, optimizer, parallel mode) and its compiled steps,
    run by `run` over batches with hooks.

    `objective` replaces the one cfg.train.objective names; `frozen` adds named param trees to
    the state (`Frozen`, or a bare tree of the trained model's params); `trainable` selects
    the params the optimizer updates (default: cfg.train.trainable); `tokenizer` lets the
    objective report per-byte metrics.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        objective: Objective | None = None,
        frozen: Mapping[str, Frozen | Any] | None = None,
        trainable: TrainableSpec = None,
        tokenizer: Any = None,
    ):
        self.cfg = cfg
        self.training = build_training(
            cfg, objective=objective, frozen=frozen, trainable=trainable, tokenizer=tokenizer
        )
        self.parallel = self.training.parallel
        self.objective = self.training.objective
        self.train_step = self.training.train_step()
        self.eval_step = self.training.eval_step()
        self.history: list[dict[str, Any]] = []
        # A LoRA run started from another run checkpoints its adapters alone; restoring then
        # takes the base weights (`restore(base=)`). `checkpoint_meta` is kept with each
        # checkpoint (where the base weights came from).
        self.adapters_only = saves_adapters_only(cfg)
        self.checkpoint_meta: dict[str, Any] = {}
        self._hooks: Sequence[Hook] = ()
        self.stop_reason: str | None = None
        multi = jax.process_count() > 1
        self.global_shape = (cfg.data.batch_size, cfg.seq_len) if multi else None
        self.region = self.parallel.local_slices((cfg.data.batch_size, cfg.seq_len))

    @property
    def model(self):
        return self.training.model

    # ------------------------------------------------------------------------- state

    def init_state(self, seed: int | None = None) -> TrainState:
        """A fresh state, placed for the steps. `seed` (default: cfg.train.seed) picks the
        initial params, so that runs of several seeds share one trainer's compiled steps."""
        return self.training.init_state(seed)

    def state_from(self, params: Any, model_state: dict[str, Any] | None = None) -> TrainState:
        """A step-0 state around given params with a fresh optimizer state."""
        return self.training.state_from(params, model_state or {})

    def checkpoint_view(self, state: TrainState) -> dict[str, Any]:
        """What a checkpoint of `state` holds (host layout; frozen trees saved only if asked;
        of the params, only LoRA adapters when `adapters_only`)."""
        view = self.parallel.host_state(state).checkpointed(self.training.saved_frozen)
        if self.adapters_only:
            view["params"] = split_adapters(view["params"])[1]
        return view

    def restore(
        self, checkpointer: Checkpointer, step: int | None = None, *, base: Any = None
    ) -> TrainState:
        """The state of a checkpoint (default: the newest that restores), placed for the steps;
        frozen trees the checkpoint does not hold are the ones this trainer was given. `base`:
        the base weights under the adapters, for checkpoints that hold adapters only."""
        target = self.parallel.abstract_state().checkpointed(self.training.saved_frozen)
        if self.adapters_only:
            if base is None:
                raise ValueError(
                    "this run's checkpoints hold LoRA adapters only; pass the base weights "
                    "(restore(..., base=params of its train.init_from run))"
                )
            target["params"] = split_adapters(target["params"])[1]
        restored, _ = checkpointer.restore(target, step)
        if self.adapters_only:
            restored["params"] = join(base, restored["params"])
        state = TrainState.from_checkpoint(restored)
        return self.training.with_frozen(self.parallel.device_state(state))

    # ------------------------------------------------------------------------- batches

    def put(self, local: HostBatch) -> Any:
        """This process's block of a host batch, placed for the train step."""
        return self.parallel.put(local, self.global_shape)

    def evaluate(self, state: TrainState, batches: Iterable[HostBatch]) -> dict[str, float]:
        """The objective's evaluation over whole host batches (e.g. a validation split)."""
        state = self.parallel.host_state(state)
        return evaluate(
            self.eval_step,
            state.params,
            state.model_state,
            batches,
            self.objective,
            place=self.parallel.put_eval_batch,
            frozen=state.frozen,
        )

    # ------------------------------------------------------------------------- the loop

    def emit(self, record: dict[str, Any]) -> None:
        """Adds a record to the history and hands it to every hook of the running loop, with
        its wall time ("wall_time": seconds since the Unix epoch) unless it has one."""
        record = {**record, "wall_time": record.get("wall_time", time.time())}
        self.history.append(record)
        for hook in self._hooks:
            hook.on_record(record)

    def request_stop(self, reason: str) -> None:
        """Ends the loop after the current step's hooks (early stopping)."""
        self.stop_reason = reason

    def run(
        self,
        state: TrainState,
        source: BatchSource | Iterable[HostBatch],
        *,
        start: int | None = None,
        end: int | None = None,
        hooks: Sequence[Hook] = (),
        sync: bool = False,
        hook_states: Mapping[str, dict[str, Any]] | None = None,
    ) -> TrainState:
        """Trains from update `start` (default: the state's step) to `end` (default:
        cfg.train.steps) on `source`'s batches, or until a hook stops the loop or the source
        runs out; returns the state after the last step.

        `hook_states`: what `hook_states()` returned when the state was checkpointed, handed
        back to the hooks of a resumed run. `sync` waits for every step before the next is
        dispatched and adds its wall time (dispatch to results on the host) to the step's
        metrics as "step_s": for timing.
        """
        start = (
            int(jax.device_get(self.parallel.host_state(state).step)) if start is None else start
        )
        end = self.cfg.train.steps if end is None else end
        batches = iterate(source, start, self.region)
        first = next(batches, None) if start < end else None
        if first is not None:
            check_batch(self.objective, first, describe(source))
        self._hooks, self.stop_reason = tuple(hooks), None
        done = start
        try:
            for hook in self._hooks:
                hook.on_start(self, start)
            for key, hook in _keyed(self._hooks).items():
                if hook_states and key in hook_states:
                    hook.load_state_dict(hook_states[key])
            pending = None
            for step in range(start, end):
                local = first if step == start else next(batches, None)
                if local is None:
                    log.info("%s ran out after %d steps", describe(source), step - start)
                    break
                placed = self.put(local)
                t0 = time.perf_counter()
                state, metrics = self.train_step(state, placed)
                if sync:
                    metrics = {**jax.device_get(metrics), "step_s": time.perf_counter() - t0}
                if pending is not None:
                    self._deliver(*pending)
                pending = (step + 1, metrics)
                done = step + 1
                due = [h for h in self._hooks if h.due(done, end)]
                if due or sync:
                    self._deliver(*pending)
                    pending = None
                for hook in due:
                    self._call(hook.on_state, done, state)
                if self.stop_reason is not None:
                    log.info("training stopped at step %d: %s", done, self.stop_reason)
                    break
            if pending is not None:
                self._deliver(*pending)
            for hook in self._hooks:
                hook.on_end(done, state)
        finally:
            for hook in self._hooks:
                hook.close()
            self._hooks = ()
        return state

    def train(
        self,
        source: BatchSource | Iterable[HostBatch],
        *,
        state: TrainState | None = None,
        hooks: Sequence[Hook] = (),
        **run_options: Any,
    ) -> tuple[TrainState, list[dict[str, float]]]:
        """`run` from `state` (default: a fresh one) with every step's metrics kept: (final
        state, metrics per step). For experiments and notebooks that keep nothing on disk."""
        steps = StepMetrics()
        state = self.init_state() if state is None else state
        state = self.run(state, source, hooks=[steps, *hooks], **run_options)
        return state, steps.metrics

    def hook_states(self) -> dict[str, dict[str, Any]]:
        """The running hooks' `state_dict`s by hook (class name, numbered if repeated)."""
        states = {key: hook.state_dict() for key, hook in _keyed(self._hooks).items()}
        return {key: state for key, state in states.items() if state is not None}

    def params_finite(self, state: TrainState) -> bool:
        """Whether every param of `state` is finite."""
        return bool(jax.device_get(_all_finite(self.parallel.host_state(state).params)))

    def compile_params_finite(self, params: Any) -> None:
        """Compiles `params_finite`'s program ahead of its first call, for `params` as the
        host state holds them (arrays, or shapes with their shardings)."""
        _all_finite.lower(params).compile()

    def _deliver(self, step: int, metrics: Any) -> None:
        host = jax.device_get(metrics)
        for hook in self._hooks:
            self._call(hook.on_metrics, step, host)

    def _call(self, callback, *args) -> None:
        try:
            callback(*args)
        except StopTraining as stop:
            self.stop_reason = str(stop) or "stopped by a hook"

    # ------------------------------------------------------------------------- compiling

    def lower_shapes(self, batch: HostBatch, state: TrainState | None = None) -> tuple[Any, Any]:
        """Stand-ins (shapes and shardings) of the state and of `batch` as the steps get them."""
        if state is None:
            state = self.parallel.fresh_state_shapes(
                self.training.init, jax.random.key(self.cfg.train.seed)
            )
        return state, self.parallel.batch_shapes(batch)

    def compile_train_step(self, state: Any, batch: HostBatch) -> Any:
        """The train step compiled ahead of time for `state` and host `batch` (shapes or
        arrays); XLA's memory and cost analyses are on the result."""
        state, placed = self.lower_shapes(batch, state)
        return self.train_step.lower(state, placed).compile()


def _keyed(hooks: Sequence[Hook]) -> dict[str, Hook]:
    """Hooks by class name; a repeated class is numbered from its second instance on."""
    keyed: dict[str, Hook] = {}
    for hook in hooks:
        key, n = type(hook).__name__, 1
        while key in keyed:
            n += 1
            key = f"{type(hook).__name__}#{n}"
        keyed[key] = hook
    return keyed


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)
