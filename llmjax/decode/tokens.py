"""Batched generation on token ids for an llmjax model: sampling or beam search."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llmjax.decode import steps
from llmjax.decode.beam import BeamOutput, beam_search
from llmjax.decode.loop import DecodeOutput, DecodeState, OnChunk, decode, init_state, run_decode
from llmjax.decode.samplers import SamplingConfig


def check_prompts(prompts: Sequence[Sequence[int]], vocab_size: int) -> list[np.ndarray]:
    """1-D int32 arrays of ids in [0, vocab_size); an empty prompt is an error."""
    if isinstance(prompts, np.ndarray) and prompts.ndim == 1:
        raise ValueError("prompts must be a list of token-id sequences (one per row), got 1-D ids")
    out = []
    if len(prompts) == 0:
        raise ValueError("no prompts given; pass at least one token-id sequence")
    for i, p in enumerate(prompts):
        ids = np.asarray(p)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError(
                f"prompt {i} is empty (or not 1-D); every prompt needs at least one token, "
                f"e.g. the tokenizer's BOS id"
            )
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"prompt {i} must hold integer token ids, got dtype {ids.dtype}")
        if ids.min() < 0 or ids.max() >= vocab_size:
            bad = int(ids[(ids < 0) | (ids >= vocab_size)][0])
            raise ValueError(f"prompt {i} has token id {bad}; valid ids: 0..{vocab_size - 1}")
        out.append(ids.astype(np.int32))
    return out


def _plan(model, prompts, max_new_tokens, use_cache, padding, pad_multiple, buckets=None):
    """(plan, tokens [R, T], valid [R, T], prompt count B) for checked prompts, with R - B
    one-token rows added to fill the buckets' batch size."""
    cfg = model.cfg
    prompts = check_prompts(prompts, cfg.vocab_size)
    B = len(prompts)
    longest = max(len(p) for p in prompts)
    plan = steps.plan_cache(
        cfg,
        longest,
        max_new_tokens,
        use_cache=use_cache,
        pad_multiple=pad_multiple,
        buckets=buckets,
    )
    if plan.rolling or plan.crop:
        # Right padding would evict real tokens from a rolling cache; a cropped window is
        # the last max_seq_len slots. The tokens are the same either way.
        padding = "left"
    rows = B if buckets is None else buckets.rows(B)
    prompts = prompts + [np.zeros(1, np.int32)] * (rows - B)
    tokens_BxT, valid_BxT = steps.pad_prompts(prompts, padding=padding, length=plan.prompt_len)
    return plan, tokens_BxT, valid_BxT, B


def _start(model, variables, prompts, max_new_tokens, use_cache, padding, pad_multiple):
    plan, tokens_BxT, valid_BxT, _ = _plan(
        model, prompts, max_new_tokens, use_cache, padding, pad_multiple
    )
    fn, first_BxV, state = steps.start(
        model, variables, tokens_BxT, valid_BxT, plan, use_cache=use_cache
    )
    return fn, first_BxV, state, tokens_BxT, valid_BxT


@functools.partial(
    jax.jit, static_argnames=("model", "plan", "use_cache", "stages", "pad_id", "with_prompt")
)
def _begin_decoding(
    model: nn.Module,
    variables: Any,
    tokens_BxT: jax.Array,
    valid_BxT: jax.Array,
    key: jax.Array,
    done_B: jax.Array,
    *,
    plan: steps.CachePlan,
    use_cache: bool,
    stages: tuple[str, ...],
    pad_id: int,
    with_prompt: bool,
) -> DecodeState:
    """The prefill and the loop's starting state in one compiled program (one per bucket)."""
    first_BxV, model_state = steps.begin(
        model, variables, tokens_BxT, valid_BxT, plan, use_cache=use_cache
    )
    R = tokens_BxT.shape[0]
    if key.ndim == 1 and key.shape[0] < R:  # per-row keys: the padding rows reuse the first
        key = jnp.concatenate([key, jnp.broadcast_to(key[:1], (R - key.shape[0],))])
    return init_state(
        first_BxV,
        model_state,
        key=key,
        max_new_tokens=plan.new_len,
        stages=stages,
        prompt_BxP=tokens_BxT if with_prompt else None,
        prompt_valid_BxP=valid_BxT if with_prompt else None,
        pad_id=pad_id,
        done_B=done_B,
    )


