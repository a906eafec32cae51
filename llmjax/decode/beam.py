"""Beam search over any `tokens_to_logits` model, with a length penalty and EOS handling.

Each row keeps W alive beams and up to W finished hypotheses. A step extends every alive beam
by every token, takes the best (1 + #eos) * W candidates, moves those among the best W that end
in an EOS id to the finished set (scored sum log p / length ** length_penalty, length counting
the EOS) and keeps the best W candidates without an EOS alive. A row is done when its worst
finished score beats anything an alive beam could still reach (exact for length_penalty >= 0:
log-probs only fall, and the longest length is the most favourable); at max_new_tokens the
alive beams are scored as they are and compete with the finished ones. With W = 1 and
length_penalty = 0 this is greedy search (with length_penalty > 0 a longer alive beam may still
beat an early EOS).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from llmjax.decode.loop import TokensToLogits
from llmjax.typing import Array, Bool, Float, Int, PyTree

NEG_INF = -jnp.inf


def reorder_rows(state: PyTree, rows_R: Int[Array, " R"]) -> PyTree:
    """Rows `rows_R` of a model state: its own `take` if it has one (a KVCache), else every
    array with a leading batch axis is gathered (scalars pass through)."""
    if hasattr(state, "take"):
        return state.take(rows_R)
    return jax.tree.map(lambda x: x[rows_R] if jnp.ndim(x) > 0 else x, state)


@flax.struct.dataclass
class BeamState:
    step: Int[Array, ""]
    logits: Float[Array, "BW V"]  # next-token logits of every alive beam, rows b * W + w
    model_state: PyTree
    alive_seq: Int[Array, "B W N"]
    alive_tlp: Float[Array, "B W N"]  # log p of each token
    alive_logp: Float[Array, "B W"]
    fin_score: Float[Array, "B W"]  # -inf: empty slot
    fin: tuple  # (seq [B W N], token log p [B W N], sum log p [B W], length [B W])
    done: Bool[Array, " B"]


@dataclass
class BeamOutput:
    """W hypotheses per row, best first; tokens after a hypothesis' length are pad_id."""

    tokens: np.ndarray  # int32 [B, W, N]
    token_log_probs: np.ndarray  # float32 [B, W, N]
    scores: np.ndarray  # float32 [B, W]: sum log p / length ** length_penalty
    log_probs: np.ndarray  # float32 [B, W]: sum log p
    lengths: np.ndarray  # int32 [B, W], an EOS included
    steps: int


def _penalty(length, alpha):
    return jnp.asarray(length, jnp.float32) ** alpha


def _merge(score_a, arrays_a, score_b, arrays_b, W):
    """The W best of two hypothesis sets (ties: the first set's, then lower index); arrays are
    [B, n, ...] per-hypothesis data gathered alongside the scores."""
    top_score, idx = jax.lax.top_k(jnp.concatenate([score_a, score_b], axis=1), W)

    def pick(a, b):
        both = jnp.concatenate([a, b], axis=1)
        return jnp.take_along_axis(both, idx.reshape(idx.shape + (1,) * (a.ndim - 2)), axis=1)

    return top_score, tuple(pick(a, b) for a, b in zip(arrays_a, arrays_b, strict=True))


def _beam_step(tokens_to_logits, params, s: BeamState, *, W, N, eos_ids, alpha) -> BeamState:
    BW, V = s.logits.shape
    B = BW // W
    t = s.step
    length = t + 1
    cand_BxWxV = s.alive_logp[..., None] + jax.nn.log_softmax(s.logits, -1).reshape(B, W, V)
    n_cand = min((1 + len(eos_ids)) * W, W * V)
    top_logp, top_idx = jax.lax.top_k(cand_BxWxV.reshape(B, W * V), n_cand)
    parent, token = top_idx // V, (top_idx % V).astype(jnp.int32)
    parent_logp = jnp.take_along_axis(s.alive_logp, parent, axis=1)
    # A beam wider than the candidates has impossible (-inf) hypotheses; keep them -inf, not nan.
    token_logp = jnp.where(jnp.isfinite(top_logp), top_logp - parent_logp, NEG_INF)
    seq = jnp.take_along_axis(s.alive_seq, parent[..., None], axis=1)
    seq = jax.lax.dynamic_update_slice(seq, token[..., None], (0, 0, t))
    tlp = jnp.take_along_axis(s.alive_tlp, parent[..., None], axis=1)
    tlp = jax.lax.dynamic_update_slice(tlp, token_logp[..., None], (0, 0, t))
    is_eos = jnp.isin(token, jnp.asarray(eos_ids, jnp.int32)) if eos_ids else token < 0

    # As in Hugging Face's scorer, an EOS candidate finishes a hypothesis only when it ranks among
    # the best W candidates (so W = 1 stops exactly where greedy search would).
    fin_logp = jnp.where(is_eos & (jnp.arange(n_cand) < W), top_logp, NEG_INF)
    fin_len = jnp.full(token.shape, length, jnp.int32)
    fin_score, fin = _merge(
        s.fin_score, s.fin, fin_logp / _penalty(length, alpha), (seq, tlp, fin_logp, fin_len), W
    )

    alive_logp, keep = jax.lax.top_k(jnp.where(is_eos, NEG_INF, top_logp), W)
    alive_seq = jnp.take_along_axis(seq, keep[..., None], axis=1)
    alive_tlp = jnp.take_along_axis(tlp, keep[..., None], axis=1)
    alive_parent = jnp.take_along_axis(parent, keep, axis=1)
    alive_token = jnp.take_along_axis(token, keep, axis=1)

    rows = (jnp.arange(B)[:, None] * W + alive_parent).reshape(-1)
    logits, model_state = tokens_to_logits(
        params, alive_token.reshape(-1), reorder_rows(s.model_state, rows)
    )
    best_alive = alive_logp[:, 0] / jnp.where(
        alpha > 0, _penalty(N, alpha), _penalty(length, alpha)
    )
    done = s.done | (fin_score[:, -1] >= best_alive) | ~jnp.isfinite(alive_logp[:, 0])
    return s.replace(
        step=t + 1,
        logits=logits.astype(jnp.float32),
        model_state=model_state,
        alive_seq=alive_seq,
        alive_tlp=alive_tlp,
        alive_logp=alive_logp,
        fin_score=fin_score,
        fin=fin,
        done=done,
    )


