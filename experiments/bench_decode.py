"""Decoding speed: KV cache vs recomputing the whole sequence, and step time against position.

    python -m experiments.bench_decode [--quick] [--layout scan|loop]

Model: the nano shape (4 layers, 4 heads, d=128, byte vocabulary) with RoPE and a 1088-token
context, random weights. Prints one JSON object:
- tokens_per_s: batch {1, 8} x new tokens {256, 1024}, with the cache (the whole generate call,
  prefill included) and without (each step reruns the model over the fixed prompt + new-token
  buffer, so every step costs the same; it is timed over the first `naive_steps` steps).
- step_ms: one cached decode step at position 64 and at 1024 (batch 1, same cache size).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from llmjax.config import PRESETS
from llmjax.decode import loop, steps
from llmjax.decode.samplers import SamplingConfig
from llmjax.models import build_model, init_model

PROMPT = 16
CONTEXT = 1088
GREEDY = SamplingConfig(temperature=0)


def _model(layout: str):
    cfg = dataclasses.replace(
        PRESETS["nano"].model,
        vocab_size=259,
        position="rope",
        max_seq_len=CONTEXT,
        scan_layers=layout == "scan",
    )
    params, _ = init_model(cfg, jax.random.key(0))
    return build_model(cfg), {"params": params}


def _prompts(batch: int, length: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, length) for _ in range(batch)]


def _run_steps(model, variables, prompts, max_new: int, n_steps: int, use_cache: bool):
    """Prefill, then time `n_steps` decode steps (after a warm-up run); returns seconds."""
    plan = steps.plan_cache(model.cfg, max(map(len, prompts)), max_new, use_cache=use_cache)
    tokens, valid = steps.pad_prompts(prompts, length=plan.prompt_len)
    statics = dict(stages=GREEDY.stages(), greedy=True, stop_ids=(), pad_id=0, ngram=0)
    best = float("inf")
    for _ in range(2):  # the first run compiles
        fn, first, state = steps.start(model, variables, tokens, valid, plan, use_cache=use_cache)
        s = loop.init_state(first, state, key=jax.random.key(0), max_new_tokens=max_new,
                            stages=GREEDY.stages())  # fmt: skip
        jax.block_until_ready(s)
        t0 = time.perf_counter()
        s = loop.run_steps(
            variables, s, jnp.int32(n_steps), GREEDY.values(), tokens_to_logits=fn, **statics
        )
        jax.block_until_ready(s.tokens)
        best = min(best, time.perf_counter() - t0)
        assert int(s.step) == n_steps
    return best


def _generate_time(model, variables, prompts, max_new: int, repeats: int) -> float:
    """Wall time of a whole cached generate call (prefill + loop), best of `repeats`."""
    from llmjax.decode import generate_tokens

    kw = dict(max_new_tokens=max_new, key=jax.random.key(0), sampling=GREEDY)
    # Warm-up: the same programs, stopped after one step (the step limit is not compiled in).
    stop_all = lambda start, tokens, lengths: np.ones(len(prompts), bool)  # noqa: E731
    generate_tokens(model, variables, prompts, on_chunk=stop_all, chunk_size=1, **kw)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = generate_tokens(model, variables, prompts, **kw)
        best = min(best, time.perf_counter() - t0)
        assert out.steps == max_new
    return best


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 1 and 256 tokens only")
    parser.add_argument("--layout", choices=("scan", "loop"), default="scan")
    parser.add_argument("--naive-steps", type=int, default=16, help="steps timed without the cache")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs (the best counts)")
    args = parser.parse_args(argv)
    model, variables = _model(args.layout)
    batches, lengths = ((1,), (256,)) if args.quick else ((1, 8), (256, 1024))
    rows = []
    for batch in batches:
        for new in lengths:
            prompts = _prompts(batch, PROMPT)
            cached_s = _generate_time(model, variables, prompts, new, args.repeats)
            naive_n = min(args.naive_steps, new)
            naive_s = _run_steps(model, variables, prompts, new, naive_n, use_cache=False)
            cached = batch * new / cached_s
            naive = batch * naive_n / naive_s
            rows.append({
                "batch": batch, "new_tokens": new,
                "cache_tokens_per_s": round(cached, 1),
                "no_cache_tokens_per_s": round(naive, 2),
                "speedup": round(cached / naive, 1),
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    # Step time at two positions with the same cache size: prompt P, then CONTEXT - P slots.
    step_ms = {}
    for position in (64, 1024):
        prompts = _prompts(1, position)
        new = CONTEXT - position
        k = 32
        step_ms[str(position)] = round(
            1e3 * _run_steps(model, variables, prompts, new, k, use_cache=True) / k, 3
        )
    result = {
        "model": "nano shape (4L 4H d128), rope, context 1088, vocab 259",
        "layout": args.layout,
        "backend": jax.default_backend(),
        "prompt_tokens": PROMPT,
        "tokens_per_s": rows,
        "step_ms": step_ms,
        "step_ratio_1024_vs_64": round(step_ms["1024"] / step_ms["64"], 2),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