def generate_tokens(
    model: nn.Module,
    variables: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    key: jax.Array,
    sampling: SamplingConfig | None = None,
    stop_ids: Sequence[int] = (),
    pad_id: int = 0,
    use_cache: bool = True,
    padding: str = "left",
    on_chunk: OnChunk | None = None,
    chunk_size: int | None = None,
    pad_multiple: int = steps.PAD_MULTIPLE,
    buckets: steps.Buckets | None = None,
) -> DecodeOutput:
    """Continues each prompt (a sequence of ids; lengths may differ) by up to max_new_tokens.

    `variables` are the model's {"params": ..., **model_state}. `key` is one PRNG key (row b
    uses fold_in(key, b)) or one key per row. `use_cache=False` recomputes the whole sequence
    every step (the baseline the cache is measured against). Rows stop at any of `stop_ids`.
    The prompts are padded to a multiple of `pad_multiple` tokens: one compiled program
    serves every batch whose longest prompt rounds up to the same length. `buckets` rounds
    the batch, prompt and new-token shapes up further (steps.Buckets), so that calls of
    varied sizes share two compiled programs per bucket, with the same output. A model with
    a learned position table generates past its context by cropping (llmjax.decode.crop).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    plan, tokens_BxT, valid_BxT, B = _plan(
        model, prompts, max_new_tokens, use_cache, padding, pad_multiple, buckets
    )
    if key.ndim == 1 and key.shape[0] != B:
        raise ValueError(f"got {key.shape[0]} keys for a batch of {B} rows; pass one per prompt")
    sampling = SamplingConfig() if sampling is None else sampling
    stages = sampling.stages()
    # NumPy inputs go to the device as they are (jnp.asarray would compile a copy per shape).
    state = _begin_decoding(
        model,
        variables,
        tokens_BxT,
        valid_BxT,
        key,
        np.arange(len(tokens_BxT)) >= B,
        plan=plan,
        use_cache=use_cache,
        stages=stages,
        pad_id=int(pad_id),
        with_prompt=bool({"repetition", "no_repeat_ngram"} & set(stages)),
    )
    return run_decode(
        steps.step_function(model, plan, use_cache=use_cache),
        variables,
        state,
        max_new_tokens=max_new_tokens,
        sampling=sampling,
        stop_ids=stop_ids,
        pad_id=pad_id,
        on_chunk=on_chunk,
        chunk_size=chunk_size,
        rows=B,
    )


def decode_prompts(
    tokens_to_logits,
    variables: Any,
    model_state: Any,
    first_BxV: jax.Array,
    tokens_BxT: jax.Array,
    valid_BxT: jax.Array,
    *,
    sampling: SamplingConfig | None = None,
    **kwargs: Any,
) -> DecodeOutput:
    """loop.decode after a prefill of the padded prompts, handing the prompts to the sampling
    stages that read them (repetition penalty, n-gram bans)."""
    sampling = SamplingConfig() if sampling is None else sampling
    needs_prompt = {"repetition", "no_repeat_ngram"} & set(sampling.stages())
    return decode(
        tokens_to_logits,
        variables,
        model_state,
        first_BxV,
        sampling=sampling,
        prompt_BxP=tokens_BxT if needs_prompt else None,
        prompt_valid_BxP=valid_BxT if needs_prompt else None,
        **kwargs,
    )


def beam_search_tokens(
    model: nn.Module,
    variables: Any,
    prompts: Sequence[Sequence[int]],
    *,
    num_beams: int,
    max_new_tokens: int,
    eos_ids: Sequence[int] = (),
    length_penalty: float = 1.0,
    pad_id: int = 0,
    use_cache: bool = True,
    padding: str = "left",
) -> BeamOutput:
    """Beam search from each prompt; returns num_beams hypotheses per prompt, best first."""
    if not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams={num_beams!r} is out of range; valid: an integer >= 1")
    fn, first_BxV, state, _, _ = _start(
        model, variables, prompts, max_new_tokens, use_cache, padding, steps.PAD_MULTIPLE
    )
    return beam_search(
        fn,
        variables,
        state,
        first_BxV,
        num_beams=num_beams,
        max_new_tokens=max_new_tokens,
        eos_ids=eos_ids,
        length_penalty=length_penalty,
        pad_id=pad_id,
    )
