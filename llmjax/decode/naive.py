"""Plain sampling by recomputing the whole (cropped) context each step; no KV cache."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


def sample_naive(
    tokens_to_logits: Callable[[jax.Array], jax.Array],
    prompt: np.ndarray,
    *,
    max_new_tokens: int,
    context: int,
    key: jax.Array,
    temperature: float = 1.0,
    top_k: int = 0,
) -> np.ndarray:
    """Extends one prompt token by token; `tokens_to_logits` maps [1, context] ids to logits.

    The window is a fixed `context` long (right-padded) so the model is compiled once.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")

    @jax.jit
    def next_token(window, length, key):
        logits = tokens_to_logits(window[None])[0, length - 1]
        if top_k:
            kth = jax.lax.top_k(logits, top_k)[0][-1]
            logits = jnp.where(logits < kth, -jnp.inf, logits)
        if temperature == 0:
            return jnp.argmax(logits)
        return jax.random.categorical(key, logits / temperature)

    out = [int(t) for t in prompt]
    for i in range(max_new_tokens):
        recent = out[-context:]
        window = np.zeros(context, np.int32)
        window[: len(recent)] = recent
        out.append(int(next_token(window, len(recent), jax.random.fold_in(key, i))))
    return np.asarray(out, np.int32)
