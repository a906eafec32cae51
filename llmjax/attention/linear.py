"""Linear attention (Katharopoulos et al. 2020; Performer's FAVOR+): softmax's exp(q.k) replaced by
a kernel phi(q).phi(k), so attention is phi(q_t) S_t / phi(q_t) z_t with running sums
S_t = sum_{s<=t} phi(k_s) v_s^T and z_t = sum_{s<=t} phi(k_s).

The parallel (training) form works in chunks: exact quadratic attention inside a chunk plus
the prefix state of earlier chunks: O(T * chunk * H + T * F * H); a length that is not a
multiple of the chunk is padded with zero keys (which add nothing) and the padding dropped. The
recurrent form
(`LinearRecurrence`, the variant's `.recurrent`) carries (S, z) instead of a KV cache and costs
O(1) per token, for decoding; a prompt continues the state chunk by chunk. Queries and
keys are multiplied by sqrt(scale) before the feature map, so phi(q).phi(k) estimates
exp(q.k * scale) for FAVOR+. A causal mask is taken in index order (query t sees keys 0..t);
padded keys (kv_valid) are dropped; windows, segments, ALiBi, dense masks and logit soft caps
are not served.
"""

from collections.abc import Callable
from dataclasses import dataclass

import einops
import flax.struct
import jax
import jax.numpy as jnp

from llmjax.attention.core import register_attention
from llmjax.attention.masks import Mask
from llmjax.attention.support import check_block, check_self_attention, reject
from llmjax.typing import Array, Bool, Float

FeatureMap = Callable[[jax.Array], jax.Array]  # [..., H] -> [..., F], positive


def elu_plus_one(x: Float[Array, "... H"]) -> Float[Array, "... H"]:
    """Katharopoulos et al.: phi(x) = elu(x) + 1 (positive, F = H)."""
    return jax.nn.elu(x) + 1.0


@dataclass(frozen=True)
class FavorFeatures:
    """Performer's positive orthogonal random features: E[phi(q).phi(k)] = exp(q.k).

    phi(x) = exp(W x - |x|^2 / 2) / sqrt(F) with W's rows orthogonal Gaussian directions drawn
    from `seed` (fixed, as Performer without feature redrawing).
    """

    n_features: int = 128
    seed: int = 0

    def projection(self, head_dim: int) -> Float[Array, "F H"]:
        key_q, key_norm = jax.random.split(jax.random.key(self.seed))
        n_blocks = -(-self.n_features // head_dim)
        # Orthogonal directions within each block of H features (one batched QR)...
        gaussian = jax.random.normal(key_q, (n_blocks, head_dim, head_dim))
        directions = jnp.linalg.qr(gaussian)[0].transpose(0, 2, 1).reshape(-1, head_dim)
        # ...with the lengths Gaussian rows would have.
        norms = jnp.linalg.norm(jax.random.normal(key_norm, (self.n_features, head_dim)), axis=1)
        return directions[: self.n_features] * norms[:, None]

    def __call__(self, x: Float[Array, "... H"]) -> Float[Array, "... F"]:
        x = x.astype(jnp.float32)
        w_FxH = self.projection(x.shape[-1])
        proj = x @ w_FxH.T - 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)
        return jnp.exp(proj) / jnp.sqrt(jnp.float32(self.n_features))


def _features(feature_map: FeatureMap, x: jax.Array, scale: float) -> jax.Array:
    return feature_map(x.astype(jnp.float32) * jnp.float32(scale**0.5))


def _divide(num: jax.Array, den: jax.Array) -> jax.Array:
    # A row that sees no key has den == 0; give it 0 without a NaN gradient through the division.
    safe = jnp.where(den > 0, den, 1.0)
    return jnp.where(den[..., None] > 0, num / safe[..., None], 0.0)


