"""What an objective is: the loss a train step differentiates, computed from model outputs.

An objective names the batch fields it reads, turns a batch into `(loss, metrics)` by calling
the model through a `Forward`, and says how much the batch weighs in the mean it takes (tokens
for next-token prediction, pairs for a preference loss). The train step, gradient accumulation,
data parallelism, loss scaling, the non-finite guard and evaluation are the same for every
objective; they only ask it these questions.

The contract that makes micro-batches and devices add up exactly: `loss` and every metric are
sums over the batch's examples divided by `denominator` (the weight of the whole global batch),
or plain sums. Summing them over micro-batches and devices then gives the large batch's values.
Metrics named in `summed` are plain sums; evaluation adds them up over all batches and `report`
turns the totals into the numbers shown.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmjax.errors import BatchError
from llmjax.registry import Registry

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]

OBJECTIVES: Registry = Registry("objective")


def register_objective(name: str):
    """Class decorator: `@register_objective("dpo")` makes `train.objective=dpo` build it."""

    def add(cls: type[Objective]) -> type[Objective]:
        cls.name = name
        return OBJECTIVES.register(name)(cls)

    return add


class Forward:
    """The model as an objective calls it inside a step: params bound, dropout keyed, and the
    model's mutable state (BatchNorm statistics) threaded through the calls.

    `frozen(name)` is the same kind of call over a frozen param tree of the train state (a
    reference policy, a reward model): deterministic, and never differentiated.

    A model's own training losses (`ModelOutput.aux["loss"]`, e.g. a mixture of experts'
    load-balancing and router z-losses) and their metrics (`aux["metrics"]`) are kept from
    every call; the train step adds them to the objective's loss (`model_losses`), so every
    objective trains them without knowing of them.
    """

    def __init__(
        self,
        model: nn.Module,
        params: Any,
        model_state: dict[str, Any] | None = None,
        *,
        deterministic: bool = True,
        rng: jax.Array | None = None,
        frozen: Mapping[str, Any] | None = None,
        frozen_models: Mapping[str, nn.Module] | None = None,
    ):
        self.model, self.params = model, params
        self.model_state = dict(model_state or {})
        self.deterministic, self.rng = deterministic, rng
        self._frozen = dict(frozen or {})
        self._frozen_models = dict(frozen_models or {})
        self._calls = 0
        self._model_losses: list[tuple[jax.Array, Metrics]] = []

    def __call__(self, inputs, positions=None, segments=None, **kwargs) -> Any:
        """The model's ModelOutput (logits, ...) for token ids `inputs` [B, T]."""
        rng = self.rng
        if rng is not None and self._calls:  # a second forward pass gets its own dropout
            rng = jax.random.fold_in(rng, self._calls)
        self._calls += 1
        mutable = list(self.model_state) if self.model_state and not self.deterministic else False
        out = self.model.apply(
            {"params": self.params, **self.model_state},
            inputs,
            positions,
            segments,
            deterministic=self.deterministic,
            rngs=None if rng is None else {"dropout": rng},
            mutable=mutable,
            **kwargs,
        )
        if mutable:
            out, self.model_state = out
        aux = getattr(out, "aux", None) or {}
        if "loss" in aux:
            self._model_losses.append((aux["loss"], dict(aux.get("metrics", {}))))
        return out

    def model_losses(self, share: jax.Array) -> tuple[jax.Array, Metrics]:
        """(loss, metrics): the mean over this forward's calls of the model's own losses and
        metrics, times `share` (this batch's weight / the global batch's), so that summed
        over micro-batches and devices they are the weighted mean, as the objective's are.
        (0, {}) when the model reported none."""
        if not self._model_losses:
            return jnp.zeros((), jnp.float32), {}
        n = len(self._model_losses)
        losses, metrics = zip(*self._model_losses, strict=True)
        loss = sum(losses) / n * share
        metrics = jax.tree.map(lambda *xs: sum(xs) / n * share, *metrics)
        return loss, metrics

    def on(self, batch: Batch, prefix: str = "", **kwargs) -> Any:
        """The model on a batch's `<prefix>inputs` (and positions / segments, if given)."""
        return self(
            batch[f"{prefix}inputs"],
            batch.get(f"{prefix}positions"),
            batch.get(f"{prefix}segments"),
            **kwargs,
        )

    def frozen(self, name: str) -> Forward:
        """The model of the frozen param tree `name`, deterministic and without gradients."""
        if name not in self._frozen:
            raise KeyError(
                f"no frozen params named {name!r} in the train state (it has: "
                f"{', '.join(sorted(self._frozen)) or 'none'}); pass them as frozen={{{name!r}: "
                f"...}} when building the trainer"
            )
        params = jax.tree.map(jax.lax.stop_gradient, self._frozen[name])
        return Forward(self._frozen_models.get(name, self.model), params, deterministic=True)


@dataclass(frozen=True)
class Objective:
    """Base of the registered objectives; subclasses are frozen dataclasses of their settings."""

    name: ClassVar[str] = ""
    fields: ClassVar[tuple[str, ...]] = ()  # batch fields the objective reads
    summed: ClassVar[tuple[str, ...]] = ()  # metrics that are sums over examples
    # Metrics (means over the batch, like "loss") that training records average over each
    # logging interval, besides the loss.
    logged: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_config(cls, cfg: Any, *, tokenizer: Any = None) -> Objective:
        """The objective a run's Config asks for (`tokenizer`: the run's, when known)."""
        return cls()

    def weight(self, batch: Batch) -> jax.Array:
        """How much `batch` counts in the mean the loss takes (default: its examples)."""
        return jnp.asarray(batch[self.fields[0]].shape[0], jnp.float32)

    def loss(
        self, model: Forward, batch: Batch, denominator: jax.Array
    ) -> tuple[jax.Array, Metrics]:
        """(loss to differentiate, metrics incl. "loss"): sums over `batch` / `denominator`."""
        raise NotImplementedError

    def eval_sums(self, model: Forward, batch: Batch) -> Metrics:
        """The `summed` metrics of one evaluation batch."""
        _, metrics = self.loss(model, batch, self.weight(batch))
        return {k: metrics[k] for k in self.summed}

    def host_sums(self, batch: Mapping[str, Any]) -> dict[str, float]:
        """Sums computed on the host from an evaluation batch (e.g. bytes for bits-per-byte)."""
        return {}

    def report(self, sums: dict[str, float]) -> dict[str, float]:
        """The evaluation results, from the totals of every summed metric over the split."""
        return dict(sums)


def check_batch(objective: Objective, batch: Mapping[str, Any], where: str = "the batch") -> None:
    """Raises BatchError naming each field `objective` needs that `batch` lacks."""
    missing = [f for f in objective.fields if f not in batch]
    if missing:
        raise BatchError(
            f"objective {objective.name!r} needs batch field(s) {', '.join(map(repr, missing))}, "
            f"which {where} does not give (it gives: {', '.join(sorted(batch)) or 'nothing'}); "
            f"feed batches with those fields or choose another train.objective"
        )


def build_objective(cfg: Any, *, tokenizer: Any = None) -> Objective:
    """The objective `cfg.train.objective` names, built from the config."""
    cls = OBJECTIVES.get(cfg.train.objective, field="train.objective")
    return cls.from_config(cfg, tokenizer=tokenizer)
