"""The train state: a plain pytree of step, params, optimizer state and model state."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training; the model and optimizer are kept outside."""

    step: jax.Array
    params: Any
    opt_state: optax.OptState
    model_state: dict[str, Any]  # non-param collections, e.g. BatchNorm's batch_stats

    @classmethod
    def create(cls, params: Any, model_state: dict[str, Any], tx: optax.GradientTransformation):
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            model_state=model_state,
        )


def nonfinite_counts(opt_state: optax.OptState) -> tuple[jax.Array, jax.Array]:
    """(non-finite steps in a row, total non-finite steps) from optax.apply_if_finite's state."""
    return opt_state.notfinite_count, opt_state.total_notfinite