def make_linear_attention(feature_map: FeatureMap = elu_plus_one, chunk: int = 64):
    """An attention variant (reference signature) with this feature map and chunk size."""
    check_block("linear", "chunk", chunk)

    def linear_attention(
        q_BxTxNxH: Float[Array, "B T N H"],
        k_BxSxKxH: Float[Array, "B S K H"],
        v_BxSxKxH: Float[Array, "B S K H"],
        mask: Mask,
        *,
        alibi_slopes: Float[Array, " N"] | None = None,
        scale: float | None = None,
        logit_softcap: float | None = None,
    ) -> Float[Array, "B T N H"]:
        _reject(mask, alibi_slopes, logit_softcap)
        n_kv, length = k_BxSxKxH.shape[2], q_BxTxNxH.shape[1]
        scale = q_BxTxNxH.shape[-1] ** -0.5 if scale is None else scale
        fq_BxTxKxGxF = einops.rearrange(
            _features(feature_map, q_BxTxNxH, scale), "B T (K G) F -> B T K G F", K=n_kv
        )
        fk_BxSxKxF = _features(feature_map, k_BxSxKxH, scale)
        if mask.kv_valid is not None:
            fk_BxSxKxF = fk_BxSxKxF * mask.kv_valid[:, :, None, None]
        v = v_BxSxKxH.astype(jnp.float32)
        if not mask.causal:
            kv_BxKxFxH = jnp.einsum("BSKF,BSKH->BKFH", fk_BxSxKxF, v)
            num = jnp.einsum("BTKGF,BKFH->BTKGH", fq_BxTxKxGxF, kv_BxKxFxH)
            den = jnp.einsum("BTKGF,BKF->BTKG", fq_BxTxKxGxF, fk_BxSxKxF.sum(1))
        else:
            check_self_attention("linear (causal)", length, k_BxSxKxH.shape[1])
            num, den, _ = _causal_chunks(fq_BxTxKxGxF, fk_BxSxKxF, v, min(chunk, length))
        out = _divide(num, den)
        return einops.rearrange(out, "B T K G H -> B T (K G) H").astype(q_BxTxNxH.dtype)

    linear_attention.feature_map = feature_map
    linear_attention.recurrent = LinearRecurrence(feature_map, chunk)
    return linear_attention


def _reject(mask: Mask, alibi_slopes, logit_softcap=None) -> None:
    reject(
        "linear",
        mask,
        alibi_slopes,
        ["window", "segments", "alibi", "extra", "softcap"],
        "a kernel feature map has no logit matrix to mask, bias or cap",
        logit_softcap=logit_softcap,
    )


def _causal_chunks(fq_BxTxKxGxF, fk_BxTxKxF, v_BxTxKxH, chunk: int, state=None):
    """Numerator, denominator and final state of causal linear attention, chunk by chunk,
    continuing `state` (a LinearState of earlier tokens; None: no earlier tokens).

    A scan over chunks carries the state: each step reads only its chunk and the small state,
    so the working set stays in cache (materializing every chunk's prefix state with a cumsum
    measured 1.6x slower at T=16k on CPU, and grew faster than linearly in T).
    """
    batch, length, n_kv, _, n_features = fq_BxTxKxGxF.shape
    pad = -length % chunk

    def chunked(x):  # [B, T, ...] -> [C, B, chunk, ...]
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))  # zero keys add nothing
        return jnp.moveaxis(x.reshape(x.shape[0], -1, chunk, *x.shape[2:]), 1, 0)

    if state is None:
        head_dim = v_BxTxKxH.shape[-1]
        state = LinearState(
            jnp.zeros((batch, n_kv, n_features, head_dim), jnp.float32),
            jnp.zeros((batch, n_kv, n_features), jnp.float32),
        )
    causal_TxS = jnp.tril(jnp.ones((chunk, chunk), bool))

    def step(st: LinearState, xs):
        fq_BxTxKxGxF, fk_BxSxKxF, v_BxSxKxH = xs
        within_BxKxGxTxS = jnp.where(
            causal_TxS, jnp.einsum("BTKGF,BSKF->BKGTS", fq_BxTxKxGxF, fk_BxSxKxF), 0.0
        )
        num = jnp.einsum("BTKGF,BKFH->BTKGH", fq_BxTxKxGxF, st.kv_BxKxFxH) + jnp.einsum(
            "BKGTS,BSKH->BTKGH", within_BxKxGxTxS, v_BxSxKxH
        )
        den = jnp.einsum("BTKGF,BKF->BTKG", fq_BxTxKxGxF, st.k_BxKxF) + einops.rearrange(
            within_BxKxGxTxS.sum(-1), "B K G T -> B T K G"
        )
        st = LinearState(
            st.kv_BxKxFxH + jnp.einsum("BSKF,BSKH->BKFH", fk_BxSxKxF, v_BxSxKxH),
            st.k_BxKxF + fk_BxSxKxF.sum(1),
        )
        return st, (num, den)

    xs = (chunked(fq_BxTxKxGxF), chunked(fk_BxTxKxF), chunked(v_BxTxKxH))
    final, (num_CxBxTxKxGxH, den_CxBxTxKxG) = jax.lax.scan(step, state, xs)
    num = einops.rearrange(num_CxBxTxKxGxH, "C B T K G H -> B (C T) K G H")[:, :length]
    den = einops.rearrange(den_CxBxTxKxG, "C B T K G -> B (C T) K G")[:, :length]
    return num, den, final


# ----------------------------------------------------------------------------- recurrent form


@flax.struct.dataclass
class LinearState:
    """Running sums of a causal linear attention layer: S = sum phi(k) v^T and z = sum phi(k)."""

    kv_BxKxFxH: Float[Array, "B K F H"]
    k_BxKxF: Float[Array, "B K F"]


