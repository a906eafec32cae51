"""Everything a run builds from its config: model, objective, optimizer, loss scaling, parallel
mode, frozen trees, and the compiled steps."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import flax.linen as nn
import jax
import optax

from llmjax.config import Config
from llmjax.data.inputs import AUTO, FORMATS
from llmjax.eval import make_eval_step
from llmjax.layers.lora import ADDED_PARAMS
from llmjax.models import build_model, init_model
from llmjax.objectives import OBJECTIVES, Objective, build_objective
from llmjax.train.frozen import Frozen, FrozenSlot, TrainableSpec, frozen_slots, trainable_mask
from llmjax.train.optim import OPTIMIZERS, SCHEDULES, make_optimizer, make_schedule
from llmjax.train.parallel import PARALLELISM, ParallelMode
from llmjax.train.precision import DynamicLossScale, check_compute_dtype, loss_scaler
from llmjax.train.state import TrainState, state_from_params, state_initializer
from llmjax.train.step import make_train_step


@dataclass
class Training:
    """A config's model, objective, optimizer, schedule, loss scaler, parallel mode and frozen
    trees, ready to run."""

    cfg: Config
    model: nn.Module
    objective: Objective
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    scaler: DynamicLossScale | None
    parallel: ParallelMode
    init: Callable[[jax.Array], TrainState]
    trainable: Any | None = None  # tree of bools over params (None: all trained)
    frozen: dict[str, FrozenSlot] = field(default_factory=dict)

    @property
    def saved_frozen(self) -> frozenset[str]:
        """Names of the frozen trees that checkpoints hold."""
        return frozenset(name for name, slot in self.frozen.items() if slot.save)

    def init_state(self, seed: int | None = None) -> TrainState:
        """A fresh state initialized from `seed` (default: cfg.train.seed), placed as the
        parallel mode wants it."""
        seed = self.cfg.train.seed if seed is None else seed
        state = self.parallel.init_state(self.init, jax.random.key(seed))
        return self.with_frozen(state)

    def state_from(self, params: Any, model_state: dict[str, Any]) -> TrainState:
        """A step-0 state around given params (placed as abstract_state().params says) with a
        fresh optimizer state, placed as init_state places a fresh one."""
        return self.with_frozen(self.parallel.init_state(self._create, params, model_state))

    @functools.cached_property
    def _create(self) -> Callable[[Any, dict[str, Any]], TrainState]:
        # One function for every start, so that its compiled program serves them all (a
        # sweep over seeds starts many states of one Training).
        return state_from_params(self.tx, self.scaler)

    def with_frozen(self, state: TrainState) -> TrainState:
        """`state` with the frozen trees it lacks (all, or those checkpoints do not hold)."""
        if not self.frozen:
            return state
        have = state.frozen or {}
        placed = self.parallel.put_frozen([n for n in self.frozen if n not in have])
        return state.replace(frozen={n: have[n] if n in have else placed[n] for n in self.frozen})

    def abstract_state(self) -> TrainState:
        """Shapes, dtypes and shardings of the state: the target a checkpoint restores onto."""
        return self.parallel.abstract_state()

    def frozen_models(self) -> dict[str, nn.Module] | None:
        return {n: s.module for n, s in self.frozen.items()} or None

    def train_step(self) -> Callable:
        cfg = self.cfg
        step = make_train_step(
            self.model,
            self.tx,
            self.schedule,
            seed=cfg.train.seed,
            objective=self.objective,
            grad_accum=cfg.train.grad_accum,
            loss_scale=self.scaler,
            axis_name=self.parallel.axis_name,
            trainable=self.trainable,
            frozen_models=self.frozen_models(),
        )
        return self.parallel.train_step(step)

    def eval_step(self) -> Callable:
        step = make_eval_step(self.model, self.objective, frozen_models=self.frozen_models())
        return self.parallel.eval_step(step)


def check_names(cfg: Config) -> None:
    """Raises ConfigError for any registered name the config gives that nothing registered
    under (model parts, optimizer, schedule, parallel mode, objective, data format), before
    any work."""
    build_model(cfg.model)
    OPTIMIZERS.get(cfg.optim.name, field="optim.name")
    SCHEDULES.get(cfg.optim.schedule, field="optim.schedule")
    PARALLELISM.get(cfg.parallel.kind, field="parallel.mode")
    OBJECTIVES.get(cfg.train.objective, field="train.objective")
    if cfg.data.format != AUTO:
        FORMATS.get(cfg.data.format, field="data.format")


def build_training(
    cfg: Config,
    *,
    objective: Objective | None = None,
    frozen: Mapping[str, Frozen | Any] | None = None,
    trainable: TrainableSpec = None,
    tokenizer: Any = None,
) -> Training:
    """The Training of `cfg`. `objective` replaces the one cfg.train.objective names (built
    with `tokenizer`, when given); `frozen` adds named param trees to the state (a bare tree is
    `Frozen(tree)`: params of the trained model, not checkpointed); `trainable` selects the
    params to train (default: cfg.train.trainable, a regular expression; empty: all)."""
    check_compute_dtype(cfg.model.dtype, cfg.model.attention)
    model = build_model(cfg.model)
    if objective is None:
        objective = build_objective(cfg, tokenizer=tokenizer)
    scaler = loss_scaler(
        cfg.train.loss_scale,
        cfg.model.dtype,
        init=cfg.train.loss_scale_init,
        growth_interval=cfg.train.loss_scale_growth_interval,
    )
    if trainable is None:
        # With LoRA adapters and no other choice, the adapters alone are trained.
        trainable = cfg.train.trainable or (ADDED_PARAMS if cfg.model.lora.rank else "")
    mask = None
    if trainable is not None and not (isinstance(trainable, str) and not trainable):
        params, _ = jax.eval_shape(lambda k: init_model(cfg.model, k), jax.random.key(0))
        mask = trainable_mask(params, trainable)
    # With loss scaling, runs of overflows are expected; the loss scaler's own streak decides
    # when a run has diverged, so optax's backstop must never apply a non-finite update.
    schedule_steps = cfg.optim.schedule_steps or cfg.train.steps
    tx = make_optimizer(
        cfg.optim,
        schedule_steps,
        max_nonfinite=None if scaler else cfg.train.max_nonfinite,
        trainable=mask,
    )
    slots = frozen_slots(frozen or {}, cfg.model)
    parallel = PARALLELISM.get(cfg.parallel.kind, field="parallel.mode")(
        cfg, state_initializer(cfg.model, tx, scaler, boxed=True), slots
    )
    return Training(
        cfg=cfg,
        model=model,
        objective=objective,
        tx=tx,
        schedule=make_schedule(cfg.optim, schedule_steps),
        scaler=scaler,
        parallel=parallel,
        init=state_initializer(cfg.model, tx, scaler),
        trainable=mask,
        frozen=slots,
    )


def create_state(cfg: Config) -> tuple[nn.Module, optax.GradientTransformation, TrainState]:
    """(model, optimizer, freshly initialized state placed as cfg.parallel says) for a config."""
    training = build_training(cfg)
    return training.model, training.tx, training.init_state()
