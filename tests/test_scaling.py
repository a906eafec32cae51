"""Cost accounting: parameter counts, the FLOP formula against XLA, peaks, MFU."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import pytest

from llmjax import scaling
from llmjax.config import PRESETS, ModelConfig
from llmjax.models import build_model, count_params, init_model
from llmjax.objectives.losses import cross_entropy
from llmjax.scaling import cost


def test_gpt2_small_counts_match_the_known_totals():
    cfg = dataclasses.replace(PRESETS["gpt2-small"].model, vocab_multiple=1)
    counts = scaling.param_counts(cfg)
    assert counts.total == 124_439_808
    assert counts.embedding == 50257 * 768 + 1024 * 768  # token and position tables
    assert counts.non_embedding == 85_056_000  # Kaplan et al.'s "85M" for GPT-2 small


@pytest.mark.parametrize(
    "variant",
    [dict(use_bias=False), dict(use_bias=False, mlp="swiglu", n_kv_heads=2, tie_embeddings=False)],
    ids=["gpt-tied", "llama-untied"],
)
def test_matmul_params_are_the_non_embedding_kernels_plus_the_logits(tiny_model, variant):
    cfg = dataclasses.replace(tiny_model, **variant)
    params, _ = init_model(cfg, jax.random.key(0))
    counts = scaling.param_counts(cfg)
    assert counts.total == count_params(params)
    norms = (2 * cfg.n_layers + 1) * cfg.d_model  # layer norm scales, no biases
    logits = cfg.padded_vocab_size * cfg.d_model if cfg.tie_embeddings else 0
    assert scaling.matmul_params(cfg) == counts.non_embedding - norms + logits


def test_flop_formula_matches_xla_cost_analysis():
    """6N + 12 L T n_h d_h against XLA's count for the loss gradient of a dense model.

    Layers unrolled: XLA's cost analysis counts the body of a scan's while loop once.
    """
    cfg = ModelConfig(
        vocab_size=256, max_seq_len=128, d_model=256, n_layers=2, n_heads=4, use_bias=False,
        scan_layers=False,
    )  # fmt: skip
    model = build_model(cfg)
    params, _ = init_model(cfg, jax.random.key(0))
    tokens = jnp.zeros((4, 128), jnp.int32)

    def loss(p):
        return cross_entropy(model.apply({"params": p}, tokens).logits, tokens)[0]

    xla = jax.jit(jax.grad(loss)).lower(params).compile().cost_analysis()["flops"]
    formula = scaling.train_flops_per_token(cfg, 128) * tokens.size
    assert formula == pytest.approx(xla, rel=0.10)
    attention = 3 * scaling.attention_flops_per_token(cfg, 128) * tokens.size
    assert attention == 12 * 2 * 128 * 4 * 64 * tokens.size
    causal = scaling.train_flops_per_token(cfg, 128, causal_halving=True) * tokens.size
    assert formula - causal == pytest.approx(attention / 2)


@pytest.mark.parametrize(
    "kind, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.4e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H200", 989.4e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("TPU v4", 275e12),
        ("TPU v5 lite", 197e12),
        ("TPU v5", 459e12),
        ("TPU v5p", 459e12),
        ("TPU v6 lite", 918e12),
        ("cpu", None),
    ],
)
def test_peak_table(kind, peak):
    assert scaling.table_peak(kind) == peak


def test_cpu_peak_is_measured_once_per_process(monkeypatch):
    monkeypatch.delenv(scaling.ENV_PEAK, raising=False)
    first = scaling.peak_flops()
    hits = scaling.measured_matmul_peak.cache_info().hits
    assert first == scaling.peak_flops() and first > 1e8
    assert scaling.measured_matmul_peak.cache_info().hits == hits + 1
    monkeypatch.setenv(scaling.ENV_PEAK, "2e9")
    assert scaling.peak_flops() == 2e9  # one process: the per-process peak


def test_cpu_peak_is_kept_per_machine(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMJAX_CACHE_DIR", str(tmp_path))
    calls = []
    monkeypatch.setattr(cost, "measure_matmul_peak", lambda: calls.append(1) or 1.5e11)
    kept = tmp_path / scaling.PEAK_CACHE_FILE
    scaling.measured_matmul_peak.cache_clear()
    try:
        assert scaling.measured_matmul_peak() == 1.5e11 and len(calls) == 1
        assert list(json.loads(kept.read_text())) == [cost._machine_key()]
        scaling.measured_matmul_peak.cache_clear()  # as in a new process
        assert scaling.measured_matmul_peak() == 1.5e11 and len(calls) == 1
        kept.write_text("{truncated")
        scaling.measured_matmul_peak.cache_clear()
        assert scaling.measured_matmul_peak() == 1.5e11 and len(calls) == 2
        assert json.loads(kept.read_text())[cost._machine_key()]["flops_per_s"] == 1.5e11
    finally:
        scaling.measured_matmul_peak.cache_clear()


def test_mfu():
    assert scaling.mfu(6e9, 100.0, 1.2e12) == pytest.approx(0.5)
    assert scaling.mfu(6e9, 100.0, None) != scaling.mfu(6e9, 100.0, None)  # nan


def test_matmul_peak_is_a_plausible_rate():
    peak = scaling.measure_matmul_peak(256, repeats=2, min_seconds=0.02)
    assert 1e8 < peak < 1e14  # FLOP/s: between a slow core and a datacenter GPU