def init_linear_state(
    batch: int, n_kv: int, head_dim: int, feature_map: FeatureMap = elu_plus_one
) -> LinearState:
    """The empty state (no keys seen yet)."""
    n_features = jax.eval_shape(feature_map, jax.ShapeDtypeStruct((head_dim,), jnp.float32))
    f = n_features.shape[-1]
    return LinearState(
        jnp.zeros((batch, n_kv, f, head_dim), jnp.float32), jnp.zeros((batch, n_kv, f), jnp.float32)
    )


def linear_prefill(
    k_BxSxKxH: Float[Array, "B S K H"],
    v_BxSxKxH: Float[Array, "B S K H"],
    kv_valid_BxS: Bool[Array, "B S"] | None = None,
    *,
    feature_map: FeatureMap = elu_plus_one,
    scale: float | None = None,
) -> LinearState:
    """The state after a whole prompt (padded keys excluded): what decoding starts from."""
    scale = k_BxSxKxH.shape[-1] ** -0.5 if scale is None else scale
    fk_BxSxKxF = _features(feature_map, k_BxSxKxH, scale)
    if kv_valid_BxS is not None:
        fk_BxSxKxF = fk_BxSxKxF * kv_valid_BxS[:, :, None, None]
    kv = jnp.einsum("BSKF,BSKH->BKFH", fk_BxSxKxF, v_BxSxKxH.astype(jnp.float32))
    return LinearState(kv, fk_BxSxKxF.sum(1))


def _extend(feature_map, chunk, state, q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, valid_BxT, scale):
    """Outputs of T new tokens continuing `state`, and the state after them."""
    n_kv, length = k_BxTxKxH.shape[2], q_BxTxNxH.shape[1]
    scale = q_BxTxNxH.shape[-1] ** -0.5 if scale is None else scale
    fq_BxTxKxGxF = einops.rearrange(
        _features(feature_map, q_BxTxNxH, scale), "B T (K G) F -> B T K G F", K=n_kv
    )
    fk_BxTxKxF = _features(feature_map, k_BxTxKxH, scale)
    if valid_BxT is not None:
        fk_BxTxKxF = fk_BxTxKxF * valid_BxT[:, :, None, None]
    v = v_BxTxKxH.astype(jnp.float32)
    num, den, state = _causal_chunks(fq_BxTxKxGxF, fk_BxTxKxF, v, min(chunk, length), state)
    out = einops.rearrange(_divide(num, den), "B T K G H -> B T (K G) H")
    return out.astype(q_BxTxNxH.dtype), state


def linear_attention_step(
    state: LinearState,
    q_BxNxH: Float[Array, "B N H"],
    k_BxKxH: Float[Array, "B K H"],
    v_BxKxH: Float[Array, "B K H"],
    *,
    feature_map: FeatureMap = elu_plus_one,
    scale: float | None = None,
    valid_B: Bool[Array, " B"] | None = None,
) -> tuple[LinearState, Float[Array, "B N H"]]:
    """Adds one token's key/value to the state, then attends its query: O(1) in the length.

    `valid_B` False leaves that row's state unchanged (a padded step).
    """
    valid_Bx1 = None if valid_B is None else valid_B[:, None]
    out_Bx1xNxH, state = _extend(
        feature_map,
        1,
        state,
        q_BxNxH[:, None],
        k_BxKxH[:, None],
        v_BxKxH[:, None],
        valid_Bx1,
        scale,
    )
    return state, out_Bx1xNxH[:, 0]


@dataclass(frozen=True)
class LinearRecurrence:
    """Decoding of causal linear attention with its running sums (llmjax.attention.decoding)."""

    feature_map: FeatureMap = elu_plus_one
    chunk: int = 64

    def init(self, batch: int, n_kv: int, head_dim: int) -> LinearState:
        return init_linear_state(batch, n_kv, head_dim, self.feature_map)

    def extend(
        self,
        state: LinearState,
        q_BxTxNxH: Float[Array, "B T N H"],
        k_BxTxKxH: Float[Array, "B T K H"],
        v_BxTxKxH: Float[Array, "B T K H"],
        mask: Mask,
        *,
        alibi_slopes: Float[Array, " N"] | None = None,
        scale: float | None = None,
        logit_softcap: float | None = None,
    ) -> tuple[Float[Array, "B T N H"], LinearState]:
        """T new tokens continue the state (one token: O(F * H) work, whatever came before)."""
        _reject(mask, alibi_slopes, logit_softcap)
        return _extend(
            self.feature_map,
            self.chunk,
            state,
            q_BxTxNxH,
            k_BxTxKxH,
            v_BxTxKxH,
            mask.kv_valid,
            scale,
        )


DEFAULT_FAVOR = FavorFeatures()
register_attention("linear")(make_linear_attention(elu_plus_one))
register_attention("linear_favor")(make_linear_attention(DEFAULT_FAVOR))
