"""The pure train step around an objective; jit (or pmap) it with the state donated.

One optimizer step can sum the gradients of several micro-batches (`grad_accum`, a lax.scan
inside the step) and, under pmap, of several devices (`axis_name`). Every partial loss is
divided by the objective's weight of the whole global batch (its token count, for next-token
prediction), so the summed gradient is exactly the gradient of the large batch's mean loss,
not a mean of per-micro-batch means.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from llmjax.objectives import Forward, NextToken, Objective
from llmjax.train.precision import DynamicLossScale
from llmjax.train.state import TrainState, last_step_finite, nonfinite_counts

Batch = dict[str, jax.Array]
BATCH_AXES = ("batch", "length")


def split_micro_batches(batch: Batch, n: int) -> Batch:
    """[B, ...] -> [n, B/n, ...] with micro-batch i holding rows i, i+n, i+2n, ...

    Strided rather than contiguous, so that each device's shard of a batch split over devices
    holds rows of every micro-batch and no micro-batch lives on one device alone.
    """

    def split(x):
        rows = x.shape[0] // n
        return jnp.swapaxes(x.reshape(rows, n, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def _constrain_batch(batch: Batch) -> Batch:
    return {k: nn.with_logical_constraint(v, batch_axes(v.ndim)) for k, v in batch.items()}


def batch_axes(ndim: int) -> tuple[str | None, ...]:
    """Logical axes of a batch field: [B] or [B, T, ...]."""
    return (BATCH_AXES + (None,) * max(ndim - 2, 0))[:ndim]


def stop_frozen_gradients(params: Any, trainable: Any | None) -> Any:
    """`params` with the leaves `trainable` marks False cut off from differentiation, so their
    gradients are exact zeros and the backward pass never computes them."""
    if trainable is None:
        return params
    return jax.tree.map(lambda p, t: p if t else jax.lax.stop_gradient(p), params, trainable)


def make_gradient_fn(
    model: nn.Module,
    objective: Objective | None = None,
    *,
    grad_accum: int = 1,
    trainable: Any | None = None,
    frozen_models: dict[str, nn.Module] | None = None,
) -> Callable[..., tuple[Any, dict[str, jax.Array], dict[str, Any]]]:
    """(params, model_state, batch, rng, denominator, scale[, frozen]) -> (grads, metrics,
    model_state).

    Gradients of scale * objective loss (sums over `denominator`), summed over `grad_accum`
    micro-batches; metrics are summed the same way (so "loss" is the mean over the
    denominator). `trainable`: a tree of bools over params; False leaves get zero gradients.
    `objective` defaults to next-token prediction.
    """
    objective = NextToken() if objective is None else objective

    def micro_step(params, model_state, batch, rng, denominator, scale, frozen=None):
        def loss_fn(p):
            forward = Forward(
                model,
                stop_frozen_gradients(p, trainable),
                model_state,
                deterministic=False,
                rng=rng,
                frozen=frozen,
                frozen_models=frozen_models,
            )
            loss, metrics = objective.loss(forward, batch, denominator)
            # The model's own losses (a mixture of experts' balance and z-losses), weighted
            # like the objective's: this batch's share of the global batch.
            share = objective.weight(batch) / jnp.maximum(denominator, 1e-30)
            model_loss, model_metrics = forward.model_losses(share)
            loss = loss + model_loss
            metrics = {**metrics, **model_metrics}
            return (loss if scale is None else loss * scale), (metrics, forward.model_state)

        (_, (metrics, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, metrics, new_state

    if grad_accum == 1:
        return micro_step

    def accumulated(params, model_state, batch, rng, denominator, scale, frozen=None):
        micro = split_micro_batches(batch, grad_accum)

        def body(carry, xs):
            grads_sum, metrics_sum, state = carry
            micro_batch, i = xs
            grads, metrics, state = micro_step(
                params,
                state,
                _constrain_batch(micro_batch),
                jax.random.fold_in(rng, i),
                denominator,
                scale,
                frozen,
            )
            grads_sum, metrics_sum = jax.tree.map(
                lambda a, b: a + b.astype(a.dtype), (grads_sum, metrics_sum), (grads, metrics)
            )
            return (grads_sum, metrics_sum, state), None

        first = jax.tree.map(lambda x: x[0], micro)
        shapes = jax.eval_shape(
            micro_step, params, model_state, first, rng, denominator, scale, frozen
        )
        zeros = lambda t: jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), t)  # noqa: E731
        init = (zeros(shapes[0]), zeros(shapes[1]), model_state)
        (grads, metrics, model_state), _ = jax.lax.scan(body, init, (micro, jnp.arange(grad_accum)))
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        return grads, metrics, model_state

    return accumulated


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    seed: int,
    objective: Objective | None = None,
    grad_accum: int = 1,
    loss_scale: DynamicLossScale | None = None,
    axis_name: str | None = None,
    trainable: Any | None = None,
    frozen_models: dict[str, nn.Module] | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """One optimizer step; dropout keys derive from (seed, step), so a resumed run is exact.

    `objective`: what is differentiated (default: next-token prediction).
    `loss_scale`: dynamic loss scaling (the state must carry a LossScaleState); an overflow
    skips the step and lowers the scale without counting towards divergence.
    `axis_name`: the pmap axis to sum gradients and metrics over.
    `trainable`: a tree of bools over params; the optimizer must leave False leaves alone
    (see llmjax.train.optim.make_optimizer's `trainable`).
    """
    objective = NextToken() if objective is None else objective
    base_key = jax.random.key(seed)
    gradients = make_gradient_fn(
        model,
        objective,
        grad_accum=grad_accum,
        trainable=trainable,
        frozen_models=frozen_models,
    )

    def train_step(state: TrainState, batch: Batch):
        rng = jax.random.fold_in(base_key, state.step)
        denominator = objective.weight(batch)
        if axis_name is not None:
            rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
            denominator = jax.lax.psum(denominator, axis_name)
        scale = None if loss_scale is None else state.loss_scale.scale
        grads, metrics, model_state = gradients(
            state.params, state.model_state, batch, rng, denominator, scale, state.frozen
        )
        if axis_name is not None:
            grads, metrics = jax.lax.psum((grads, metrics), axis_name)
            model_state = jax.lax.pmean(model_state, axis_name)
        if scale is not None:
            grads = jax.tree.map(lambda g: g / scale.astype(g.dtype), grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        applied = last_step_finite(opt_state)
        streak, total = nonfinite_counts(opt_state)
        # A skipped step must not leak non-finite BatchNorm statistics either.
        model_state = jax.tree.map(
            lambda new, old: jnp.where(applied, new, old), model_state, state.model_state
        )
        new_scale = state.loss_scale
        if loss_scale is not None:
            new_scale = loss_scale.update(
                state.loss_scale, grads_finite=applied, loss_finite=jnp.isfinite(metrics["loss"])
            )
            streak = new_scale.streak
            metrics = {**metrics, "loss_scale": state.loss_scale.scale}
        metrics = {
            **metrics,
            "grad_norm": optax.tree.norm(grads),
            "lr": schedule(state.step),
            "nonfinite_streak": streak,
            "nonfinite_total": total,
        }
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            model_state=model_state,
            loss_scale=new_scale,
        )
        return new_state, metrics

    return train_step
