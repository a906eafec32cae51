"""Everything a run builds from its config: model, optimizer, loss scaling, parallel mode, steps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import optax

from llmjax.config import Config
from llmjax.models import build_model
from llmjax.train.optim import make_optimizer, make_schedule
from llmjax.train.parallel import PARALLELISM, ParallelMode
from llmjax.train.precision import DynamicLossScale, check_compute_dtype, loss_scaler
from llmjax.train.state import TrainState, state_from_params, state_initializer
from llmjax.train.step import make_eval_step, make_train_step


@dataclass
class Training:
    """A config's model, optimizer, schedule, loss scaler and parallel mode, ready to run."""

    cfg: Config
    model: nn.Module
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    scaler: DynamicLossScale | None
    parallel: ParallelMode
    init: Callable[[jax.Array], TrainState]

    def init_state(self) -> TrainState:
        """A fresh state, placed as the parallel mode wants it."""
        return self.parallel.init_state(self.init, jax.random.key(self.cfg.train.seed))

    def state_from(self, params: Any, model_state: dict[str, Any]) -> TrainState:
        """A step-0 state around given params (placed as abstract_state().params says) with a
        fresh optimizer state, placed as init_state places a fresh one."""
        create = state_from_params(self.tx, self.scaler)
        return self.parallel.init_state(create, params, model_state)

    def abstract_state(self) -> TrainState:
        """Shapes, dtypes and shardings of the state: the target a checkpoint restores onto."""
        return self.parallel.abstract_state()

    def train_step(self) -> Callable:
        cfg = self.cfg
        step = make_train_step(
            self.model,
            self.tx,
            self.schedule,
            seed=cfg.train.seed,
            z_loss=cfg.train.z_loss,
            grad_accum=cfg.train.grad_accum,
            loss_scale=self.scaler,
            axis_name=self.parallel.axis_name,
        )
        return self.parallel.train_step(step)

    def eval_step(self) -> Callable:
        return self.parallel.eval_step(make_eval_step(self.model))


def build_training(cfg: Config) -> Training:
    check_compute_dtype(cfg.model.dtype, cfg.model.attention)
    scaler = loss_scaler(
        cfg.train.loss_scale,
        cfg.model.dtype,
        init=cfg.train.loss_scale_init,
        growth_interval=cfg.train.loss_scale_growth_interval,
    )
    # With loss scaling, runs of overflows are expected; the loss scaler's own streak decides
    # when a run has diverged, so optax's backstop must never apply a non-finite update.
    tx = make_optimizer(
        cfg.optim, cfg.train.steps, max_nonfinite=None if scaler else cfg.train.max_nonfinite
    )
    parallel = PARALLELISM.get(cfg.parallel.kind, field="parallel.mode")(
        cfg, state_initializer(cfg.model, tx, scaler, boxed=True)
    )
    return Training(
        cfg=cfg,
        model=build_model(cfg.model),
        tx=tx,
        schedule=make_schedule(cfg.optim, cfg.train.steps),
        scaler=scaler,
        parallel=parallel,
        init=state_initializer(cfg.model, tx, scaler),
    )
