"""A preallocated, static-shape key/value cache for incremental decoding.

Each layer keeps k and v of shape [B, S, K, H] (only the K kv heads, so GQA/MQA caches are
N/K times smaller). What every layer shares lives once on the cache: the position id of the
token in each slot, whether the slot holds a real token (`valid`), the next slot to write and
each row's next position. Attention over the cache is then an ordinary `Mask` with
q_positions != kv_positions and kv_valid, so every registered kernel works unchanged.

Slots are written at one shared `index` for all rows; rows of different lengths differ only in
their positions and valid flags (padding is written but never valid). A *rolling* cache (for
sliding-window models) writes slot `index % S` and so keeps the last S tokens; the window in
the mask, measured in positions, hides anything older than the window.

Convention: a negative position marks a padding token; it is written as invalid and no query
ever sees it.

Each attention variant says how it attends over the cache (llmjax.attention.decoding); a variant
with a recurrent state (linear attention) decodes with a `StateCache` instead: which of the two a
model gets is its family's choice (`init_cache` of llmjax.models.transformer.Decoder).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import flax.struct
import jax
import jax.numpy as jnp

from llmjax.attention import ATTENTION
from llmjax.attention.core import softcap_option
from llmjax.attention.decoding import UnsupportedCache, over_cache, recurrence
from llmjax.attention.masks import Mask
from llmjax.layers.common import dtype_of
from llmjax.typing import Array, Bool, Float, Int

if TYPE_CHECKING:
    from llmjax.config import ModelConfig


@flax.struct.dataclass
class LayerKV:
    """One layer's keys and values [B, S, K, H].

    With the scan layout k and v hold every layer, [L, B, S, K, H], and `layer` says which one
    this view is: writes then update just the new slots of that layer in place and reads slice
    it, so a decode step never copies the whole cache (scanning it as per-layer inputs and
    outputs would, twice).
    """

    k: Float[Array, "B S K H"] | Float[Array, "L B S K H"]
    v: Float[Array, "B S K H"] | Float[Array, "L B S K H"]
    layer: Int[Array, ""] | None = None
    rolling: bool = flax.struct.field(pytree_node=False, default=False)

    def _this_layer(self, x: jax.Array) -> jax.Array:
        return x if self.layer is None else jax.lax.dynamic_index_in_dim(x, self.layer, 0, False)

    def keys(self) -> Float[Array, "B S K H"]:
        return self._this_layer(self.k)

    def values(self) -> Float[Array, "B S K H"]:
        return self._this_layer(self.v)

    def attend(
        self,
        variant: str,
        q_BxTxNxH: Float[Array, "B T N H"],
        k_BxTxKxH: Float[Array, "B T K H"],
        v_BxTxKxH: Float[Array, "B T K H"],
        mask: Mask,
        start,
        *,
        alibi_slopes: Float[Array, " N"] | None = None,
        logit_softcap: float | None = None,
    ) -> tuple[Float[Array, "B T N H"], LayerKV]:
        """Writes the new keys/values from slot `start` on, then attends the new queries over
        the cache (`mask` describes the cache) with the variant's `over_cache`."""
        attend = ATTENTION.get(variant)
        if recurrence(attend) is not None:
            raise UnsupportedCache(
                f"attention variant {variant!r} decodes with its recurrent state, not a KV "
                f"cache; build the cache with init_cache(cfg, ...) for this model's config"
            )
        kv = self.write(k_BxTxKxH, v_BxTxKxH, start)
        out = over_cache(attend)(
            q_BxTxNxH,
            kv.keys(),
            kv.values(),
            mask,
            alibi_slopes=alibi_slopes,
            **softcap_option(logit_softcap),
        )
        return out, kv

    def write(
        self, k_BxTxKxH: Float[Array, "B T K H"], v_BxTxKxH: Float[Array, "B T K H"], start
    ) -> LayerKV:
        """Stores T new keys/values from slot `start` on (wrapping around when rolling)."""
        k_new, v_new = k_BxTxKxH.astype(self.k.dtype), v_BxTxKxH.astype(self.v.dtype)
        lead = () if self.layer is None else (self.layer,)
        if self.rolling:
            slots_T = (start + jnp.arange(k_new.shape[1])) % self.k.shape[-3]
            if lead:  # [layer, :, slots] indexes as [T, B, ...] (NumPy's advanced indexing)
                k_new, v_new = jnp.swapaxes(k_new, 0, 1), jnp.swapaxes(v_new, 0, 1)
            at = (*lead, slice(None), slots_T)
            return self.replace(k=self.k.at[at].set(k_new), v=self.v.at[at].set(v_new))
        if lead:
            k_new, v_new = k_new[None], v_new[None]
        at = (*lead, 0, start, 0, 0)
        return self.replace(
            k=jax.lax.dynamic_update_slice(self.k, k_new, at),
            v=jax.lax.dynamic_update_slice(self.v, v_new, at),
        )


