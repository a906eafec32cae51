"""Pure train and eval steps; jit (or pmap) them with the state donated.

One optimizer step can sum the gradients of several micro-batches (`grad_accum`, a lax.scan
inside the step) and, under pmap, of several devices (`axis_name`). Every partial loss is
divided by the token count of the whole global batch, so the summed gradient is exactly the
gradient of the large batch's mean loss, not a mean of per-micro-batch means.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from llmjax.train.loss import cross_entropy
from llmjax.train.precision import DynamicLossScale
from llmjax.train.state import TrainState, last_step_finite, nonfinite_counts

Batch = dict[str, jax.Array]
BATCH_AXES = ("batch", "length")


def apply_model(
    model: nn.Module,
    params: Any,
    model_state: dict[str, Any],
    batch: Batch,
    *,
    deterministic: bool,
    rng: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, Any]]:
    """Logits for a batch, and the updated model state (BatchNorm statistics) when training."""
    mutable = list(model_state) if model_state and not deterministic else False
    out = model.apply(
        {"params": params, **model_state},
        batch["inputs"],
        batch.get("positions"),
        batch.get("segments"),
        deterministic=deterministic,
        rngs=None if rng is None else {"dropout": rng},
        mutable=mutable,
    )
    if mutable:
        out, model_state = out
    return out.logits, model_state


def batch_tokens(batch: Batch) -> jax.Array:
    """The number of target tokens the loss averages over."""
    mask = batch.get("mask")
    if mask is None:
        return jnp.asarray(batch["targets"].size, jnp.float32)
    return mask.astype(jnp.float32).sum()


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
    return {
        k: nn.with_logical_constraint(v, BATCH_AXES + (None,) * (v.ndim - 2))
        for k, v in batch.items()
    }


def make_gradient_fn(
    model: nn.Module, *, z_loss: float = 0.0, grad_accum: int = 1
) -> Callable[..., tuple[Any, dict[str, jax.Array], dict[str, Any]]]:
    """(params, model_state, batch, rng, denominator, scale) -> (grads, metrics, model_state).

    Gradients of scale * sum(loss) / denominator, summed over `grad_accum` micro-batches;
    metrics are summed the same way (so "loss" is the mean over the denominator's tokens).
    """

    def micro_step(params, model_state, batch, rng, denominator, scale):
        def loss_fn(p):
            logits, new_state = apply_model(
                model, p, model_state, batch, deterministic=False, rng=rng
            )
            loss, metrics = cross_entropy(
                logits,
                batch["targets"],
                batch.get("mask"),
                z_loss=z_loss,
                denominator=denominator,
            )
            return (loss if scale is None else loss * scale), (metrics, new_state)

        (_, (metrics, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, metrics, new_state

    if grad_accum == 1:
        return micro_step

    def accumulated(params, model_state, batch, rng, denominator, scale):
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
            )
            grads_sum, metrics_sum = jax.tree.map(
                lambda a, b: a + b.astype(a.dtype), (grads_sum, metrics_sum), (grads, metrics)
            )
            return (grads_sum, metrics_sum, state), None

        first = jax.tree.map(lambda x: x[0], micro)
        shapes = jax.eval_shape(micro_step, params, model_state, first, rng, denominator, scale)
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
    z_loss: float = 0.0,
    grad_accum: int = 1,
    loss_scale: DynamicLossScale | None = None,
    axis_name: str | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """One optimizer step; dropout keys derive from (seed, step), so a resumed run is exact.

    `loss_scale`: dynamic loss scaling (the state must carry a LossScaleState); an overflow
    skips the step and lowers the scale without counting towards divergence.
    `axis_name`: the pmap axis to sum gradients and metrics over.
    """
    base_key = jax.random.key(seed)
    gradients = make_gradient_fn(model, z_loss=z_loss, grad_accum=grad_accum)

    def train_step(state: TrainState, batch: Batch):
        rng = jax.random.fold_in(base_key, state.step)
        denominator = batch_tokens(batch)
        if axis_name is not None:
            rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
            denominator = jax.lax.psum(denominator, axis_name)
        scale = None if loss_scale is None else state.loss_scale.scale
        grads, metrics, model_state = gradients(
            state.params, state.model_state, batch, rng, denominator, scale
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


def make_eval_step(model: nn.Module) -> Callable[[Any, dict[str, Any], Batch], dict]:
    """Sums (nll, tokens, correct) over a batch so many batches aggregate exactly."""

    def eval_step(params, model_state, batch: Batch):
        logits, _ = apply_model(model, params, model_state, batch, deterministic=True)
        _, metrics = cross_entropy(logits, batch["targets"], batch.get("mask"))
        return {k: metrics[k] for k in ("nll_sum", "tokens", "correct_sum")}

    return eval_step
