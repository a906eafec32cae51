"""What a position's loss depends on, measured through gradients: its own past only (a causal
LM), or also its future and other rows of the batch (batch statistics, e.g. BatchNorm in
training mode); and how much right-padding a batch changes the loss of its real tokens.

    leak = gradient_leakage(model, variables, tokens_BxT, train_mode=True)
    leak["future"], leak["other_rows"]     # shares of the gradient's norm, 0 for a causal LM
    padding_shift(model, variables, inputs_BxT, targets_BxT, pad_fraction=0.5, train_mode=True)

`train_mode=True` applies the model as training does (deterministic=False, non-param
collections such as batch_stats computed from the batch) without dropout randomness mattering
(the key is fixed), so a model with dropout shows its dropout noise too; use dropout 0.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llmjax.objectives.losses import token_log_probs
from llmjax.typing import Array, Int


def apply_in_mode(model, variables, tokens_BxT, train_mode: bool, perturb=None):
    """The model's output in training mode (module docstring) or as evaluated; `perturb` is the
    "perturbations" collection (d output / d embeddings)."""
    if perturb is not None:
        variables = {**variables, "perturbations": perturb}
    if not train_mode:
        return model.apply(variables, tokens_BxT, deterministic=True)
    mutable = [k for k in variables if k not in ("params", "perturbations")]
    out, _ = model.apply(variables, tokens_BxT, deterministic=False, mutable=mutable,
                         rngs={"dropout": jax.random.key(0)})  # fmt: skip
    return out


def gradient_leakage(
    model: Any,
    variables: dict[str, Any],
    tokens_BxT: Int[Array, "B T"],
    targets_BxT: Int[Array, "B T"],
    *,
    positions: tuple[int, ...] | None = None,
    train_mode: bool,
) -> dict[str, float]:
    """For the loss of row 0 at each of `positions` (default: a quarter, half and three
    quarters of T): the share of the norm of d loss / d input embeddings that falls on later
    positions of row 0 ("future") and on other rows ("other_rows"), averaged over positions,
    and the largest future share. Both are exactly 0 for a causal model that treats rows
    apart."""
    batch, length = tokens_BxT.shape
    positions = positions or (length // 4, length // 2, 3 * length // 4)
    d_model = model.cfg.d_model
    zero = {"embeddings": jnp.zeros((batch, length, d_model), jnp.float32)}
    tokens_BxT, targets_BxT = jnp.asarray(tokens_BxT), jnp.asarray(targets_BxT)

    @jax.jit
    def grads(t):
        def loss(perturb):
            logits = apply_in_mode(model, variables, tokens_BxT, train_mode, perturb).logits
            return -token_log_probs(logits[0, t], targets_BxT[0, t])

        return jax.grad(loss)(zero)["embeddings"]

    future, other = [], []
    for t in positions:
        g = np.asarray(grads(jnp.int32(t)), np.float64)
        total = np.sqrt((g**2).sum())
        future.append(np.sqrt((g[0, t + 1 :] ** 2).sum()) / total)
        other.append(np.sqrt((g[1:] ** 2).sum()) / total if batch > 1 else 0.0)
    return {"future": float(np.mean(future)), "future_max": float(np.max(future)),
            "other_rows": float(np.mean(other))}  # fmt: skip


def padding_shift(
    model: Any,
    variables: dict[str, Any],
    inputs_BxT: Int[Array, "B T"],
    targets_BxT: Int[Array, "B T"],
    *,
    pad_fraction: float,
    pad_id: int = 0,
    train_mode: bool,
) -> float:
    """Mean |change| of the per-token loss (nats) on the first (1 - pad_fraction) of every
    row's tokens when the rest of each row is replaced by padding: zero for a causal model
    whose tokens never see later positions or other rows."""
    keep = int(round(inputs_BxT.shape[1] * (1 - pad_fraction)))
    targets_BxT = jnp.asarray(targets_BxT)
    padded = jnp.asarray(inputs_BxT).at[:, keep:].set(pad_id)

    @jax.jit
    def losses(tokens):
        logits = apply_in_mode(model, variables, tokens, train_mode).logits
        return -token_log_probs(logits, targets_BxT)[:, :keep]

    return float(jnp.abs(losses(padded) - losses(jnp.asarray(inputs_BxT))).mean())
