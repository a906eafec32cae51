"""Generating past a learned position table as nanoGPT does: the context is cropped.

nanoGPT's `generate` feeds `idx[:, -block_size:]` to the model at every step, so once a
sequence is longer than the table each token is predicted from the last max_seq_len tokens, at
positions 0 .. max_seq_len - 1 again, by a full forward pass over that window. A KV cache
cannot serve those steps (every token's position shifts by one per step), so here the cache
serves the steps while the longest row still fits the context and a windowed recomputation the
rest: the tokens are those of nanoGPT's loop, and only the steps past the context cost a full
forward pass each.

Positions that extrapolate (RoPE, ALiBi, sinusoidal, none) keep going past max_seq_len instead
(and sliding-window models keep a rolling cache): cropping applies to a learned table alone,
which has no rows beyond it.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from llmjax.models import init_cache
from llmjax.models.family import DecodingState
from llmjax.typing import Array, Bool, Float, Int


@flax.struct.dataclass
class CropState:
    """Each row's last L = max_seq_len tokens, right-aligned (the newest in the last slot), and
    the KV cache that serves the steps while the longest row fits (None once it cannot)."""

    tokens: Int[Array, "B L"]
    valid: Bool[Array, "B L"]
    longest: Int[Array, ""]  # tokens in the longest row so far
    cache: DecodingState | None

    def take(self, rows_R: Int[Array, " R"]) -> CropState:
        cache = None if self.cache is None else self.cache.take(rows_R)
        return self.replace(tokens=self.tokens[rows_R], valid=self.valid[rows_R], cache=cache)


def window_logits(
    model: nn.Module, variables: Any, tokens_BxL: Int[Array, "B L"], valid_BxL: Bool[Array, "B L"]
) -> Float[Array, "B V"]:
    """The logits after each row's window, as a forward pass over the window's real tokens
    alone computes them: positions count from 0 over the real tokens, and the empty slots on
    the left form a segment of their own."""
    B, L = tokens_BxL.shape
    positions_BxL = jnp.maximum(jnp.cumsum(valid_BxL, axis=1, dtype=jnp.int32) - 1, 0)
    segments_BxL = valid_BxL.astype(jnp.int32)
    last_Bx1 = jnp.full((B, 1), L - 1, jnp.int32)
    out = model.apply(variables, tokens_BxL, positions_BxL, segments_BxL, logits_at=last_Bx1)
    return out.logits[:, 0]


def last_window(
    tokens_BxT: Int[Array, "B T"], valid_BxT: Bool[Array, "B T"], length: int
) -> tuple[Int[Array, "B L"], Bool[Array, "B L"]]:
    """The last `length` slots of left-padded prompts (padded further on the left if short)."""
    T = tokens_BxT.shape[1]
    if length <= T:
        return tokens_BxT[:, T - length :], valid_BxT[:, T - length :]
    pad = ((0, 0), (length - T, 0))
    return jnp.pad(tokens_BxT, pad), jnp.pad(valid_BxT, pad)


def start_crop(
    model: nn.Module,
    variables: Any,
    tokens_BxT: Int[Array, "B T"],
    valid_BxT: Bool[Array, "B T"],
    cache_len: int,
    prefill_body: Any,
) -> tuple[Float[Array, "B V"], CropState]:
    """First logits and state for left-padded prompts (traceable; callers jit it). With
    `cache_len` > 0 the prompts, which fit the context, are prefilled into a cache of that
    many slots by `prefill_body` (llmjax.decode.steps'); with 0 (a prompt fills the context,
    or no cache is wanted) every step recomputes its window."""
    L = model.cfg.max_seq_len
    window_BxL, window_valid_BxL = last_window(tokens_BxT, valid_BxT, L)
    longest = jnp.max(valid_BxT.sum(axis=1)).astype(jnp.int32)
    if cache_len:
        cache = init_cache(model.cfg, tokens_BxT.shape[0], cache_len)
        first_BxV, cache = prefill_body(
            model, variables, tokens_BxT, valid_BxT, cache, tokens_BxT.shape[1]
        )
    else:
        first_BxV, cache = window_logits(model, variables, window_BxL, window_valid_BxL), None
    return first_BxV, CropState(window_BxL, window_valid_BxL, longest, cache)


@functools.cache
def crop_step(model: nn.Module):
    """tokens_to_logits over a CropState: a cached step while the longest row (with the new
    token) fits max_seq_len, else a forward pass over each row's last max_seq_len tokens."""

    def step(variables, token_B, s: CropState):
        L = s.tokens.shape[1]
        tokens_BxL = jnp.concatenate([s.tokens[:, 1:], token_B[:, None]], axis=1)
        valid_BxL = jnp.concatenate([s.valid[:, 1:], jnp.ones_like(s.valid[:, :1])], axis=1)
        longest = s.longest + 1

        def windowed(cache):
            return window_logits(model, variables, tokens_BxL, valid_BxL), cache

        def cached(cache):
            out = model.apply(variables, token_B[:, None], cache=cache)
            return out.logits[:, 0], out.cache

        if s.cache is None:
            logits_BxV, cache = windowed(None)
        else:
            logits_BxV, cache = jax.lax.cond(longest <= L, cached, windowed, s.cache)
        return logits_BxV, CropState(tokens_BxL, valid_BxL, longest, cache)

    return step
