"""How much the loss at one position depends on each earlier input, against the distance: the
norm of d loss_T / d x_t, where x_t is the model's input vector at t (token embedding plus any
position table, the models' "embeddings" perturbation hook).

    g_BxT = input_gradient_norms(model, variables, inputs_BxT, targets_BxT, position=T)
    g_D = gradient_by_distance(model, variables, inputs_BxT, targets_BxT)  # d = 0 .. T-1

In a recurrent model the only path from x_t to the loss at T runs through T - t steps of the
recurrence, so the gradient is a product of T - t Jacobians and can shrink exponentially with
the distance (Hochreiter 1991; Bengio et al. 1994); attention reaches every earlier input in one
step. A causal model gives exactly zero for t > T. The models are applied as evaluated
(deterministic, no dropout).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llmjax.objectives.losses import token_log_probs
from llmjax.typing import Array, Int


@functools.lru_cache(maxsize=16)
def _gradient_norms_fn(model: Any, shape: tuple[int, int]):
    """A jitted (variables, inputs, targets, position) -> [B, T] norms, compiled once per model
    (modules hash by their config) and shape for every `variables` (e.g. at initialization and
    after training)."""
    batch, length = shape
    zero = {"embeddings": jnp.zeros((batch, length, model.cfg.d_model), jnp.float32)}

    @jax.jit
    def norms(variables, inputs_BxT, targets_BxT, position):
        def loss(perturb):
            logits = model.apply({**variables, "perturbations": perturb}, inputs_BxT).logits
            # Rows are independent, so the sum's gradient on row b is row b's own loss's.
            return -token_log_probs(logits[:, position], targets_BxT[:, position]).sum()

        g_BxTxD = jax.grad(loss)(zero)["embeddings"]
        return jnp.sqrt(jnp.sum(jnp.square(g_BxTxD), axis=-1))

    return norms


def input_gradient_norms(
    model: Any,
    variables: dict[str, Any],
    inputs_BxT: Int[Array, "B T"],
    targets_BxT: Int[Array, "B T"],
    *,
    position: int,
) -> np.ndarray:
    """[B, T]: ||d loss_position / d x_t||_2 for each row and input t, where loss_position is
    -log p(targets[b, position] | inputs[b, :position + 1])."""
    inputs_BxT, targets_BxT = jnp.asarray(inputs_BxT), jnp.asarray(targets_BxT)
    _check_position(position, inputs_BxT.shape[1])
    norms = _gradient_norms_fn(model, inputs_BxT.shape)
    return np.asarray(norms(variables, inputs_BxT, targets_BxT, jnp.int32(position)), np.float64)


def gradient_by_distance(
    model: Any,
    variables: dict[str, Any],
    inputs_BxT: Int[Array, "B T"],
    targets_BxT: Int[Array, "B T"],
    *,
    positions: Sequence[int] | None = None,
) -> np.ndarray:
    """[max(positions) + 1]: entry d is the mean over rows, and over the loss positions T in
    `positions` (default: the last) with T >= d, of ||d loss_T / d x_{T-d}||_2."""
    inputs_BxT, targets_BxT = jnp.asarray(inputs_BxT), jnp.asarray(targets_BxT)
    length = inputs_BxT.shape[1]
    positions = [length - 1] if positions is None else list(positions)
    if not positions:
        raise ValueError("gradient_by_distance needs at least one loss position")
    for p in positions:
        _check_position(p, length)
    norms = _gradient_norms_fn(model, inputs_BxT.shape)
    total, count = np.zeros(max(positions) + 1), np.zeros(max(positions) + 1)
    for p in positions:
        g_BxT = np.asarray(norms(variables, inputs_BxT, targets_BxT, jnp.int32(p)), np.float64)
        total[: p + 1] += g_BxT[:, p::-1].mean(0)  # distances 0 .. p
        count[: p + 1] += 1
    return total / count


def _check_position(position: int, length: int) -> None:
    if not 0 <= position < length:
        raise ValueError(f"loss position {position} is outside the sequence [0, {length})")
