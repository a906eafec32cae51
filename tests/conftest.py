"""Test setup: 8 simulated CPU devices (set before JAX is imported) and an isolated cache."""

import os

# Tests check numerics, not speed: LLVM's -O0 compiles 3x faster on this 2-core machine.
# Per-op trace events (free unless a profiler runs) let the profiling test see XLA:CPU's ops.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
    + " --xla_cpu_enable_xprof_traceme=true"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import dataclasses  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Token and tokenizer caches go to a per-session temp dir, never the user's."""
    path = tmp_path_factory.mktemp("llmjax-cache")
    old = os.environ.get("LLMJAX_CACHE_DIR")
    os.environ["LLMJAX_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("LLMJAX_CACHE_DIR", None)
    else:
        os.environ["LLMJAX_CACHE_DIR"] = old


@pytest.fixture
def tiny_model():
    """A 2-layer, d=32 model config; tests replace fields to get variants."""
    from llmjax.config import PRESETS

    return dataclasses.replace(PRESETS["test-tiny"].model, vocab_size=61)


@pytest.fixture
def tiny_text_file(tmp_path):
    """A small deterministic text corpus (~40 KB) on disk."""
    import random

    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "home"]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) for _ in range(1500)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def word_corpus(tmp_path_factory):
    """A module's word corpus file (tests.corpus_utils.write_word_corpus, 400 lines)."""
    from tests.corpus_utils import write_word_corpus

    return write_word_corpus(tmp_path_factory.mktemp("data") / "corpus.txt")
