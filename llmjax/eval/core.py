"""Evaluating an objective over many batches: exact sums over the whole split, then a report."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import flax.linen as nn
import jax

from llmjax.objectives import Batch, Forward, NextToken, Objective


def make_eval_step(
    model: nn.Module,
    objective: Objective | None = None,
    *,
    frozen_models: dict[str, nn.Module] | None = None,
) -> Callable[..., dict[str, jax.Array]]:
    """(params, model_state, batch[, frozen]) -> the objective's summed metrics of the batch,
    so that many batches aggregate exactly (default objective: next-token prediction)."""
    objective = NextToken() if objective is None else objective

    def eval_step(params, model_state, batch: Batch, frozen=None):
        forward = Forward(model, params, model_state, frozen=frozen, frozen_models=frozen_models)
        return objective.eval_sums(forward, batch)

    return eval_step


def evaluate(
    eval_step: Callable,
    params: Any,
    model_state: dict,
    batches: Iterable[dict[str, Any]],
    objective: Objective | None = None,
    *,
    place: Callable[[dict], Any] | None = None,
    frozen: Any = None,
) -> dict[str, float]:
    """The objective's report (for next-token prediction: loss, perplexity, bits per byte,
    accuracy, tokens) over all host `batches`, from sums accumulated in float64.

    `place` puts a host batch where eval_step expects it (e.g. sharded over a mesh).
    """
    objective = NextToken() if objective is None else objective
    sums: dict[str, float] = {}
    for batch in batches:
        placed = batch if place is None else place(batch)
        device = jax.device_get(eval_step(params, model_state, placed, frozen))
        for name, value in (*device.items(), *objective.host_sums(batch).items()):
            sums[name] = sums.get(name, 0.0) + float(value)
    return objective.report(sums)
