"""Shared helpers of the decoding tests."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llmjax.models import build_model


def random_params(cfg, seed: int = 0) -> dict:
    """Random params of the model's shapes, without compiling `init` (slow on this CPU):
    norm scales near 1, everything else normal with std 0.2 (sharp enough to make sampling
    and greedy choices well separated)."""
    model = build_model(cfg)
    tokens = jnp.zeros((1, 2), jnp.int32)
    shapes = jax.eval_shape(lambda k: model.init(k, tokens), jax.random.key(0))["params"]
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            return jnp.asarray(1 + 0.1 * rng.standard_normal(s.shape), s.dtype)
        return jnp.asarray(0.2 * rng.standard_normal(s.shape), s.dtype)

    return jax.tree_util.tree_map_with_path(leaf, nn.meta.unbox(shapes))