@flax.struct.dataclass
class KVCache:
    """Keys/values of every layer plus the slot bookkeeping all layers share."""

    layers: LayerKV | tuple[LayerKV, ...]  # stacked [L, ...] (scan layout) or one per layer
    positions: Int[Array, "B S"]  # position id of the token in each slot
    valid: Bool[Array, "B S"]  # slot holds a real (non-padding) token
    index: Int[Array, ""]  # tokens written so far = the next slot (mod S when rolling)
    next_positions: Int[Array, " B"]  # default position of each row's next token
    rolling: bool = flax.struct.field(pytree_node=False, default=False)
    window: int | None = flax.struct.field(pytree_node=False, default=None)

    @property
    def batch_size(self) -> int:
        return self.positions.shape[0]

    @property
    def length(self) -> int:
        return self.positions.shape[1]

    def max_tokens_per_call(self) -> int:
        """How many tokens one call may append: all S, or S - window + 1 when rolling (so that
        no token a query of the same call still needs is overwritten)."""
        if not self.rolling:
            return self.length
        return self.length - (self.window or self.length) + 1

    def append(
        self, positions_BxT: Int[Array, "B T"]
    ) -> tuple[KVCache, Mask, Int[Array, "B T"], Int[Array, ""]]:
        """Books T new tokens: returns (cache with updated bookkeeping, attention mask of the
        new queries over the cache, clamped positions, first slot to write)."""
        T = positions_BxT.shape[1]
        if self.max_tokens_per_call() < T:
            raise ValueError(
                f"{T} tokens in one call do not fit this cache: at most "
                f"{self.max_tokens_per_call()} (cache length {self.length}, window "
                f"{self.window}, rolling={self.rolling}); feed the tokens in smaller chunks"
            )
        valid_BxT = positions_BxT >= 0
        positions_BxT = jnp.maximum(positions_BxT, 0).astype(jnp.int32)
        start = self.index
        if self.rolling:
            slots_T = (start + jnp.arange(T)) % self.length
            kv_positions = self.positions.at[:, slots_T].set(positions_BxT)
            kv_valid = self.valid.at[:, slots_T].set(valid_BxT)
        else:
            kv_positions = jax.lax.dynamic_update_slice(self.positions, positions_BxT, (0, start))
            kv_valid = jax.lax.dynamic_update_slice(self.valid, valid_BxT, (0, start))
        last = jnp.max(jnp.where(valid_BxT, positions_BxT + 1, 0), axis=1)
        cache = self.replace(
            positions=kv_positions,
            valid=kv_valid,
            index=start + T,
            next_positions=jnp.maximum(self.next_positions, last),
        )
        mask = Mask(
            q_positions=positions_BxT,
            kv_positions=kv_positions,
            kv_valid=kv_valid,
            causal=True,
            window=self.window,
        )
        return cache, mask, positions_BxT, start

    def default_positions(self, length: int) -> Int[Array, "B T"]:
        return self.next_positions[:, None] + jnp.arange(length, dtype=jnp.int32)

    def take(self, rows_R: Int[Array, " R"]) -> KVCache:
        """The cache of rows `rows_R` (beam reordering, repeating a prompt for many samples)."""
        scanned = isinstance(self.layers, LayerKV)
        axis = 1 if scanned else 0
        layers = jax.tree.map(lambda x: jnp.take(x, rows_R, axis=axis), self.layers)
        return self.replace(
            layers=layers,
            positions=self.positions[rows_R],
            valid=self.valid[rows_R],
            next_positions=self.next_positions[rows_R],
        )


def init_kv_cache(
    cfg: ModelConfig, batch_size: int, length: int, *, rolling: bool = False
) -> KVCache:
    """An empty KV cache of `length` slots for a model config (layout follows cfg.scan_layers).

    `rolling` keeps only the last `length` tokens; it needs a sliding-window model
    (cfg.attention_window) and length >= the window.
    """
    if batch_size < 1 or length < 1:
        raise ValueError(f"cache batch_size and length must be >= 1, got {batch_size}, {length}")
    window = cfg.mask_window  # the global layers of a local/global model see everything
    if rolling and (window is None or length < window):
        raise ValueError(
            f"a rolling cache needs a sliding-window model with attention_window <= length; got "
            f"attention_window={window}, length={length}"
        )
    shape = (batch_size, length, cfg.kv_heads, cfg.dim_head)
    dtype = dtype_of(cfg.dtype)
    if cfg.scan_layers:
        stacked = (cfg.n_layers, *shape)
        layers: LayerKV | tuple[LayerKV, ...] = LayerKV(
            jnp.zeros(stacked, dtype), jnp.zeros(stacked, dtype), rolling=rolling
        )
    else:
        layers = tuple(
            LayerKV(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), rolling=rolling)
            for _ in range(cfg.n_layers)
        )
    return KVCache(
        layers=layers,
        positions=jnp.zeros((batch_size, length), jnp.int32),
        valid=jnp.zeros((batch_size, length), bool),
        index=jnp.zeros((), jnp.int32),
        next_positions=jnp.zeros((batch_size,), jnp.int32),
        rolling=rolling,
        window=window,
    )
