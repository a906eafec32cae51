"""Pure train and eval steps; jit them with the state donated."""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from llmjax.train.loss import cross_entropy
from llmjax.train.state import TrainState, nonfinite_counts

Batch = dict[str, jax.Array]


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
        return out
    return out, model_state


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    seed: int,
    z_loss: float = 0.0,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """One optimizer step; dropout keys derive from (seed, step), so a resumed run is exact."""
    base_key = jax.random.key(seed)

    def train_step(state: TrainState, batch: Batch):
        rng = jax.random.fold_in(base_key, state.step)

        def loss_fn(params):
            logits, model_state = apply_model(
                model, params, state.model_state, batch, deterministic=False, rng=rng
            )
            loss, metrics = cross_entropy(
                logits, batch["targets"], batch.get("mask"), z_loss=z_loss
            )
            return loss, (metrics, model_state)

        (_, (metrics, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        streak, total = nonfinite_counts(opt_state)
        # A skipped step must not leak non-finite BatchNorm statistics either.
        model_state = jax.tree.map(
            lambda new, old: jnp.where(streak == 0, new, old), model_state, state.model_state
        )
        metrics = {
            **metrics,
            "grad_norm": optax.tree.norm(grads),
            "lr": schedule(state.step),
            "nonfinite_streak": streak,
            "nonfinite_total": total,
        }
        new_state = state.replace(
            step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state
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
