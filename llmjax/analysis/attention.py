"""Scores of attention heads from their probabilities, and the loss each head is worth.

The scores are pure functions of the float32 probabilities a model returns with
`return_attention=True` (`ModelOutput.attention`, [L, B, N, T, S]) and of its tokens; each
gives one number per layer and head, [L, N]. They assume a call without a cache, so key s is
the token at index s (S == T). Rows that see no key (all-zero probabilities) are left out of
the means. `head_ablation_losses` runs the model, zeroing one head at a time (`head_mask`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmjax.objectives.losses import cross_entropy
from llmjax.typing import Array, Float, Int

Probs = Float[Array, "L B N T S"]


def _check(probs_LxBxNxTxS: jax.Array) -> None:
    if probs_LxBxNxTxS.ndim != 5 or probs_LxBxNxTxS.shape[-1] != probs_LxBxNxTxS.shape[-2]:
        raise ValueError(
            f"attention probabilities must be [L, B, N, T, T] (keys indexed like queries: a call "
            f"without a cache), got shape {probs_LxBxNxTxS.shape}"
        )


def _mean_over_rows(score_LxBxNxT: jax.Array, rows_BxT: jax.Array) -> Float[Array, "L N"]:
    """Mean over the (batch, query) rows marked in rows_BxT."""
    weight = rows_BxT.astype(jnp.float32)[None, :, None, :]
    total = jnp.sum(score_LxBxNxT * weight, axis=(1, 3))
    return total / jnp.maximum(jnp.sum(weight, axis=(1, 3)), 1.0)


def _seeing_rows(probs: jax.Array) -> jax.Array:
    """[B, T]: rows that see some key (in the first layer and head; the mask is shared)."""
    return probs[0, :, 0].sum(-1) > 0


def head_entropy(probs_LxBxNxTxS: Probs) -> Float[Array, "L N"]:
    """Mean over queries of each row's entropy -sum_s p log p, in nats: 0 for a head that
    attends to one key, log(k) for one spread evenly over k."""
    _check(probs_LxBxNxTxS)
    p = probs_LxBxNxTxS
    entropy_LxBxNxT = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), -1)
    return _mean_over_rows(entropy_LxBxNxT, _seeing_rows(p))


def previous_token_score(probs_LxBxNxTxS: Probs) -> Float[Array, "L N"]:
    """Mean attention from each query t >= 1 to the key right before it, t - 1."""
    _check(probs_LxBxNxTxS)
    p = probs_LxBxNxTxS
    previous_LxBxNxT = jnp.diagonal(p, offset=-1, axis1=-2, axis2=-1)  # p[t+1, t]
    return _mean_over_rows(previous_LxBxNxT, _seeing_rows(p)[:, 1:])


def induction_targets(tokens_BxT: Int[Array, "B T"]) -> Float[Array, "B T S"]:
    """1 at (t, s + 1) for every earlier occurrence s < t of token t: where an induction head
    looks (the token that followed the current one last time)."""
    same_BxTxS = tokens_BxT[:, :, None] == tokens_BxT[:, None, :]
    length = tokens_BxT.shape[1]
    earlier_TxS = jnp.arange(length)[None, :] < jnp.arange(length)[:, None]
    occurrence_BxTxS = same_BxTxS & earlier_TxS
    # Shift by one key: occurrence at s marks key s + 1 (s < t, so s + 1 <= t, never the future).
    shifted = jnp.pad(occurrence_BxTxS[:, :, :-1], ((0, 0), (0, 0), (1, 0)))
    return shifted.astype(jnp.float32)


def induction_score(probs_LxBxNxTxS: Probs, tokens_BxT: Int[Array, "B T"]) -> Float[Array, "L N"]:
    """Mean attention from each query whose token occurred before to the token(s) right after
    its earlier occurrence(s) (`induction_targets`); queries with no earlier occurrence are
    left out. On a random block repeated twice (`repeated_tokens`) that is the attention from
    each token of the second copy to the one after it in the first copy."""
    _check(probs_LxBxNxTxS)
    targets_BxTxS = induction_targets(tokens_BxT)
    score_LxBxNxT = jnp.einsum("LBNTS,BTS->LBNT", probs_LxBxNxTxS, targets_BxTxS)
    rows_BxT = (targets_BxTxS.sum(-1) > 0) & _seeing_rows(probs_LxBxNxTxS)
    return _mean_over_rows(score_LxBxNxT, rows_BxT)


def repeated_tokens(key: jax.Array, batch: int, block: int, vocab_size: int) -> jax.Array:
    """[batch, 2 * block] int32: a random block of distinct tokens, then the same block again
    (the standard probe of induction heads)."""
    if block > vocab_size:
        raise ValueError(f"a block of {block} distinct tokens needs vocab_size >= {block}")
    keys = jax.random.split(key, batch)
    blocks = jax.vmap(lambda k: jax.random.permutation(k, vocab_size)[:block])(keys)
    return jnp.concatenate([blocks, blocks], axis=1).astype(jnp.int32)


def positional_profile(probs_LxBxNxTxS: Probs) -> Float[Array, "L N T"]:
    """Mean attention by relative distance d = t - s (0: the query's own key), over the queries
    t >= d; [L, N, T], index d."""
    _check(probs_LxBxNxTxS)
    p = probs_LxBxNxTxS
    length = p.shape[-1]
    rows_BxT = _seeing_rows(p)
    p_LxNxTxS = jnp.einsum("LBNTS,BT->LNTS", p, rows_BxT.astype(jnp.float32))
    t_TxS = jnp.arange(length)[:, None]
    distance_TxS = t_TxS - jnp.arange(length)[None, :]
    # Pairs with s > t (no distance in the past) go to an extra bin that is dropped.
    bins = jnp.where(distance_TxS >= 0, distance_TxS, length).reshape(-1)
    sums = jnp.zeros((*p_LxNxTxS.shape[:2], length + 1), jnp.float32)
    sums = sums.at[:, :, bins].add(p_LxNxTxS.reshape(*p_LxNxTxS.shape[:2], -1))[:, :, :length]
    # Queries t >= d that see a key, counted over the batch: the mean's denominator per d.
    seen_T = rows_BxT.astype(jnp.float32).sum(0)
    counts_D = jnp.cumsum(seen_T[::-1])[::-1]
    return sums / jnp.maximum(counts_D, 1.0)


def head_ablation_losses(
    model: nn.Module, variables: Mapping[str, Any], batch: Mapping[str, jax.Array]
) -> Float[Array, "L N"]:
    """loss(head l, n zeroed) - loss(model as is), for each head alone, over a batch of
    `inputs` and `targets` (optional `mask`, `positions`, `segments`, as the LM objective
    reads them). The loss is the mean next-token NLL; a positive entry is a head the model
    needs. The L * N ablated runs are one compiled `lax.map`, so memory stays one run's."""
    cfg = model.cfg
    n_layers, n_heads = cfg.n_layers, cfg.n_heads

    def loss(head_mask):
        logits = model.apply(
            dict(variables),
            batch["inputs"],
            batch.get("positions"),
            batch.get("segments"),
            head_mask=head_mask,
        ).logits
        return cross_entropy(logits, batch["targets"], batch.get("mask"))[0]

    @jax.jit
    def run():
        base = loss(None)
        masks_HxLxN = 1.0 - jnp.eye(n_layers * n_heads, dtype=jnp.float32).reshape(
            -1, n_layers, n_heads
        )
        ablated = jax.lax.map(loss, masks_HxLxN)
        return (ablated - base).reshape(n_layers, n_heads)

    return run()
