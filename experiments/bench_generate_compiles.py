"""Compiles in a notebook-like session of varied `generate` calls: shape buckets vs exact shapes.

    python -m experiments.bench_generate_compiles [--quick] [--calls N]

Model: the test-tiny shape (2 layers, d=32, context 256) with RoPE and a byte vocabulary,
random weights. The session: `calls` llmjax.generate calls (20; --quick: 5) on text prompts,
with batch sizes 1-8, prompts of 3-60 bytes, max_new_tokens 1-100 and temperatures 0.5-0.95
(top-k 40), drawn once from a fixed seed. (Sampling values are traced, but switching a stage on
or off is a program of its own: temperature 1, top-k 0 or greedy decoding would add some.)
Each mode runs the same session in a fresh process (nothing compiled before, no persistent
compilation cache):
- "bucketed": generate's default llmjax.decode.Buckets() (batch to a power of two >= 8,
  prompt and new-token buffers to powers of two >= 64);
- "exact": buckets=None, every call at its own shapes;
- "bucketed_warm_cache": the bucketed session in a second process that shares a persistent
  compilation cache with a first one (`llmjax.enable_compilation_cache`, every program
  cached), as separate `llmjax sample` invocations or notebook kernels would.
Per mode: XLA compilations (jax.monitoring's backend-compile events, the tiny one-off ones
included), decode programs (entries in the jit caches of the prefill-and-start program and
of the decoding loop), persistent-cache hits, the session's wall time and that of the same
session run again with every program compiled (what the padding costs), and a hash of every
generated token (the same in every mode: bucketing does not change the output). Prints JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

MODES = ("bucketed", "exact", "bucketed_warm_cache")
WORDS = "the quick brown fox jumps over a lazy dog while seven tired cats sleep"


def session_requests(calls: int, seed: int = 0) -> list[dict]:
    """The session: per call its prompts (bytes as text), max_new_tokens and temperature."""
    rng = np.random.default_rng(seed)
    words = WORDS.split()
    requests = []
    for _ in range(calls):
        batch = int(rng.integers(1, 9))
        prompts = []
        for _ in range(batch):
            length = int(rng.integers(3, 61))
            text = " ".join(rng.choice(words, length))[:length]
            prompts.append(text)
        requests.append({
            "prompts": prompts,
            "max_new_tokens": int(rng.integers(1, 101)),
            "temperature": round(float(rng.uniform(0.5, 0.95)), 2),
        })  # fmt: skip
    return requests


def run_session(mode: str, calls: int, cache_dir: str | None = None) -> dict:
    """Runs the session in this process (which should be fresh) and counts its compiles."""
    import dataclasses

    import jax

    from llmjax.config import PRESETS
    from llmjax.data import ByteTokenizer
    from llmjax.decode import Buckets, generate, tokens
    from llmjax.decode.loop import run_steps
    from llmjax.models import build_model, init_model

    if cache_dir is not None:
        from llmjax import enable_compilation_cache

        enable_compilation_cache(cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    tokenizer = ByteTokenizer()
    cfg = dataclasses.replace(
        PRESETS["test-tiny"].model,
        vocab_size=tokenizer.vocab_size,
        position="rope",
        max_seq_len=256,
    )
    params, _ = init_model(cfg, jax.random.key(0))
    model = build_model(cfg)
    events = {"compiles": 0, "compile_s": 0.0, "cache_hits": 0}

    def on_duration(event: str, duration: float, **_) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            events["compiles"] += 1
            events["compile_s"] += duration

    def on_event(event: str, **_) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            events["cache_hits"] += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)
    buckets = Buckets() if mode.startswith("bucketed") else None

    def session() -> tuple[int, str]:
        new_tokens, digest = 0, hashlib.sha256()
        for i, request in enumerate(session_requests(calls)):
            out = generate(
                model,
                request["prompts"],
                params=params,
                tokenizer=tokenizer,
                max_new_tokens=request["max_new_tokens"],
                temperature=request["temperature"],
                top_k=40,
                stop_at_eos=False,
                seed=i,
                buckets=buckets,
            )
            new_tokens += sum(len(c.tokens) for c in out)
            for c in out:
                digest.update(c.tokens.tobytes())
        return new_tokens, digest.hexdigest()[:16]

    t0 = time.perf_counter()
    new_tokens, digest = session()
    wall_s = time.perf_counter() - t0
    compiles = dict(events)
    # Again, with everything compiled: what the padding costs once compiling is done.
    t0 = time.perf_counter()
    session()
    again_s = time.perf_counter() - t0
    return {
        "mode": mode,
        "calls": calls,
        "xla_compiles": compiles["compiles"],
        "compile_s": round(compiles["compile_s"], 2),
        "decode_programs": tokens._begin_decoding._cache_size() + run_steps._cache_size(),
        "persistent_cache_hits": compiles["cache_hits"],
        "new_tokens": new_tokens,
        "tokens_sha256": digest,  # equal across modes: the same output
        "wall_s": round(wall_s, 2),
        "compiled_session_s": round(again_s, 2),
        "recompiles_on_second_pass": events["compiles"] - compiles["compiles"],
    }


def _in_fresh_process(mode: str, calls: int, cache_dir: str | None) -> dict:
    argv = [sys.executable, "-m", "experiments.bench_generate_compiles", "--worker", mode]
    argv += ["--calls", str(calls)] + ([] if cache_dir is None else ["--cache-dir", cache_dir])
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"the {mode} session failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 calls instead of 20")
    parser.add_argument("--calls", type=int, default=None, help="calls in the session")
    parser.add_argument("--worker", choices=MODES, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    calls = args.calls or (5 if args.quick else 20)
    if args.worker is not None:  # one session, in this (fresh) process
        result = run_session(args.worker, calls, args.cache_dir)
        print(json.dumps(result))
        return result
    import jax

    rows = {}
    for mode in ("bucketed", "exact"):
        rows[mode] = _in_fresh_process(mode, calls, None)
        print(json.dumps(rows[mode]), flush=True)
    with tempfile.TemporaryDirectory() as cache_dir:
        _in_fresh_process("bucketed", calls, cache_dir)  # fills the persistent cache
        rows["bucketed_warm_cache"] = _in_fresh_process("bucketed_warm_cache", calls, cache_dir)
    print(json.dumps(rows["bucketed_warm_cache"]), flush=True)
    result = {
        "model": "test-tiny shape (2L d32), rope, context 256, vocab 259, random weights",
        "backend": jax.default_backend(),
        "session": f"{calls} generate calls: batch 1-8, prompts 3-60 bytes, max_new_tokens "
        "1-100, temperature 0.5-0.95, top-k 40",
        "sessions": rows,
        "compiles_saved": rows["exact"]["xla_compiles"] - rows["bucketed"]["xla_compiles"],
        "wall_speedup": round(rows["exact"]["wall_s"] / rows["bucketed"]["wall_s"], 2),
        # Once compiled, the padded shapes' extra compute: bucketed / exact session time.
        "compiled_time_ratio": round(
            rows["bucketed"]["compiled_session_s"] / rows["exact"]["compiled_session_s"], 2
        ),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
