"""The gradient reaching each input from the loss at one position: exact on a model whose
gradients are known in closed form, zero after the loss position in causal models, and equal
to finite differences of the loss on real ones."""

import dataclasses
from types import SimpleNamespace
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.analysis.gradient_distance import gradient_by_distance, input_gradient_norms
from llmjax.config import PRESETS
from llmjax.models import build_model, init_model
from llmjax.objectives.losses import token_log_probs

V, D, DECAY = 7, 3, 0.6


@dataclasses.dataclass(frozen=True)
class _Width:
    d_model: int = D


class LeakyIntegrator(nn.Module):
    """h_t = sum_{s <= t} a^(t - s) x_s and logits_t = h_t W, so that d loss_T / d x_t is
    a^(T - t) W (softmax(logits_T) - onehot(y_T)) for t <= T and 0 after."""

    cfg: Any

    @nn.compact
    def __call__(self, tokens_BxT, deterministic=True):
        embedding = self.param("embedding", nn.initializers.normal(1.0), (V, D))
        head = self.param("head", nn.initializers.normal(1.0), (D, V))
        x_BxTxD = self.perturb("embeddings", embedding[tokens_BxT])
        t = np.arange(tokens_BxT.shape[1])
        weights_TxT = np.where(t[:, None] >= t[None, :], DECAY ** (t[:, None] - t[None, :]), 0.0)
        h_BxTxD = jnp.einsum("ts,bsd->btd", weights_TxT, x_BxTxD)
        return SimpleNamespace(logits=h_BxTxD @ head)


def _integrator(batch=3, length=9):
    model = LeakyIntegrator(_Width())
    rng = np.random.default_rng(0)
    inputs, targets = (rng.integers(0, V, (batch, length)) for _ in range(2))
    variables = model.init(jax.random.key(0), jnp.asarray(inputs))
    variables = {"params": variables["params"]}  # the perturbation is added by the analysis
    return model, variables, inputs, targets


def _closed_form(model, variables, inputs, targets, position):
    """a^(T - t) ||W (p_T - e_y)|| per row and t, 0 after T."""
    logits = np.asarray(model.apply(variables, jnp.asarray(inputs)).logits, np.float64)
    head = np.asarray(variables["params"]["head"], np.float64)
    z = logits[:, position]
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    p[np.arange(len(p)), targets[:, position]] -= 1.0
    scale_B = np.linalg.norm(p @ head.T, axis=-1)
    t = np.arange(inputs.shape[1])
    decay_T = np.where(t <= position, DECAY ** (position - np.minimum(t, position)), 0.0)
    return scale_B[:, None] * decay_T[None, :]


@pytest.mark.parametrize("position", [0, 4, 8])
def test_norms_are_the_closed_form_of_a_leaky_integrator(position):
    model, variables, inputs, targets = _integrator()
    got = input_gradient_norms(model, variables, inputs, targets, position=position)
    np.testing.assert_allclose(got, _closed_form(model, variables, inputs, targets, position),
                               rtol=1e-5, atol=1e-7)  # fmt: skip
    assert (got[:, position + 1 :] == 0.0).all()


def test_by_distance_averages_rows_and_the_positions_that_reach_each_distance():
    model, variables, inputs, targets = _integrator()
    last = gradient_by_distance(model, variables, inputs, targets)
    assert last.shape == (9,)
    expected = _closed_form(model, variables, inputs, targets, 8).mean(0)[::-1]
    np.testing.assert_allclose(last, expected, rtol=1e-5)
    # distance d is reached from position 3 only for d <= 3, from 5 for d <= 5
    both = gradient_by_distance(model, variables, inputs, targets, positions=(3, 5))
    g3 = _closed_form(model, variables, inputs, targets, 3).mean(0)[3::-1]
    g5 = _closed_form(model, variables, inputs, targets, 5).mean(0)[5::-1]
    np.testing.assert_allclose(both[:4], (g3 + g5[:4]) / 2, rtol=1e-5)
    np.testing.assert_allclose(both[4:], g5[4:], rtol=1e-5)


def test_positions_outside_the_sequence_are_refused():
    model, variables, inputs, targets = _integrator()
    with pytest.raises(ValueError, match=r"loss position 9 is outside the sequence \[0, 9\)"):
        input_gradient_norms(model, variables, inputs, targets, position=9)
    with pytest.raises(ValueError, match="at least one loss position"):
        gradient_by_distance(model, variables, inputs, targets, positions=())


def _real(arch):
    fields = {"transformer": {}, "lstm": {"position": "none"}, "gru": {"position": "none"}}[arch]
    cfg = dataclasses.replace(PRESETS["test-tiny"].model, vocab_size=61, d_model=16, n_layers=1,
                              arch=arch, **fields)  # fmt: skip
    params, state = init_model(cfg, jax.random.key(0))
    params = jax.tree.map(lambda x: 3.0 * x, params)  # gradients well above rounding
    rng = np.random.default_rng(1)
    inputs, targets = (rng.integers(0, 61, (2, 12)) for _ in range(2))
    return build_model(cfg), {"params": params, **state}, inputs, targets


@pytest.mark.parametrize("arch", ["transformer", "lstm", "gru"])
def test_causal_models_give_zero_after_the_loss_position_only(arch):
    model, variables, inputs, targets = _real(arch)
    g = input_gradient_norms(model, variables, inputs, targets, position=6)
    assert g.shape == (2, 12)
    assert (g[:, 7:] == 0.0).all() and (g[:, :7] > 0.0).all()


@pytest.mark.parametrize("arch", ["transformer", "lstm"])
def test_norm_is_the_finite_difference_slope_along_the_gradient(arch):
    """Moving x_t by +-eps along the gradient's direction changes loss_T by 2 eps ||g_t||."""
    model, variables, inputs, targets = _real(arch)
    T, t = 8, 3
    zero = jnp.zeros((2, 12, model.cfg.d_model))

    @jax.jit
    def loss(delta_BxTxD):
        out = model.apply({**variables, "perturbations": {"embeddings": delta_BxTxD}}, inputs)
        return -token_log_probs(out.logits[:, T], jnp.asarray(targets[:, T])).sum()

    g_BxTxD = jax.jit(jax.grad(loss))(zero)
    norms = input_gradient_norms(model, variables, inputs, targets, position=T)
    for b in range(2):
        u = jnp.zeros_like(zero).at[b, t].set(g_BxTxD[b, t] / jnp.linalg.norm(g_BxTxD[b, t]))
        eps = 1e-2
        slope = (loss(eps * u) - loss(-eps * u)) / (2 * eps)
        np.testing.assert_allclose(norms[b, t], float(slope), rtol=2e-2)
