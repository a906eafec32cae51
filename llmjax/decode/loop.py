"""The on-device sampling loop over any `tokens_to_logits` model.

    tokens_to_logits(params, token_B, state) -> (next_logits_BxV, state)

feeds one new token per row and returns the logits for the token after it; `state` is whatever
the model carries (a KV cache, a token buffer, nothing). The loop is a `lax.while_loop` that
stops early once every row has produced a stop token; it runs in chunks of steps so a host
callback can stream tokens and stop rows (stop strings) between chunks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from llmjax.decode import samplers
from llmjax.decode.samplers import SamplingConfig
from llmjax.typing import Array, Bool, Float, Int, PyTree

TokensToLogits = Callable[[Any, Int[Array, " B"], PyTree], tuple[Float[Array, "B V"], PyTree]]
# on_chunk(start, tokens_BxC, lengths_B) -> rows to stop now (bool [B]) or None; called between
# chunks with the chunk's tokens and each row's generated length so far.
OnChunk = Callable[[int, np.ndarray, np.ndarray], np.ndarray | None]


@flax.struct.dataclass
class DecodeState:
    """Everything the loop carries; rows finish independently, the step counter is shared."""

    step: Int[Array, ""]
    logits: Float[Array, "B V"]  # next-token logits
    model_state: PyTree
    row_keys: jax.Array  # one PRNG key per row
    tokens: Int[Array, "B N"]
    log_probs: Float[Array, "B N"]  # log p_model(token), temperature 1, unfiltered
    entropy: Float[Array, "B N"]  # entropy of the model's distribution
    sample_entropy: Float[Array, "B N"]  # entropy of the distribution sampled from (greedy: 0)
    done: Bool[Array, " B"]
    lengths: Int[Array, " B"]  # tokens generated per row, its stop token included
    stopped: Bool[Array, " B"]  # the row ended with a stop token
    seen: Bool[Array, "B V"] | None = None  # prompt + generated (repetition penalty)
    counts: Int[Array, "B V"] | None = None  # generated (presence/frequency penalties)
    history: Int[Array, "B S"] | None = None  # prompt + generated, left-aligned (n-grams)
    history_len: Int[Array, " B"] | None = None


@dataclass
class DecodeOutput:
    """Generated tokens per row (pad_id after a row's end) and per-token statistics."""

    tokens: np.ndarray  # int32 [B, N]
    log_probs: np.ndarray  # float32 [B, N]
    entropy: np.ndarray  # float32 [B, N]
    sample_entropy: np.ndarray  # float32 [B, N]
    lengths: np.ndarray  # int32 [B]
    stopped: np.ndarray  # bool [B]: ended by a stop token (else by length or the host)
    steps: int  # loop iterations run (< N when every row stopped early)
    model_state: Any = None  # what tokens_to_logits carried, after the last step (on device)


def row_keys(key: jax.Array, batch: int) -> jax.Array:
    """One key per row: `key` folded with the row index, or a [B] array of keys as given."""
    if key.ndim == 1:
        if key.shape[0] != batch:
            raise ValueError(f"got {key.shape[0]} keys for a batch of {batch} rows")
        return jnp.copy(key)  # the loop donates its state; the caller keeps its keys
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch))


def init_state(
    first_logits_BxV: Float[Array, "B V"],
    model_state: PyTree,
    *,
    key: jax.Array,
    max_new_tokens: int,
    stages: tuple[str, ...],
    prompt_BxP: Int[Array, "B P"] | None = None,
    prompt_valid_BxP: Bool[Array, "B P"] | None = None,
    pad_id: int = 0,
    done_B: Bool[Array, " B"] | None = None,
) -> DecodeState:
    """The loop's starting state for the active sampling stages (SamplingConfig.stages); the
    prompt is only needed by penalties and n-gram bans. `done_B` marks rows that start
    finished (rows that only pad a batch to a bucket size)."""
    B, V = first_logits_BxV.shape
    N = max_new_tokens
    if prompt_BxP is None:
        prompt_BxP = jnp.zeros((B, 0), jnp.int32)
    if prompt_valid_BxP is None:
        prompt_valid_BxP = jnp.ones(prompt_BxP.shape, bool)
    zeros = lambda: jnp.zeros((B, N), jnp.float32)  # noqa: E731  (distinct buffers: donated)
    state = DecodeState(
        step=jnp.zeros((), jnp.int32),
        logits=jnp.array(first_logits_BxV, jnp.float32, copy=True),  # the caller keeps its own
        model_state=model_state,
        row_keys=row_keys(key, B),
        tokens=jnp.full((B, N), pad_id, jnp.int32),  # steps never run stay pad_id
        log_probs=zeros(),
        entropy=zeros(),
        sample_entropy=zeros(),
        done=jnp.zeros((B,), bool) if done_B is None else jnp.asarray(done_B, bool),
        lengths=jnp.zeros((B,), jnp.int32),
        stopped=jnp.zeros((B,), bool),
    )
    rows_BxP = jnp.broadcast_to(jnp.arange(B)[:, None], prompt_BxP.shape)
    if "repetition" in stages:
        seen = jnp.zeros((B, V), bool).at[rows_BxP, prompt_BxP].max(prompt_valid_BxP)
        state = state.replace(seen=seen)
    if "presence_frequency" in stages:
        state = state.replace(counts=jnp.zeros((B, V), jnp.int32))
    if "no_repeat_ngram" in stages:
        # Left-align each row's valid prompt tokens (stable sort puts valid ones first).
        order_BxP = jnp.argsort(~prompt_valid_BxP, axis=1, stable=True)
        packed_BxP = jnp.take_along_axis(prompt_BxP, order_BxP, axis=1)
        history = jnp.concatenate([packed_BxP, jnp.zeros((B, N), jnp.int32)], axis=1)
        state = state.replace(
            history=history, history_len=prompt_valid_BxP.sum(1).astype(jnp.int32)
        )
    return state


