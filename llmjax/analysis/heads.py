"""What kind each attention head is, how far it looks, and how many heads a model can lose.

`classify_heads` names each head from its scores (`llmjax.analysis.attention`) with stated
thresholds: induction, previous-token, positional (most of its mass at one other relative
distance), first-token, or other. `mean_distance` is how far back a head looks on average.
`greedy_pruning` removes heads one at a time, each time the one whose removal raises the loss
least (Michel et al. 2019 prune by importance; Voita et al. 2019 found most heads can go), and
returns the loss after each removal; its first round is every head's ablation alone.

    names = classify_heads(previous=prev_LxN, induction=ind_LxN, profile=profile_LxNxT,
                           first=first_token_score(probs))
    pruning = prune_heads(model, variables, batch, held_out=other_batch)
    pruning.losses[k], pruning.held_out[k]       # with the first k heads of pruning.order gone
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llmjax.analysis.attention import Probs, _check, _mean_over_rows, _seeing_rows
from llmjax.objectives.losses import cross_entropy
from llmjax.typing import Array, Float

# A head is of a kind when its score reaches the threshold (checked in this order).
THRESHOLDS = {"induction": 0.4, "previous-token": 0.5, "positional": 0.5, "first-token": 0.5}
KINDS = (*THRESHOLDS, "other")


def mean_distance(probs_LxBxNxTxS: Probs) -> Float[Array, "L N"]:
    """Mean over queries of sum_s p[t, s] * (t - s): how many tokens back a head looks on
    average (0: at itself; (t) / 2 for a head spread evenly over keys 0 .. t)."""
    _check(probs_LxBxNxTxS)
    length = probs_LxBxNxTxS.shape[-1]
    distance_TxS = jnp.maximum(jnp.arange(length)[:, None] - jnp.arange(length)[None, :], 0)
    d_LxBxNxT = jnp.einsum("LBNTS,TS->LBNT", probs_LxBxNxTxS, distance_TxS.astype(jnp.float32))
    return _mean_over_rows(d_LxBxNxT, _seeing_rows(probs_LxBxNxTxS))


def first_token_score(probs_LxBxNxTxS: Probs) -> Float[Array, "L N"]:
    """Mean attention from each query t >= 1 to key 0 (a head that parks its mass on the
    first token)."""
    _check(probs_LxBxNxTxS)
    first_LxBxNxT = probs_LxBxNxTxS[..., 1:, 0]
    return _mean_over_rows(first_LxBxNxT, _seeing_rows(probs_LxBxNxTxS)[:, 1:])


def positional_peak(profile_LxNxT: Float[Array, "L N T"]) -> tuple[np.ndarray, np.ndarray]:
    """(peak, distance) [L, N]: the largest mean attention at one relative distance d of a
    `positional_profile`, and that d. Only d < T / 2 is searched (at larger d few queries
    exist, and a head on the first token would look like one at d = T - 1)."""
    profile = np.asarray(profile_LxNxT)
    near = profile[..., : max(1, profile.shape[-1] // 2)]
    return near.max(-1), near.argmax(-1)


def classify_heads(
    *,
    previous: Any,
    induction: Any,
    profile: Any,
    first: Any,
    thresholds: Mapping[str, float] = THRESHOLDS,
) -> list[list[str]]:
    """[L][N] kind names: the first of induction (score on repeated tokens), previous-token,
    positional ("positional d=3": peak at a distance other than 1), first-token whose score
    reaches its threshold, else "other". Scores are [L, N]; `profile` is [L, N, T]."""
    peak, distance = positional_peak(profile)
    scores = {
        "induction": np.asarray(induction),
        "previous-token": np.asarray(previous),
        "positional": np.where(distance == 1, 0.0, peak),  # distance 1: previous-token's
        "first-token": np.asarray(first),
    }
    names = []
    for layer in range(peak.shape[0]):
        row = []
        for head in range(peak.shape[1]):
            kind = next((k for k in THRESHOLDS if scores[k][layer, head] >= thresholds[k]),
                        "other")  # fmt: skip
            row.append(f"positional d={distance[layer, head]}" if kind == "positional" else kind)
        names.append(row)
    return names


def count_kinds(names: list[list[str]]) -> dict[str, int]:
    """How many heads of each kind (positional heads of any distance counted together)."""
    flat = [n.split(" ")[0] for row in names for n in row]
    return {kind: flat.count(kind) for kind in KINDS}


@dataclass(frozen=True)
class Pruning:
    """Heads in the order greedy pruning removed them, and the loss after each removal:
    losses[k] with the first k of `order` removed (losses[0]: every head kept). `single`
    [L, N] is the loss with each head alone removed (greedy's first round); `held_out` the
    curve of the same order on other data, when asked for."""

    order: tuple[tuple[int, int], ...]
    losses: np.ndarray
    single: np.ndarray
    held_out: np.ndarray | None = None

    @property
    def kept(self) -> np.ndarray:
        """Heads kept at each entry of `losses`."""
        return len(self.order) - np.arange(len(self.losses))

    def removable(self, tolerance: float, *, held_out: bool = False) -> int:
        """How many heads go before the loss (of `held_out` if asked) first rises more than
        `tolerance` above the whole model's."""
        losses = self.held_out if held_out else self.losses
        over = np.nonzero(losses - losses[0] > tolerance)[0]
        return int(over[0] - 1) if over.size else len(self.order)


def greedy_pruning(
    masked_losses: Callable[[np.ndarray], Any], n_layers: int, n_heads: int
) -> Pruning:
    """Removes all L * N heads one at a time, each time the remaining head whose removal gives
    the lowest loss. `masked_losses(masks [K, L, N])` returns the K losses with those head
    masks (1 keeps a head, 0 removes it); it is always called with K = L * N + 1 masks (the
    current one, then it without each head in turn), so a compiled function sees one shape."""
    total = n_layers * n_heads
    mask = np.ones(total, np.float32)
    losses, order, single = [], [], None
    for _ in range(total):
        without_KxH = np.repeat(mask[None], total, 0) * (1.0 - np.eye(total, dtype=np.float32))
        masks_KxH = np.concatenate([mask[None], without_KxH])
        losses_K = np.asarray(masked_losses(masks_KxH.reshape(-1, n_layers, n_heads)), np.float64)
        if single is None:
            losses.append(losses_K[0])
            single = losses_K[1:].reshape(n_layers, n_heads)
        candidates = np.where(mask > 0, losses_K[1:], np.inf)  # a removed head cannot go again
        best = int(np.argmin(candidates))
        mask[best] = 0.0
        order.append(divmod(best, n_heads))
        losses.append(candidates[best])
    return Pruning(tuple(order), np.asarray(losses), single)


def losses_along(
    order: Sequence[tuple[int, int]],
    masked_losses: Callable[[np.ndarray], Any],
    n_layers: int,
    n_heads: int,
) -> np.ndarray:
    """[len(order) + 1]: the loss with the first k heads of `order` removed, k = 0, 1, ...;
    e.g. greedy pruning's order scored on held-out data (on the batch that chose it, the
    curve is optimistic)."""
    masks_KxH = np.ones((len(order) + 1, n_layers * n_heads), np.float32)
    for k, (layer, head) in enumerate(order):
        masks_KxH[k + 1 :, layer * n_heads + head] = 0.0
    return np.asarray(masked_losses(masks_KxH.reshape(-1, n_layers, n_heads)), np.float64)


def mask_losses(model: nn.Module) -> Callable[..., jax.Array]:
    """A compiled function (variables, batch, head masks [K, L, N]) -> the K mean next-token
    NLLs on `batch` (`inputs`, `targets`, optional `mask`, `positions`, `segments`). It runs
    one mask at a time (`lax.map`), so memory stays one forward pass's; batches of one shape
    share its compilation."""

    def loss(variables, batch, head_mask):
        logits = model.apply(
            dict(variables),
            batch["inputs"],
            batch.get("positions"),
            batch.get("segments"),
            head_mask=head_mask,
        ).logits
        return cross_entropy(logits, batch["targets"], batch.get("mask"))[0]

    @jax.jit
    def run(variables, batch, masks_KxLxN):
        masks = jnp.asarray(masks_KxLxN, jnp.float32)
        return jax.lax.map(lambda m: loss(variables, batch, m), masks)

    return run


def prune_heads(
    model: nn.Module,
    variables: Mapping[str, Any],
    batch: Mapping[str, jax.Array],
    held_out: Mapping[str, jax.Array] | None = None,
) -> Pruning:
    """`greedy_pruning` of a model's heads by its loss on `batch`; with `held_out` (a batch of
    the same shape), the chosen order's curve on it too."""
    cfg, run = model.cfg, mask_losses(model)
    variables, batch = dict(variables), dict(batch)
    pruning = greedy_pruning(lambda m: run(variables, batch, m), cfg.n_layers, cfg.n_heads)
    if held_out is None:
        return pruning
    other = dict(held_out)
    curve = losses_along(pruning.order, lambda m: run(variables, other, m), cfg.n_layers,
                         cfg.n_heads)  # fmt: skip
    return dataclasses.replace(pruning, held_out=curve)
