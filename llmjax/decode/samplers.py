"""Samplers: pure functions from next-token logits [B, V] to filtered logits or token ids.

Every filter returns logits of the same shape with removed tokens at -inf, so filters compose
by plain function application. `process_logits` applies the configured ones in this order:

    repetition penalty -> presence/frequency penalties -> banned tokens (no-repeat-n-gram,
    min_new_tokens) -> temperature -> top-k -> top-p -> min-p -> typical

then `sample` draws from softmax(processed) (temperature 0: `greedy`, the argmax).

Ties: every filter keeps *all* tokens tied with the last token it keeps. top-k keeps the tokens
whose logit is >= the k-th largest logit (so more than k tokens when some tie with the k-th);
top-p and typical find the smallest prefix of the sorted tokens that reaches the mass and then
keep every token whose logit (top-p) or typicality score (typical) equals or beats the last
one in that prefix. The kept set therefore never depends on how a sort orders equal values.
`greedy` breaks ties towards the lowest token id.

Parameters may be Python numbers or traced scalars, so one compiled decode loop serves every
setting of the values (only the set of active filters is static).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from llmjax.typing import Array, Bool, Float, Int

NEG_INF = -jnp.inf


def scale_temperature(logits_BxV: Float[Array, "B V"], temperature) -> Float[Array, "B V"]:
    """logits / temperature (temperature > 0)."""
    return logits_BxV / jnp.asarray(temperature, logits_BxV.dtype)


def top_k(logits_BxV: Float[Array, "B V"], k) -> Float[Array, "B V"]:
    """Keeps tokens whose logit is >= the k-th largest (ties with the k-th kept); k=0 keeps all."""
    V = logits_BxV.shape[-1]
    if isinstance(k, int):
        if k == 0 or k >= V:
            return logits_BxV
        kth_Bx1 = jax.lax.top_k(logits_BxV, k)[0][..., -1:]
    else:
        k = jnp.asarray(k, jnp.int32)
        sorted_BxV = -jnp.sort(-logits_BxV, axis=-1)
        index = jnp.clip(jnp.where(k == 0, V, k), 1, V) - 1
        kth_Bx1 = jnp.take(sorted_BxV, index[None], axis=-1)
    return jnp.where(logits_BxV >= kth_Bx1, logits_BxV, NEG_INF)


def _prefix_cutoff(sorted_key_BxV: jax.Array, sorted_probs_BxV: jax.Array, mass) -> jax.Array:
    """The key value of the last element of the smallest prefix whose probability reaches
    `mass` (the prefix holds every i with exclusive cumulative mass < `mass`, at least one)."""
    before_BxV = jnp.cumsum(sorted_probs_BxV, axis=-1) - sorted_probs_BxV
    n_keep_B = jnp.maximum(jnp.sum(before_BxV < mass, axis=-1), 1)
    return jnp.take_along_axis(sorted_key_BxV, (n_keep_B - 1)[:, None], axis=-1)


def top_p(logits_BxV: Float[Array, "B V"], p) -> Float[Array, "B V"]:
    """Nucleus: the most likely tokens whose probability reaches p, plus ties with the last."""
    sorted_BxV = -jnp.sort(-logits_BxV, axis=-1)
    cutoff_Bx1 = _prefix_cutoff(sorted_BxV, jax.nn.softmax(sorted_BxV, axis=-1), p)
    keep = (logits_BxV >= cutoff_Bx1) | (jnp.asarray(p) >= 1.0)
    return jnp.where(keep, logits_BxV, NEG_INF)


def min_p(logits_BxV: Float[Array, "B V"], p) -> Float[Array, "B V"]:
    """Keeps tokens with probability >= p * (probability of the most likely token)."""
    log_probs_BxV = jax.nn.log_softmax(logits_BxV, axis=-1)
    threshold_Bx1 = jnp.max(log_probs_BxV, axis=-1, keepdims=True) + jnp.log(jnp.asarray(p))
    return jnp.where(log_probs_BxV >= threshold_Bx1, logits_BxV, NEG_INF)


def entropy(logits_BxV: Float[Array, "B V"]) -> Float[Array, " B"]:
    """Entropy (nats) of softmax(logits); tokens at -inf contribute 0."""
    log_probs_BxV = jax.nn.log_softmax(logits_BxV, axis=-1)
    probs_BxV = jnp.exp(log_probs_BxV)
    return -jnp.sum(jnp.where(probs_BxV > 0, probs_BxV * log_probs_BxV, 0.0), axis=-1)


def typical(logits_BxV: Float[Array, "B V"], mass) -> Float[Array, "B V"]:
    """Locally typical sampling (Meister et al. 2022): tokens whose surprisal is closest to the
    entropy, taken in that order until their probability reaches `mass`, plus ties."""
    log_probs_BxV = jax.nn.log_softmax(logits_BxV, axis=-1)
    score_BxV = jnp.abs(-log_probs_BxV - entropy(logits_BxV)[:, None])  # inf for removed
    order_BxV = jnp.argsort(score_BxV, axis=-1)
    sorted_score_BxV = jnp.take_along_axis(score_BxV, order_BxV, axis=-1)
    sorted_probs_BxV = jnp.take_along_axis(jnp.exp(log_probs_BxV), order_BxV, axis=-1)
    cutoff_Bx1 = _prefix_cutoff(sorted_score_BxV, sorted_probs_BxV, mass)
    keep = (score_BxV <= cutoff_Bx1) | (jnp.asarray(mass) >= 1.0)
    return jnp.where(keep, logits_BxV, NEG_INF)


def repetition_penalty(
    logits_BxV: Float[Array, "B V"], seen_BxV: Bool[Array, "B V"], penalty
) -> Float[Array, "B V"]:
    """CTRL (Keskar et al. 2019): seen tokens' logits are divided by `penalty` when positive
    and multiplied by it when negative (penalty > 1 discourages repeats)."""
    penalty = jnp.asarray(penalty, logits_BxV.dtype)
    penalized = jnp.where(logits_BxV > 0, logits_BxV / penalty, logits_BxV * penalty)
    return jnp.where(seen_BxV, penalized, logits_BxV)


def presence_frequency_penalty(
    logits_BxV: Float[Array, "B V"], counts_BxV: Int[Array, "B V"], presence, frequency
) -> Float[Array, "B V"]:
    """OpenAI-style: logit - presence * [count > 0] - frequency * count."""
    counts = counts_BxV.astype(logits_BxV.dtype)
    return logits_BxV - presence * (counts > 0) - frequency * counts


def ban(logits_BxV: Float[Array, "B V"], banned_BxV: Bool[Array, "B V"]) -> Float[Array, "B V"]:
    return jnp.where(banned_BxV, NEG_INF, logits_BxV)


def no_repeat_ngram_banned(
    history_BxS: Int[Array, "B S"], length_B: Int[Array, " B"], n: int, vocab_size: int
) -> Bool[Array, "B V"]:
    """Tokens that would complete an n-gram already present in each row's history.

    `history_BxS` holds each row's tokens left-aligned (prompt then generated), `length_B` how
    many are real. n=1 bans every token seen so far.
    """
    B, S = history_BxS.shape
    banned_BxV = jnp.zeros((B, vocab_size), bool)
    if n > S:
        return banned_BxV
    starts_J = jnp.arange(S - n + 1)
    match_BxJ = starts_J[None, :] + n <= length_B[:, None]  # the n-gram lies in the history
    for i in range(n - 1):
        suffix_B = jnp.take_along_axis(history_BxS, (length_B - n + 1 + i)[:, None] % S, axis=1)
        match_BxJ &= history_BxS[:, starts_J + i] == suffix_B
    next_BxJ = history_BxS[:, starts_J + n - 1]
    rows_BxJ = jnp.broadcast_to(jnp.arange(B)[:, None], next_BxJ.shape)
    return banned_BxV.at[rows_BxJ, next_BxJ].max(match_BxJ)


def greedy(logits_BxV: Float[Array, "B V"]) -> Int[Array, " B"]:
    """The most likely token; the lowest id among ties."""
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)


def sample(keys_B: jax.Array, logits_BxV: Float[Array, "B V"]) -> Int[Array, " B"]:
    """One draw per row from softmax(logits), each row with its own key (so a row's draw does
    not depend on its neighbours in the batch)."""
    return jax.vmap(jax.random.categorical)(keys_B, logits_BxV).astype(jnp.int32)


# ----------------------------------------------------------------------------- configuration


def _check_range(name: str, value, ok: bool, valid: str) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r} is out of range; valid: {valid}")


@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen. The defaults sample from the model's own distribution."""

    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    min_p: float = 0.0  # 0: off
    typical_p: float = 1.0  # 1: off
    repetition_penalty: float = 1.0  # 1: off; over prompt and generated tokens
    presence_penalty: float = 0.0  # over generated tokens
    frequency_penalty: float = 0.0  # over generated tokens
    no_repeat_ngram_size: int = 0  # 0: off; over prompt and generated tokens
    min_new_tokens: int = 0  # stop tokens are banned before this many new tokens

    def __post_init__(self):
        def number(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
            return value

        def integer(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            return value

        t = number("temperature")
        _check_range("temperature", t, t >= 0, ">= 0 (0 picks the most likely token)")
        k = integer("top_k")
        _check_range("top_k", k, k >= 0, ">= 0 (0 keeps every token)")
        p = number("top_p")
        _check_range("top_p", p, 0 < p <= 1, "(0, 1] (1 keeps every token)")
        m = number("min_p")
        _check_range("min_p", m, 0 <= m <= 1, "[0, 1] (0 keeps every token)")
        tp = number("typical_p")
        _check_range("typical_p", tp, 0 < tp <= 1, "(0, 1] (1 keeps every token)")
        r = number("repetition_penalty")
        _check_range("repetition_penalty", r, r > 0, "> 0 (1 is off; > 1 discourages repeats)")
        number("presence_penalty")
        number("frequency_penalty")
        n = integer("no_repeat_ngram_size")
        _check_range("no_repeat_ngram_size", n, n >= 0, ">= 0 (0 is off)")
        mn = integer("min_new_tokens")
        _check_range("min_new_tokens", mn, mn >= 0, ">= 0")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def stages(self) -> tuple[str, ...]:
        """The active processing stages, in order (static: part of the compiled program)."""
        active = {
            "repetition": self.repetition_penalty != 1.0,
            "presence_frequency": self.presence_penalty != 0 or self.frequency_penalty != 0,
            "no_repeat_ngram": self.no_repeat_ngram_size > 0,
            "min_new_tokens": self.min_new_tokens > 0,
            "temperature": not self.greedy and self.temperature != 1.0,
            "top_k": not self.greedy and self.top_k > 0,
            "top_p": not self.greedy and self.top_p < 1.0,
            "min_p": not self.greedy and self.min_p > 0.0,
            "typical": not self.greedy and self.typical_p < 1.0,
        }
        return tuple(name for name, on in active.items() if on)

    def values(self) -> dict[str, np.ndarray]:
        """The numbers, as 0-d arrays (traced: changing them does not recompile). NumPy ones:
        a jitted function takes them as they are, where making jax arrays of them would
        compile a conversion program."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = np.asarray(v, np.int32 if isinstance(v, int) else np.float32)
        return out


def process_logits(
    logits_BxV: Float[Array, "B V"],
    stages: tuple[str, ...],
    values: dict[str, jax.Array],
    *,
    seen_BxV: Bool[Array, "B V"] | None = None,
    counts_BxV: Int[Array, "B V"] | None = None,
    banned_BxV: Bool[Array, "B V"] | None = None,
) -> Float[Array, "B V"]:
    """Applies the active `stages` (see `SamplingConfig.stages`) in the module's order."""
    x = logits_BxV.astype(jnp.float32)
    if "repetition" in stages:
        x = repetition_penalty(x, seen_BxV, values["repetition_penalty"])
    if "presence_frequency" in stages:
        x = presence_frequency_penalty(
            x, counts_BxV, values["presence_penalty"], values["frequency_penalty"]
        )
    if banned_BxV is not None:
        x = ban(x, banned_BxV)
    if "temperature" in stages:
        x = scale_temperature(x, values["temperature"])
    if "top_k" in stages:
        x = top_k(x, values["top_k"])
    if "top_p" in stages:
        x = top_p(x, values["top_p"])
    if "min_p" in stages:
        x = min_p(x, values["min_p"])
    if "typical" in stages:
        x = typical(x, values["typical_p"])
    return x
