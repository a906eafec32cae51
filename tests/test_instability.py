"""Instability measurements: loss spikes on synthetic curves, divergence, Wortsman et al.'s
learning-rate sensitivity, the attention layer's sown max logit against q.k / sqrt(H) by
hand, a plain apply left unchanged, and the training monitor."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.analysis.instability import (
    InstabilityMonitor,
    count_spikes,
    diverged,
    logit_stats,
    lr_sensitivity,
    spikes,
)
from llmjax.attention import Mask
from llmjax.attention.core import max_attention_logit
from llmjax.config import PRESETS
from llmjax.models import build_model, init_model

V = 61


def _model(**changes):
    return _built(tuple(sorted(changes.items())))


@functools.cache
def _built(changes):
    cfg = dataclasses.replace(PRESETS["test-tiny"].model, vocab_size=V, **dict(changes))
    params, state = init_model(cfg, jax.random.key(0))
    return build_model(cfg), {"params": params, **state}


def _tokens(batch=2, length=12, seed=0):
    return np.random.default_rng(seed).integers(0, V, (batch, length))


def _descent(n=100, noise=0.02, seed=0):
    """A falling loss curve, 5 -> ~2 nats, with small step-to-step noise."""
    rng = np.random.default_rng(seed)
    return 2.0 + 3.0 * np.exp(-np.arange(n) / 20) + noise * rng.standard_normal(n)


def test_a_smooth_descent_has_no_spikes():
    assert count_spikes(_descent()) == 0
    assert count_spikes(np.full(50, 3.0)) == 0


def test_spikes_are_runs_of_steps_above_the_trailing_median():
    curve = _descent()
    curve[40] *= 2.0  # one step
    curve[70:74] *= 1.3  # four steps in a row: one spike
    curve[90] = np.nan  # a non-finite step is a spike
    assert spikes(curve) == [(40, 40), (70, 73), (90, 90)]
    assert count_spikes(curve) == 3
    # the 1.3x steps are a spike at the 25% threshold, not at 50%; the 2x step not at 150%
    assert spikes(curve, threshold=0.5) == [(40, 40), (90, 90)]
    assert spikes(curve, threshold=1.5) == [(90, 90)]
    assert count_spikes(curve * 1.1) == 3  # relative: the same at any loss scale


def test_spike_at_the_start_and_the_end_and_bad_arguments():
    curve = np.full(30, 2.0)
    curve[-2:] = 3.0
    assert spikes(curve) == [(28, 29)]
    curve[3] = 9.0  # an early blow-up, after 3 steps of history
    assert spikes(curve) == [(3, 3), (28, 29)]
    assert spikes(curve, min_history=4) == [(28, 29)]
    # a long plateau becomes the new level: one spike until the window's median reaches it
    curve[3:25] = 9.0
    assert spikes(curve) == [(3, 6)]
    with pytest.raises(ValueError, match="window"):
        spikes(curve, window=0)
    with pytest.raises(ValueError, match="min_history"):
        spikes(curve, window=3, min_history=5)


def test_divergence():
    assert not diverged(_descent())
    assert diverged(np.full(40, 5.0))  # never went below its initial loss
    up = np.concatenate([_descent(60), np.full(20, 4.5)])  # learned, then blew up
    assert up[-1] < up[0] and diverged(up)
    assert not diverged(up, rise=3.0)
    nan_end = _descent()
    nan_end[-1] = np.inf
    assert diverged(nan_end)
    assert diverged([])
    assert diverged(_descent(), initial_loss=1.0)


def test_lr_sensitivity_is_wortsmans_formula():
    # min(final, initial) over the grid: 3, 2.5, 2, 5 (capped), 5 (diverged) -> mean 3.5, best 2
    finals = [3.0, 2.5, 2.0, 7.0, math.nan]
    assert lr_sensitivity(finals, 5.0) == pytest.approx(3.5 - 2.0)
    assert lr_sensitivity([2.0, 2.0, 2.0], 5.0) == 0.0
    assert lr_sensitivity([math.inf, 2.0], [4.0, 6.0]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        lr_sensitivity([], 5.0)


def _logit_max_by_hand(h_BxTxD, wq_DxNxH, wk_DxKxH, causal_length):
    q = np.einsum("btd,dnh->btnh", h_BxTxD, wq_DxNxH)
    k = np.einsum("btd,dkh->btkh", h_BxTxD, wk_DxKxH)
    group = q.shape[2] // k.shape[2]
    k = np.repeat(k, group, axis=2)  # query head n reads kv head n // group
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    visible = np.tril(np.ones((causal_length, causal_length), bool))
    return np.where(visible, logits, -np.inf).max()


@functools.cache
def _applied(scan: bool):
    """A GQA model's plain apply, and one with every module's output captured beside what the
    attention layers sow (each layer's input is its norm's output)."""
    model, variables = _model(scan_layers=scan, n_kv_heads=2, use_bias=False)
    tokens = _tokens()
    plain = model.apply(variables, tokens)
    asked, state = model.apply(variables, tokens, capture_intermediates=True,
                               mutable=["intermediates"])  # fmt: skip
    return model, variables, tokens, plain, asked, state["intermediates"]


def _sown(found, n_layers):
    if "blocks" in found:
        return np.asarray(found["blocks"]["attention"]["max_attention_logit"][0])
    return np.asarray([found[f"blocks_{i}"]["attention"]["max_attention_logit"][0]
                       for i in range(n_layers)])  # fmt: skip


@pytest.mark.parametrize("scan", [True, False])
def test_sown_max_logit_is_q_dot_k_over_sqrt_h(scan):
    model, variables, tokens, _, _, found = _applied(scan)
    n_layers = model.cfg.n_layers
    params = variables["params"]
    sown = _sown(found, n_layers)
    assert sown.shape == (n_layers,)
    for i in range(n_layers):
        if scan:
            block, at = params["blocks"], (lambda x, i=i: np.asarray(x)[i])
            h = found["blocks"]["attention_norm"]["__call__"][0][i]
        else:
            block, at = params[f"blocks_{i}"], np.asarray
            h = found[f"blocks_{i}"]["attention_norm"]["__call__"][0]
        attn = block["attention"]
        expected = _logit_max_by_hand(np.asarray(h, np.float64), at(attn["query_kernel"]),
                                      at(attn["key_kernel"]), tokens.shape[1])  # fmt: skip
        np.testing.assert_allclose(sown[i], expected, rtol=1e-5)


def test_max_attention_logit_sees_only_visible_pairs():
    q = jnp.zeros((1, 3, 1, 2)).at[0, 0, 0].set(jnp.array([10.0, 0.0]))
    k = jnp.zeros((1, 3, 1, 2)).at[0, 2, 0].set(jnp.array([10.0, 0.0]))  # only a future key
    positions = jnp.arange(3)[None]
    mask = Mask.causal_lm(positions, None)
    assert float(max_attention_logit(q, k, mask)) == 0.0
    k = k.at[0, 0, 0].set(jnp.array([1.0, 0.0]))  # the query's own key
    assert float(max_attention_logit(q, k, mask)) == pytest.approx(10.0 / np.sqrt(2))


@pytest.mark.parametrize("scan", [True, False])
def test_a_plain_apply_is_unchanged(scan):
    model, variables, tokens, plain, asked, found = _applied(scan)
    assert len(_sown(found, model.cfg.n_layers)) == model.cfg.n_layers
    np.testing.assert_array_equal(np.asarray(plain.logits), np.asarray(asked.logits))

    # and a plain apply does not even compute the logit maxima: no extra matmuls, no reduction
    def count(jaxpr, name):
        return str(jaxpr).count(name)

    plain_jaxpr = jax.make_jaxpr(lambda v: model.apply(v, tokens).logits)(variables)
    asked_jaxpr = jax.make_jaxpr(
        lambda v: model.apply(v, tokens, mutable=["intermediates"])[0].logits
    )(variables)
    assert count(plain_jaxpr, "dot_general") < count(asked_jaxpr, "dot_general")
    assert count(plain_jaxpr, "reduce_max") < count(asked_jaxpr, "reduce_max")


def test_logit_stats():
    model, variables, tokens, plain, _, found = _applied(True)
    stats = logit_stats(model, variables, tokens)
    np.testing.assert_array_equal(np.asarray(stats["max_attention_logit"]),
                                  _sown(found, model.cfg.n_layers))  # fmt: skip
    logits = np.asarray(plain.logits, np.float64)
    log_z = np.log(np.exp(logits).sum(-1))
    assert float(stats["log_z_mean"]) == pytest.approx(log_z.mean(), rel=1e-5)
    assert float(stats["logit_max_abs"]) == pytest.approx(np.abs(logits).max(), rel=1e-5)
    assert float(stats["logit_mean"]) == pytest.approx(logits.mean(), abs=1e-6)


def test_qk_norm_bounds_the_attention_logit_at_init():
    model, variables = _model(qk_norm=True)
    stats = logit_stats(model, variables, _tokens())
    # unit-RMS queries and keys: |q.k| / sqrt(H) <= sqrt(H)
    assert np.all(np.asarray(stats["max_attention_logit"]) <= np.sqrt(model.cfg.dim_head) + 1e-4)


class _FakeTrainer:
    """What the monitor reads of a Trainer: the config and the host state."""

    def __init__(self, cfg):
        self.cfg = dataclasses.replace(PRESETS["test-tiny"], model=cfg)
        self.parallel = type("P", (), {"host_state": staticmethod(lambda s: s)})()


def test_monitor_records_losses_and_probes():
    model, variables = _model()
    trainer = _FakeTrainer(model.cfg)
    state = type("S", (), {"params": variables["params"], "model_state": {}})()
    monitor = InstabilityMonitor(_tokens(), every=3)
    monitor.on_start(trainer, 0)
    losses = [4.0, 3.5, 3.0, 2.9, 6.0, 2.8]
    for step, loss in enumerate(losses, 1):
        monitor.on_metrics(step, {"loss": loss, "grad_norm": 1.0, "nonfinite_total": 0})
        if monitor.due(step, len(losses)):
            monitor.on_state(step, state)
    assert monitor.losses == losses
    assert [p["step"] for p in monitor.probes] == [1, 3, 6]
    assert len(monitor.probes[0]["max_attention_logit"]) == model.cfg.n_layers
    summary = monitor.summary()
    assert summary["initial_loss"] == 4.0 and summary["nonfinite_steps"] == 0
    assert summary["max_attention_logit"] == max(max(p["max_attention_logit"])
                                                 for p in monitor.probes)  # fmt: skip
    assert summary["spikes"] == 1 and not summary["diverged"]  # the 6.0 step
