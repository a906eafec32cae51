"""Token representations layer by layer, and gradients layer by layer: what depth does to them.

    h_LxBxTxD = layer_outputs(model, variables, tokens_BxT)   # each block's output
    effective_rank(h_LxBxTxD)        # [L]: exp(entropy of the singular values), per sequence
    rank_one_residual(h_LxBxTxD)     # [L]: ||X - 1 mean(X)|| / ||X||, 0 when all tokens agree
    layer_grad_norms(grads, n_layers)  # [L]: the norm of each block's parameter gradient

Dong et al. (2021) show that self-attention without skip connections loses rank doubly
exponentially with depth: every token's representation converges to the same vector. The
rank-one residual measures exactly that distance; the effective rank (Roy & Vetterli 2007) how
many directions the tokens of a sequence still span.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llmjax.models.block import Block
from llmjax.typing import Array, Float, Int


def layer_outputs(
    model: Any, variables: dict[str, Any], tokens_BxT: Int[Array, "B T"]
) -> Float[Array, "L B T D"]:
    """The output of every block (float32), in the scanned and the unscanned layouts."""
    blocks = lambda module, _: isinstance(module, Block)  # noqa: E731
    _, state = model.apply(variables, tokens_BxT, capture_intermediates=blocks,
                           mutable=["intermediates"])  # fmt: skip
    found = state["intermediates"]
    if "blocks" in found:  # scanned: one entry stacked over layers
        return found["blocks"]["__call__"][0][0].astype(jnp.float32)
    n = len([k for k in found if k.startswith("blocks_")])
    return jnp.stack([found[f"blocks_{i}"]["__call__"][0][0] for i in range(n)]).astype(jnp.float32)


def _singular_values(h_LxBxTxD) -> np.ndarray:
    return np.linalg.svd(np.asarray(h_LxBxTxD, np.float64), compute_uv=False)  # L B min(T, D)


def effective_rank(h_LxBxTxD: Float[Array, "L B T D"]) -> np.ndarray:
    """Per layer, the mean over sequences of exp(entropy of the normalized singular values of
    the sequence's T x D representation matrix): 1 when all tokens are one direction, up to
    min(T, D)."""
    s = _singular_values(h_LxBxTxD)
    p = s / np.maximum(s.sum(-1, keepdims=True), 1e-30)
    entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)
    return np.exp(entropy).mean(-1)


def rank_one_residual(h_LxBxTxD: Float[Array, "L B T D"]) -> np.ndarray:
    """Per layer, the mean over sequences of ||X - 1 mean_t(X)||_F / ||X||_F: how far the
    tokens' representations are from all being the same vector (Dong et al.'s rank collapse,
    measured against the best rank-one matrix of that form)."""
    h = np.asarray(h_LxBxTxD, np.float64)
    centred = h - h.mean(axis=2, keepdims=True)
    ratio = np.linalg.norm(centred, axis=(2, 3)) / np.maximum(np.linalg.norm(h, axis=(2, 3)), 1e-30)
    return ratio.mean(-1)


def layer_grad_norms(grads: Any, n_layers: int) -> np.ndarray:
    """The L2 norm of each block's parameter gradient ([n_layers]); a scanned model's block
    params carry the layer axis first, an unscanned one's are named blocks_0, blocks_1 ..."""
    grads = jax.device_get(grads)
    sums = np.zeros(n_layers)
    if "blocks" in grads:
        for leaf in jax.tree.leaves(grads["blocks"]):
            sums += np.square(np.asarray(leaf, np.float64)).reshape(n_layers, -1).sum(-1)
    else:
        for i in range(n_layers):
            sums[i] = sum(float(np.square(np.asarray(x, np.float64)).sum())
                          for x in jax.tree.leaves(grads[f"blocks_{i}"]))  # fmt: skip
    return np.sqrt(sums)
