"""An llmjax model as a `tokens_to_logits` function: with its decoding state (a KV cache, a
recurrent state: whatever the model's family keeps), or by recomputation.

Prompts of different lengths share one [B, T] array, padded on the left or the right; padding
never counts: positions are each row's own (0, 1, ... over its real tokens), padding slots are
invalid in the cache (or a separate segment without one), so a row's tokens and logits do not
depend on its neighbours.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from llmjax.decode.crop import crop_step, start_crop
from llmjax.models import family_of, init_cache
from llmjax.models.family import DecodingState
from llmjax.typing import Array, Bool, Float, Int

PAD_MULTIPLE = 8  # prompt arrays are padded to a multiple of this, to reuse compiled programs


def pad_prompts(
    prompts: list[np.ndarray], *, padding: str = "left", length: int | None = None, pad_id: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Stacks 1-D prompts into (tokens [B, T], valid [B, T]), padded on the given side."""
    if padding not in ("left", "right"):
        raise ValueError(f"padding must be 'left' or 'right', got {padding!r}")
    longest = max(len(p) for p in prompts)
    T = length or -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE
    tokens = np.full((len(prompts), T), pad_id, np.int32)
    valid = np.zeros((len(prompts), T), bool)
    for b, p in enumerate(prompts):
        span = slice(T - len(p), T) if padding == "left" else slice(0, len(p))
        tokens[b, span] = p
        valid[b, span] = True
    return tokens, valid


def prompt_positions(valid_BxT: Bool[Array, "B T"]) -> Int[Array, "B T"]:
    """0, 1, ... over each row's real tokens; -1 on padding."""
    count = jnp.cumsum(valid_BxT, axis=1, dtype=jnp.int32) - 1
    return jnp.where(valid_BxT, count, -1)


def last_valid_index(valid_BxT: Bool[Array, "B T"]) -> Int[Array, " B"]:
    T = valid_BxT.shape[1]
    return (T - 1 - jnp.argmax(valid_BxT[:, ::-1], axis=1)).astype(jnp.int32)