def _step(
    tokens_to_logits: TokensToLogits,
    params: Any,
    s: DecodeState,
    values: dict[str, jax.Array],
    *,
    stages: tuple[str, ...],
    greedy: bool,
    stop_ids: tuple[int, ...],
    pad_id: int,
    ngram: int,
) -> DecodeState:
    B, V = s.logits.shape
    banned_BxV = None
    if "no_repeat_ngram" in stages:
        banned_BxV = samplers.no_repeat_ngram_banned(s.history, s.history_len, ngram, V)
    if "min_new_tokens" in stages and stop_ids:
        early = s.step < values["min_new_tokens"]
        stop_V = jnp.zeros((V,), bool).at[jnp.asarray(stop_ids)].set(True)
        stop_BxV = jnp.broadcast_to(stop_V & early, (B, V))
        banned_BxV = stop_BxV if banned_BxV is None else banned_BxV | stop_BxV
    processed_BxV = samplers.process_logits(
        s.logits, stages, values, seen_BxV=s.seen, counts_BxV=s.counts, banned_BxV=banned_BxV
    )
    if greedy:
        token_B = samplers.greedy(processed_BxV)
        sample_entropy_B = jnp.zeros((B,), jnp.float32)
    else:
        keys_B = jax.vmap(jax.random.fold_in, in_axes=(0, None))(s.row_keys, s.step)
        token_B = samplers.sample(keys_B, processed_BxV)
        sample_entropy_B = samplers.entropy(processed_BxV)
    live_B = ~s.done
    token_B = jnp.where(live_B, token_B, pad_id)
    log_probs_BxV = jax.nn.log_softmax(s.logits, axis=-1)
    log_prob_B = jnp.take_along_axis(log_probs_BxV, token_B[:, None], axis=1)[:, 0]
    is_stop_B = live_B & jnp.isin(token_B, jnp.asarray(stop_ids, jnp.int32)) if stop_ids else False

    def put(buffer_BxN, value_B):
        # Rows already done get pad_id tokens and zero statistics.
        if value_B.dtype != token_B.dtype:
            value_B = jnp.where(live_B, value_B, 0.0)
        return jax.lax.dynamic_update_slice(buffer_BxN, value_B[:, None], (0, s.step))

    rows_B = jnp.arange(B)
    updates = {}
    if s.seen is not None:
        updates["seen"] = s.seen.at[rows_B, token_B].max(live_B)
    if s.counts is not None:
        updates["counts"] = s.counts.at[rows_B, token_B].add(live_B.astype(jnp.int32))
    if s.history is not None:
        updates["history"] = s.history.at[rows_B, s.history_len].set(
            jnp.where(live_B, token_B, s.history[rows_B, s.history_len])
        )
        updates["history_len"] = s.history_len + live_B
    next_logits_BxV, model_state = tokens_to_logits(params, token_B, s.model_state)
    return s.replace(
        step=s.step + 1,
        logits=next_logits_BxV.astype(jnp.float32),
        model_state=model_state,
        tokens=put(s.tokens, token_B),
        log_probs=put(s.log_probs, log_prob_B),
        entropy=put(s.entropy, samplers.entropy(s.logits)),
        sample_entropy=put(s.sample_entropy, sample_entropy_B),
        done=s.done | is_stop_B,
        lengths=s.lengths + live_B,
        stopped=s.stopped | is_stop_B,
        **updates,
    )


@functools.partial(
    jax.jit,
    static_argnames=("tokens_to_logits", "stages", "greedy", "stop_ids", "pad_id", "ngram"),
    donate_argnames=("state",),
)
def run_steps(
    params: Any,
    state: DecodeState,
    limit: Int[Array, ""],
    values: dict[str, jax.Array],
    *,
    tokens_to_logits: TokensToLogits,
    stages: tuple[str, ...],
    greedy: bool,
    stop_ids: tuple[int, ...],
    pad_id: int,
    ngram: int,
) -> DecodeState:
    """Steps until `limit` tokens are generated or every row is done (one compiled program per
    model function and set of active stages; `limit` and the sampling values are traced)."""
    body = functools.partial(
        _step,
        tokens_to_logits,
        params,
        values=values,
        stages=stages,
        greedy=greedy,
        stop_ids=stop_ids,
        pad_id=pad_id,
        ngram=ngram,
    )
    return jax.lax.while_loop(
        lambda s: (s.step < limit) & ~jnp.all(s.done), lambda s: body(s), state
    )