@functools.partial(
    jax.jit,
    static_argnames=("tokens_to_logits", "num_beams", "max_new_tokens", "eos_ids", "pad_id"),
)
def _beam_search(
    params, model_state, first_logits_BxV, alpha, *, tokens_to_logits, num_beams,
    max_new_tokens, eos_ids, pad_id,
):  # fmt: skip
    W, N = num_beams, max_new_tokens
    B, V = first_logits_BxV.shape
    repeat = jnp.repeat(jnp.arange(B), W)
    s = BeamState(
        step=jnp.zeros((), jnp.int32),
        logits=first_logits_BxV[repeat].astype(jnp.float32),
        model_state=reorder_rows(model_state, repeat),
        alive_seq=jnp.full((B, W, N), pad_id, jnp.int32),
        alive_tlp=jnp.zeros((B, W, N), jnp.float32),
        # Only beam 0 starts alive, so the first step does not pick the same token W times.
        alive_logp=jnp.where(jnp.arange(W) == 0, 0.0, NEG_INF) * jnp.ones((B, 1)),
        fin_score=jnp.full((B, W), NEG_INF),
        fin=(
            jnp.full((B, W, N), pad_id, jnp.int32),
            jnp.zeros((B, W, N), jnp.float32),
            jnp.full((B, W), NEG_INF),
            jnp.zeros((B, W), jnp.int32),
        ),
        done=jnp.zeros((B,), bool),
    )
    body = functools.partial(
        _beam_step, tokens_to_logits, params, W=W, N=N, eos_ids=eos_ids, alpha=alpha
    )
    s = jax.lax.while_loop(lambda s: (s.step < N) & ~jnp.all(s.done), body, s)
    # Unfinished beams compete as they are (a row that stopped early keeps its finished ones).
    alive = (s.alive_seq, s.alive_tlp, s.alive_logp, jnp.full((B, W), s.step, jnp.int32))
    score, (seq, tlp, logp, length) = _merge(
        s.fin_score, s.fin, s.alive_logp / _penalty(s.step, alpha), alive, W
    )
    inside = jnp.arange(N) < length[..., None]
    return jnp.where(inside, seq, pad_id), jnp.where(inside, tlp, 0.0), score, logp, length, s.step


def beam_search(
    tokens_to_logits: TokensToLogits,
    params: Any,
    model_state: PyTree,
    first_logits_BxV: Float[Array, "B V"],
    *,
    num_beams: int,
    max_new_tokens: int,
    eos_ids: tuple[int, ...] | list[int] = (),
    length_penalty: float = 1.0,
    pad_id: int = 0,
) -> BeamOutput:
    """Beam search from each row's first logits; `model_state` holds B rows (it is repeated to
    B * num_beams rows)."""
    if not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams={num_beams!r} is out of range; valid: an integer >= 1")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    outputs = _beam_search(
        params,
        model_state,
        first_logits_BxV,
        jnp.float32(length_penalty),
        tokens_to_logits=tokens_to_logits,
        num_beams=num_beams,
        max_new_tokens=max_new_tokens,
        eos_ids=tuple(int(t) for t in eos_ids),
        pad_id=int(pad_id),
    )
    host = jax.device_get(outputs)
    return BeamOutput(*(np.asarray(x) for x in host[:5]), steps=int(host[5]))