@dataclass(frozen=True)
class Buckets:
    """Rounds a generation call's shapes up so that varied requests share compiled programs.

    The batch becomes a power of two of at least `min_rows` rows (the extra rows hold one token,
    start finished and are dropped from the output); the prompt array and the new-token buffer
    become powers of two of at least `min_length` tokens (padding takes no positions and the
    loop still stops after max_new_tokens), so the tokens and log-probs are those of the exact
    shapes. The cost is the padding's compute: a padded row or prompt slot is computed like a
    real one in the prefill, while a decoding step, which reads every weight once whatever the
    batch, costs little more for 8 rows than for 1 on an accelerator.
    """

    min_rows: int = 8
    min_length: int = 64

    def __post_init__(self):
        for name in ("min_rows", "min_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Buckets.{name}={value!r} is out of range; valid: an int >= 1")

    @staticmethod
    def _power_of_two(n: int) -> int:
        return 1 << max(n - 1, 0).bit_length()

    def rows(self, n: int) -> int:
        return max(self.min_rows, self._power_of_two(n))

    def length(self, n: int) -> int:
        return -(-max(self.min_length, self._power_of_two(n)) // PAD_MULTIPLE) * PAD_MULTIPLE


@dataclass(frozen=True)
class CachePlan:
    """Sizes for one generation call."""

    prompt_len: int  # padded prompt length T
    cache_len: int  # slots S (crop: of the cache that serves while the longest row fits)
    rolling: bool  # keep only the last S tokens (sliding-window models)
    chunk: int  # prompt tokens per prefill call (T unless rolling)
    new_len: int = 0  # new-token buffer N >= max_new_tokens (0: max_new_tokens)
    # A learned-position model generating past its table: each step sees the last max_seq_len
    # tokens (llmjax.decode.crop); cache_len 0 when the longest prompt already fills them.
    crop: bool = False


def plan_cache(
    cfg,
    longest_prompt: int,
    max_new_tokens: int,
    *,
    use_cache: bool = True,
    pad_multiple: int = PAD_MULTIPLE,
    buckets: Buckets | None = None,
) -> CachePlan:
    """Checks the lengths against the model's context and sizes the cache.

    A sliding-window model whose positions extrapolate gets a rolling cache of window + chunk -
    1 slots when that is smaller than prompt + new tokens; it may then take prompts longer than
    max_seq_len (so may the no-cache mode, whose buffer holds everything). A model with a
    learned position table (positions that do not extrapolate) whose prompt + max_new_tokens
    exceed max_seq_len is cropped as nanoGPT's `generate` crops: each new token is predicted
    from the last max_seq_len tokens (`crop`). Any other model's prompt must fit the context.
    The padded prompt length is a multiple of `pad_multiple` (a multiple of PAD_MULTIPLE):
    callers with many batches of varied lengths pass a larger one to compile fewer programs;
    `buckets` rounds it and the new-token buffer up to its lengths instead. Padding takes no
    positions, so the checks are on the real longest prompt.
    """
    limits = family_of(cfg).decoding_limits(cfg)
    window, extrapolates = limits.window, limits.extrapolates
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if pad_multiple < 1 or pad_multiple % PAD_MULTIPLE:
        raise ValueError(
            f"pad_multiple={pad_multiple} must be a positive multiple of {PAD_MULTIPLE}"
        )
    if buckets is None:
        T = -(-longest_prompt // pad_multiple) * pad_multiple
        N = max_new_tokens
    else:
        T, N = buckets.length(longest_prompt), buckets.length(max_new_tokens)
    if window is not None and extrapolates:
        chunk = min(T, -(-window // PAD_MULTIPLE) * PAD_MULTIPLE)
        rolling_len = window + chunk - 1
        T_rolling = -(-longest_prompt // chunk) * chunk
        if rolling_len < T_rolling + max_new_tokens:
            if not use_cache:
                return CachePlan(T, T + N, False, T, N)
            return CachePlan(T_rolling, rolling_len, True, chunk, N)
    context = cfg.max_seq_len
    if not extrapolates and longest_prompt + max_new_tokens > context:
        # Slots for the prompt and every step until the longest row fills the context.
        fits = use_cache and longest_prompt <= context
        return CachePlan(T, T + context if fits else 0, False, T, N, crop=True)
    if longest_prompt > context:
        raise ValueError(
            f"a prompt of {longest_prompt} tokens is longer than the model's context "
            f"(max_seq_len={context}); shorten the prompt to at most {context} tokens"
        )
    return CachePlan(T, T + N, False, T, N)


# ----------------------------------------------------------------------------- with a KV cache


def prefill_body(
    model: nn.Module,
    variables: Any,
    tokens_BxT: Int[Array, "B T"],
    valid_BxT: Bool[Array, "B T"],
    cache: DecodingState,
    chunk: int,
) -> tuple[Float[Array, "B V"], DecodingState]:
    """Writes the prompts into the cache (in chunks of `chunk` tokens, a multiple of T) and
    returns each row's logits after its last real token."""
    B, T = tokens_BxT.shape
    positions_BxT = prompt_positions(valid_BxT)
    last_B = last_valid_index(valid_BxT)
    rows_B = jnp.arange(B)
    if chunk == T:
        out = model.apply(variables, tokens_BxT, positions_BxT, cache=cache)
        return out.logits[rows_B, last_B], out.cache

    def one_chunk(carry, xs):
        cache, first_BxV = carry
        c, tokens_BxC, positions_BxC = xs
        out = model.apply(variables, tokens_BxC, positions_BxC, cache=cache)
        here_B = last_B // chunk == c
        first_BxV = jnp.where(here_B[:, None], out.logits[rows_B, last_B % chunk], first_BxV)
        return (out.cache, first_BxV), None

    n = T // chunk
    split = lambda x: jnp.moveaxis(x.reshape(B, n, chunk), 1, 0)  # noqa: E731
    V = model.cfg.padded_vocab_size
    first = jnp.zeros((B, V), jnp.float32)
    (cache, first), _ = jax.lax.scan(
        one_chunk, (cache, first), (jnp.arange(n), split(tokens_BxT), split(positions_BxT))
    )
    return first, cache


prefill = jax.jit(prefill_body, static_argnames=("model", "chunk"), donate_argnames=("cache",))


@functools.cache
def cached_step(model: nn.Module):
    """tokens_to_logits over the model's decoding state (one function object per model, so jit
    caches hit)."""

    def step(variables, token_B, cache: DecodingState):
        out = model.apply(variables, token_B[:, None], cache=cache)
        return out.logits[:, 0], out.cache

    return step


# ----------------------------------------------------------------------------- recomputation


@flax.struct.dataclass
class TokenBuffer:
    """The whole sequence so far in a fixed [B, S] buffer: the no-cache baseline's state."""

    tokens: Int[Array, "B S"]
    valid: Bool[Array, "B S"]
    index: Int[Array, ""]  # next slot to write

    def take(self, rows_R: Int[Array, " R"]) -> TokenBuffer:
        return self.replace(tokens=self.tokens[rows_R], valid=self.valid[rows_R])


def _full_logits(model, variables, buffer: TokenBuffer) -> Float[Array, "B S V"]:
    # Padding and unwritten slots form their own segment (0), invisible to real tokens (1).
    positions_BxS = jnp.maximum(prompt_positions(buffer.valid), 0)
    segments_BxS = buffer.valid.astype(jnp.int32)
    return model.apply(variables, buffer.tokens, positions_BxS, segments_BxS).logits


@functools.partial(jax.jit, static_argnames=("model", "length"))
def prefill_no_cache(
    model: nn.Module,
    variables: Any,
    tokens_BxT: Int[Array, "B T"],
    valid_BxT: Bool[Array, "B T"],
    length: int,
) -> tuple[Float[Array, "B V"], TokenBuffer]:
    """The prompts in a buffer of `length` slots, and the logits after each last real token."""
    B, T = tokens_BxT.shape
    pad = ((0, 0), (0, length - T))
    buffer = TokenBuffer(jnp.pad(tokens_BxT, pad), jnp.pad(valid_BxT, pad), jnp.asarray(T))
    logits_BxSxV = _full_logits(model, variables, buffer)
    return logits_BxSxV[jnp.arange(B), last_valid_index(valid_BxT)], buffer


@functools.cache
def recompute_step(model: nn.Module):
    """tokens_to_logits that reruns the model over the whole buffer every step."""

    def step(variables, token_B, buffer: TokenBuffer):
        at = (0, buffer.index)
        buffer = TokenBuffer(
            jax.lax.dynamic_update_slice(buffer.tokens, token_B[:, None], at),
            jax.lax.dynamic_update_slice(buffer.valid, jnp.ones_like(buffer.valid[:, :1]), at),
            buffer.index + 1,
        )
        logits_BxSxV = _full_logits(model, variables, buffer)
        return jax.lax.dynamic_index_in_dim(logits_BxSxV, buffer.index - 1, 1, False), buffer

    return step


def step_function(model: nn.Module, plan: CachePlan, *, use_cache: bool = True):
    """The tokens_to_logits that continues what `begin` starts under this plan."""
    if plan.crop:
        return crop_step(model)
    return cached_step(model) if use_cache else recompute_step(model)


def begin(
    model: nn.Module,
    variables: Any,
    tokens_BxT: Int[Array, "B T"],
    valid_BxT: Bool[Array, "B T"],
    plan: CachePlan,
    *,
    use_cache: bool = True,
) -> tuple[Float[Array, "B V"], Any]:
    """(first logits, model state) for prompts already padded to the plan (left-padded when
    the plan crops or rolls); traceable, so a caller can compile it with what follows."""
    if plan.crop:
        return start_crop(model, variables, tokens_BxT, valid_BxT, plan.cache_len, prefill_body)
    if use_cache:
        cache = init_cache(model.cfg, tokens_BxT.shape[0], plan.cache_len, rolling=plan.rolling)
        return prefill_body(model, variables, tokens_BxT, valid_BxT, cache, plan.chunk)
    return prefill_no_cache(model, variables, tokens_BxT, valid_BxT, plan.cache_len)


def start(
    model: nn.Module,
    variables: Any,
    tokens_BxT: np.ndarray,
    valid_BxT: np.ndarray,
    plan: CachePlan,
    *,
    use_cache: bool = True,
):
    """(tokens_to_logits, first logits, model state) for prompts already padded to the plan."""
    first, state = _begin_jit(model, variables, tokens_BxT, valid_BxT, plan, use_cache)
    return step_function(model, plan, use_cache=use_cache), first, state


_begin_jit = jax.jit(
    lambda model, variables, tokens, valid, plan, use_cache: begin(
        model, variables, tokens, valid, plan, use_cache=use_cache
    ),
    static_argnums=(0, 4, 5),
)