def decode(
    tokens_to_logits: TokensToLogits,
    params: Any,
    model_state: PyTree,
    first_logits_BxV: Float[Array, "B V"],
    *,
    max_new_tokens: int,
    key: jax.Array,
    sampling: SamplingConfig | None = None,
    stop_ids: tuple[int, ...] | list[int] = (),
    pad_id: int = 0,
    prompt_BxP: Int[Array, "B P"] | None = None,
    prompt_valid_BxP: Bool[Array, "B P"] | None = None,
    on_chunk: OnChunk | None = None,
    chunk_size: int | None = None,
) -> DecodeOutput:
    """Generates up to `max_new_tokens` per row from `first_logits_BxV` on.

    `tokens_to_logits` must be the same function object across calls to reuse the compiled
    loop. With `on_chunk`, the loop pauses every `chunk_size` steps (default 16) and calls it
    with the chunk's tokens; the rows it returns True for stop at once. `model_state` is
    consumed (its buffers are donated to the loop).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    sampling = SamplingConfig() if sampling is None else sampling
    state = init_state(
        first_logits_BxV,
        model_state,
        key=key,
        max_new_tokens=max_new_tokens,
        stages=sampling.stages(),
        prompt_BxP=prompt_BxP,
        prompt_valid_BxP=prompt_valid_BxP,
        pad_id=pad_id,
    )
    return run_decode(
        tokens_to_logits,
        params,
        state,
        max_new_tokens=max_new_tokens,
        sampling=sampling,
        stop_ids=stop_ids,
        pad_id=pad_id,
        on_chunk=on_chunk,
        chunk_size=chunk_size,
    )


def run_decode(
    tokens_to_logits: TokensToLogits,
    params: Any,
    state: DecodeState,
    *,
    max_new_tokens: int,
    sampling: SamplingConfig,
    stop_ids: tuple[int, ...] | list[int] = (),
    pad_id: int = 0,
    on_chunk: OnChunk | None = None,
    chunk_size: int | None = None,
    rows: int | None = None,
) -> DecodeOutput:
    """`decode` from a state `init_state` made, whose buffers may be longer than
    max_new_tokens and whose batch may have extra rows (shapes rounded up to reuse compiled
    programs): the loop stops after max_new_tokens and the output holds the first `rows` rows
    (default: all) and max_new_tokens columns; `on_chunk` sees those rows only."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if state.tokens.shape[1] < max_new_tokens:
        raise ValueError(
            f"the state holds {state.tokens.shape[1]} tokens per row, fewer than "
            f"max_new_tokens={max_new_tokens}"
        )
    rows = state.tokens.shape[0] if rows is None else rows
    stop_ids = tuple(int(t) for t in stop_ids)
    statics = dict(
        tokens_to_logits=tokens_to_logits,
        stages=sampling.stages(),
        greedy=sampling.greedy,
        stop_ids=stop_ids,
        pad_id=int(pad_id),
        ngram=sampling.no_repeat_ngram_size,
    )
    values = sampling.values()
    chunk = max_new_tokens if on_chunk is None else (chunk_size or 16)
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    done_steps = 0
    while True:
        limit = min(done_steps + chunk, max_new_tokens)
        state = run_steps(params, state, np.int32(limit), values, **statics)
        # Host copies, sliced in NumPy: an eager slice or reduction would compile a program
        # for every new shape.
        step, done_B = jax.device_get((state.step, state.done))
        step = int(step)
        if on_chunk is not None and step > done_steps:
            tokens_BxN, lengths_B = jax.device_get((state.tokens, state.lengths))
            new_BxC = np.asarray(tokens_BxN)[:rows, done_steps:step]
            stop_rows = on_chunk(done_steps, new_BxC, np.asarray(lengths_B)[:rows])
            if stop_rows is not None and np.any(stop_rows):
                done_B = np.asarray(done_B).copy()
                done_B[:rows] |= np.asarray(stop_rows, bool)
                state = state.replace(done=jax.device_put(done_B))
        finished = step >= max_new_tokens or step < limit or bool(np.all(done_B))
        done_steps = step
        if finished:
            break
    host = jax.device_get(
        (
            state.tokens,
            state.log_probs,
            state.entropy,
            state.sample_entropy,
            state.lengths,
            state.stopped,
        )
    )
    per_token = [np.asarray(x)[:rows, :max_new_tokens] for x in host[:4]]
    per_row = [np.asarray(x)[:rows] for x in host[4:]]
    return DecodeOutput(*per_token, *per_row, steps=done_steps, model_state=state.model_state)
