"""Optimizers (AdamW, Adam with coupled L2, SGD) and learning-rate schedules, by name."""

from typing import TYPE_CHECKING, Any

import jax
import optax

from llmjax.registry import Registry

if TYPE_CHECKING:
    from llmjax.config import OptimConfig

OPTIMIZERS: Registry = Registry("optimizer")
SCHEDULES: Registry = Registry("lr schedule")


# ----------------------------------------------------------------------------- schedules


@SCHEDULES.register("cosine")
def warmup_cosine(cfg: "OptimConfig", steps: int) -> optax.Schedule:
    """Linear warmup to lr, then cosine decay to lr * min_lr_ratio at the last step."""
    warmup = min(cfg.warmup_steps, steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.lr,
        warmup_steps=warmup,
        decay_steps=max(steps, warmup + 1),
        end_value=cfg.lr * cfg.min_lr_ratio,
    )


@SCHEDULES.register("constant")
def warmup_constant(cfg: "OptimConfig", steps: int) -> optax.Schedule:
    warmup = min(cfg.warmup_steps, steps)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.lr, max(warmup, 1)), optax.constant_schedule(cfg.lr)],
        [warmup],
    )


@SCHEDULES.register("wsd")
def warmup_stable_decay(cfg: "OptimConfig", steps: int) -> optax.Schedule:
    """Warmup, a long constant phase, then a linear decay over the last decay_fraction."""
    warmup = min(cfg.warmup_steps, steps)
    decay = max(1, int(round(steps * cfg.decay_fraction)))
    stable_end = max(warmup, steps - decay)
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, cfg.lr, max(warmup, 1)),
            optax.constant_schedule(cfg.lr),
            optax.linear_schedule(cfg.lr, cfg.lr * cfg.min_lr_ratio, max(steps - stable_end, 1)),
        ],
        [warmup, stable_end],
    )


def make_schedule(cfg: "OptimConfig", steps: int) -> optax.Schedule:
    return SCHEDULES.get(cfg.schedule, field="optim.schedule")(cfg, steps)


# ----------------------------------------------------------------------------- decay mask


def _leaf_name(path: tuple) -> str:
    last = path[-1]
    return str(getattr(last, "key", getattr(last, "name", last)))


def decay_mask(params: Any, decay_embeddings: bool = False) -> Any:
    """True for matmul kernels (and embedding tables if asked); False for norms and biases."""

    def decays(path, _):
        name = _leaf_name(path)
        if name.endswith("kernel"):
            return True
        return decay_embeddings and name == "embedding"

    return jax.tree_util.tree_map_with_path(decays, params)


# ----------------------------------------------------------------------------- optimizers


@OPTIMIZERS.register("adamw")
def adamw(cfg: "OptimConfig", schedule: optax.Schedule) -> optax.GradientTransformation:
    """Adam with weight decay applied to the params directly, outside the adaptive scaling."""
    return optax.adamw(
        schedule,
        b1=cfg.b1,
        b2=cfg.b2,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        mask=lambda p: decay_mask(p, cfg.decay_embeddings),
    )


@OPTIMIZERS.register("adam")
def adam_l2(cfg: "OptimConfig", schedule: optax.Schedule) -> optax.GradientTransformation:
    """Adam with classic L2: weight_decay * param is added to the gradient, then normalized."""
    return optax.chain(
        optax.add_decayed_weights(cfg.weight_decay, lambda p: decay_mask(p, cfg.decay_embeddings)),
        optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
        optax.scale_by_learning_rate(schedule),
    )


@OPTIMIZERS.register("sgd")
def sgd(cfg: "OptimConfig", schedule: optax.Schedule) -> optax.GradientTransformation:
    """SGD with momentum and coupled L2."""
    return optax.chain(
        optax.add_decayed_weights(cfg.weight_decay, lambda p: decay_mask(p, cfg.decay_embeddings)),
        optax.sgd(schedule, momentum=cfg.momentum or None),
    )


# Matrix shapes for Muon: (reduction axes, output axes), counted from the end so a leading
# `layers` axis (scanned params) is a batch axis. Everything else (embeddings, norms, biases)
# is updated by Adam.
_MUON_AXES = {
    "query_kernel": ((-3,), (-2, -1)),  # (D, heads, H)
    "key_kernel": ((-3,), (-2, -1)),
    "value_kernel": ((-3,), (-2, -1)),
    "out_kernel": ((-3, -2), (-1,)),  # (heads, H, D)
    "kernel": ((-2,), (-1,)),  # dense (in, out)
}


def muon_dimensions(params: Any) -> Any:
    """Per leaf: how Muon sees it as a matrix, or None for leaves Adam updates."""

    def dims(path, leaf):
        axes = _MUON_AXES.get(_leaf_name(path))
        if axes is None or leaf.ndim < 2:
            return None
        reduction, output = ([a % leaf.ndim for a in group] for group in axes)
        return optax.contrib.MuonDimensionNumbers(tuple(reduction), tuple(output))

    return jax.tree_util.tree_map_with_path(dims, params)


@OPTIMIZERS.register("muon")
def muon(cfg: "OptimConfig", schedule: optax.Schedule) -> optax.GradientTransformation:
    """Muon (orthogonalized momentum) on weight matrices, AdamW on everything else.

    Both follow `schedule`; Muon's weight decay is scaled by the learning rate.
    """
    return optax.contrib.muon(
        schedule,
        ns_steps=cfg.muon.ns_steps,
        preconditioning=cfg.muon.preconditioning,
        beta=cfg.b1 if cfg.momentum is None else cfg.momentum,
        weight_decay=cfg.weight_decay,
        weight_decay_mask=lambda p: decay_mask(p, cfg.decay_embeddings),
        adam_b1=cfg.b1,
        adam_b2=cfg.b2,
        adam_learning_rate=schedule if cfg.muon.adam_lr is None else _scaled(schedule, cfg),
        muon_weight_dimension_numbers=muon_dimensions,
        consistent_rms=0.2,
    )


def _scaled(schedule: optax.Schedule, cfg: "OptimConfig") -> optax.Schedule:
    ratio = cfg.muon.adam_lr / cfg.lr
    return lambda step: schedule(step) * ratio


def make_optimizer(
    cfg: "OptimConfig",
    steps: int,
    *,
    max_nonfinite: int | None = None,
    trainable: Any | None = None,
) -> optax.GradientTransformation:
    """Clipping + the named optimizer, wrapped so non-finite updates are skipped and counted.

    `trainable`: a tree of bools over the params. Only True leaves are optimized (clipping
    sees only their gradients); False leaves get zero updates and no optimizer state.
    """
    schedule = make_schedule(cfg, steps)
    parts = []
    if cfg.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    parts.append(OPTIMIZERS.get(cfg.name, field="optim.name")(cfg, schedule))
    tx = optax.chain(*parts)
    if trainable is not None:
        labels = jax.tree.map(lambda t: "trained" if t else "frozen", trainable)
        tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
    # apply_if_finite zeroes the update of a step whose gradients are not finite and counts it.
    # The training loop stops the run itself after `max_nonfinite` in a row, with a message;
    # the limit here is only a backstop.
    limit = 10**9 if max_nonfinite is None else max_nonfinite + 1
    return optax.apply_if_finite(tx, max_consecutive_errors=limit)
