"""`llmjax.generate`: text in, text out, from a trained run or a (model, params, tokenizer)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from llmjax.data import Tokenizer
from llmjax.decode.samplers import SamplingConfig
from llmjax.decode.steps import Buckets
from llmjax.decode.text import TextStream
from llmjax.decode.tokens import beam_search_tokens, generate_tokens

DEFAULT_BUCKETS = Buckets()


@dataclass
class Completion:
    """One generated continuation.

    `tokens` are the new ids, up to and including the token that ended the text (a stop id, or
    the one completing a stop string); `text` excludes stop ids and stop strings.
    """

    prompt: str | None
    text: str
    tokens: np.ndarray
    log_probs: np.ndarray  # log p_model of each token in `tokens` (temperature 1, unfiltered)
    finish_reason: str  # "stop" (stop id or stop string) or "length"
    entropy: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    score: float | None = None  # beam search: length-penalized log-probability

    def __str__(self) -> str:
        return self.text


def _resolve(
    model_or_run, params, tokenizer
) -> tuple[nn.Module, Any, Tokenizer | None, tuple[int, ...]]:
    """(model, variables, tokenizer, the run's EOS ids) from a LoadedRun, a run directory, or
    model + params."""
    from llmjax.runs import LoadedRun, load_run

    if isinstance(model_or_run, str | Path):
        model_or_run = load_run(model_or_run)
    if isinstance(model_or_run, LoadedRun):
        run = model_or_run
        variables = {"params": run.params, **run.model_state}
        return run.model, variables, tokenizer or run.tokenizer, run.eos_ids
    if not isinstance(model_or_run, nn.Module) or not hasattr(model_or_run, "cfg"):
        raise ValueError(
            f"generate takes a LoadedRun (llmjax.load_run), a run directory, or an llmjax "
            f"model with params=...; got {type(model_or_run).__name__}"
        )
    if params is None:
        raise ValueError("generate(model, ...) needs params=... (the model's parameters)")
    variables = params if "params" in params else {"params": params}
    return model_or_run, variables, tokenizer, ()


def _encode(prompts, tokenizer: Tokenizer | None) -> tuple[list[str | None], list[np.ndarray]]:
    texts, ids = [], []
    for p in prompts:
        if isinstance(p, str):
            if tokenizer is None:
                raise ValueError("text prompts need a tokenizer (tokenizer=...)")
            encoded = np.concatenate([tokenizer.prompt_prefix, tokenizer.encode(p)])
            if len(encoded) == 0:
                if tokenizer.bos_id is None:
                    raise ValueError(
                        "a prompt is empty and this tokenizer has no BOS token to start from; "
                        "give every prompt some text"
                    )
                encoded = np.asarray([tokenizer.bos_id], np.int32)
            texts.append(p)
            ids.append(encoded)
        else:
            texts.append(None)
            ids.append(np.asarray(p))
    return texts, ids


def generate(
    model_or_run: Any,
    prompts: str | Sequence[str] | Sequence[Sequence[int]],
    *,
    params: Any = None,
    tokenizer: Tokenizer | None = None,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    typical_p: float = 1.0,
    repetition_penalty: float = 1.0,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    no_repeat_ngram_size: int = 0,
    min_new_tokens: int = 0,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    stop: str | Sequence[str] = (),
    stop_token_ids: Sequence[int] = (),
    stop_at_eos: bool = True,
    seed: int = 0,
    key: jax.Array | None = None,
    use_cache: bool = True,
    padding: str = "left",
    stream: Callable[[int, str], None] | None = None,
    chunk_size: int = 16,
    buckets: Buckets | None = DEFAULT_BUCKETS,
) -> Completion | list[Completion]:
    """Continues one prompt (returns a Completion) or a batch of prompts (a list of them).

    `model_or_run`: a LoadedRun from llmjax.load_run, a run directory, or an llmjax model with
    `params` (a params tree or {"params": ..., **model_state}) and `tokenizer` (needed for text
    prompts and stop strings). Prompts are strings or token-id sequences; an empty string
    starts from the tokenizer's BOS token. Text prompts start with the ids the tokenizer's own
    post-processor adds (Llama's BOS: see Tokenizer.prompt_prefix), as transformers does.
    Sampling options are those of llmjax.decode.SamplingConfig (temperature 0 is greedy);
    num_beams > 1 runs beam search instead (deterministic: temperature is ignored, other
    sampling options are rejected). Rows stop at EOS (unless stop_at_eos=False: the run's
    EOS ids when it has them, e.g. a converted chat model's <|eot_id|>, as transformers'
    generate does, else the tokenizer's EOS), at any of `stop_token_ids`, or when their text
    contains one of the `stop` strings. `stream(row, text)` receives each row's text as it
    becomes final, every `chunk_size` tokens; it needs a tokenizer (for token ids as they are
    generated, use llmjax.decode.generate_tokens with on_chunk). Sampling rounds the batch,
    prompt and new-token shapes up to `buckets` (llmjax.decode.Buckets; None: exact shapes),
    so a session of varied requests compiles a few programs instead of one per new size; the
    output is the same.
    """
    model, variables, tokenizer, run_eos_ids = _resolve(model_or_run, params, tokenizer)
    single = isinstance(prompts, str) or (
        len(prompts) > 0 and not isinstance(prompts[0], str) and np.ndim(prompts[0]) == 0
    )
    batch = [prompts] if single else list(prompts)
    texts, ids = _encode(batch, tokenizer)
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    if stop and tokenizer is None:
        raise ValueError("stop strings need a tokenizer (tokenizer=...)")
    if stream is not None and tokenizer is None:
        raise ValueError(
            "stream=... receives text, and turning tokens into text needs a tokenizer: pass "
            "tokenizer=... (or a run); for the token ids as they are generated, call "
            "llmjax.decode.generate_tokens(..., on_chunk=fn), fn(start, ids_BxC, lengths_B)"
        )
    stop_ids = _checked_stop_ids(stop_token_ids, model.cfg.vocab_size)
    if stop_at_eos:
        tokenizer_eos = () if tokenizer is None or tokenizer.eos_id is None else (tokenizer.eos_id,)
        stop_ids += run_eos_ids or tokenizer_eos
    stop_ids = sorted(set(stop_ids))
    pad_id = 0 if tokenizer is None else tokenizer.fill_id
    sampling = SamplingConfig(
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        typical_p=typical_p,
        repetition_penalty=repetition_penalty,
        presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size,
        min_new_tokens=min_new_tokens,
    )
    if not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams={num_beams!r} is out of range; valid: an integer >= 1")
    if isinstance(length_penalty, bool) or not (
        isinstance(length_penalty, int | float) and math.isfinite(length_penalty)
    ):
        raise ValueError(
            f"length_penalty={length_penalty!r} is out of range; valid: a finite number "
            f"(1: score by the mean log-probability per token, 0: by the sum)"
        )
    common = dict(
        max_new_tokens=max_new_tokens,
        pad_id=pad_id,
        use_cache=use_cache,
        padding=padding,
    )
    if num_beams > 1:
        # Beam search ranks by the model's own log-probabilities: temperature does not apply.
        unsupported = [s for s in sampling.stages() if s != "temperature"]
        if unsupported or stop or stream is not None:
            raise ValueError(
                "beam search (num_beams > 1) is deterministic and supports neither sampling "
                "filters/penalties nor stop strings or streaming; drop those options or use "
                "num_beams=1"
            )
        out = beam_search_tokens(
            model,
            variables,
            ids,
            num_beams=num_beams,
            eos_ids=stop_ids,
            length_penalty=length_penalty,
            **common,
        )
        results = _beam_completions(out, texts, tokenizer, set(stop_ids))
    else:
        results = _sample(
            model,
            variables,
            ids,
            texts,
            tokenizer,
            sampling=sampling,
            stop=stop,
            stop_ids=stop_ids,
            key=jax.random.key(seed) if key is None else key,
            stream=stream,
            chunk_size=chunk_size,
            buckets=buckets,
            **common,
        )
    return results[0] if single else results


def _checked_stop_ids(ids: Sequence[int], vocab_size: int) -> list[int]:
    """The stop ids as ints, each checked to be a token the model can produce."""
    out = []
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int | np.integer):
            raise ValueError(f"stop token id {i!r} is not an integer token id")
        if not 0 <= i < vocab_size:
            raise ValueError(
                f"stop token id {i} is outside the vocabulary, which has ids 0..{vocab_size - 1}; "
                f"pass ids of this model's tokenizer (tokenizer.encode shows them)"
            )
        out.append(int(i))
    return out


def _decode_text(tokenizer, ids) -> str:
    return tokenizer.decode(ids) if tokenizer is not None else ""


def _sample(
    model, variables, ids, texts, tokenizer, *, stop, stop_ids, stream, chunk_size, **kwargs
) -> list[Completion]:
    B = len(ids)
    streams = None
    if tokenizer is not None and (stop or stream is not None):
        streams = [
            TextStream(tokenizer, stop, None if stream is None else (lambda t, b=b: stream(b, t)))
            for b in range(B)
        ]
    stop_set = set(stop_ids)
    collected = np.zeros((B, 0), np.int32)

    def live_ids(b, lengths_row):
        row = collected[b, :lengths_row]
        return row[:-1] if len(row) and int(row[-1]) in stop_set else row

    def on_chunk(start, new_BxC, lengths_B):
        nonlocal collected
        collected = np.concatenate([collected, new_BxC], axis=1)
        return np.asarray([streams[b].update(live_ids(b, lengths_B[b])) for b in range(B)])

    out = generate_tokens(
        model,
        variables,
        ids,
        stop_ids=stop_ids,
        on_chunk=on_chunk if streams is not None else None,
        chunk_size=chunk_size,
        **kwargs,
    )
    results = []
    for b in range(B):
        n = int(out.lengths[b])
        reason = "stop" if out.stopped[b] else "length"
        text_ids = out.tokens[b, :n]
        if out.stopped[b]:
            text_ids = text_ids[:-1]
        if streams is not None:
            s = streams[b]
            s.update(text_ids if s.kept_tokens is None else text_ids[: s.kept_tokens], final=True)
            if s.kept_tokens is not None:
                n, reason = s.kept_tokens, "stop"
            text = s.text
        else:
            text = _decode_text(tokenizer, text_ids)
        results.append(
            Completion(
                prompt=texts[b],
                text=text,
                tokens=out.tokens[b, :n],
                log_probs=out.log_probs[b, :n],
                finish_reason=reason,
                entropy=out.entropy[b, :n],
            )
        )
    return results


def _beam_completions(out, texts, tokenizer, stop_ids: set[int]) -> list[Completion]:
    """The best hypothesis of each row."""
    results = []
    for b in range(len(texts)):
        n = int(out.lengths[b, 0])
        tokens = out.tokens[b, 0, :n]
        ended = n > 0 and int(tokens[-1]) in stop_ids
        results.append(
            Completion(
                prompt=texts[b],
                text=_decode_text(tokenizer, tokens[:-1] if ended else tokens),
                tokens=tokens,
                log_probs=out.token_log_probs[b, 0, :n],
                finish_reason="stop" if ended else "length",
                score=float(out.scores[b, 0]),
            )
        )
    return results
