"""A recurrent-state cache, for attention variants that decode without keys and values.

Linear attention keeps every past token in running sums (llmjax.attention.linear), so a decode
step reads and updates a state whose size does not depend on how many tokens came before: O(1)
memory and time per token. `StateCache` offers what the decoder uses of a `KVCache` (append,
default_positions, take, per-layer entries) with no slots at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import flax.struct
import jax
import jax.numpy as jnp

from llmjax.attention import ATTENTION
from llmjax.attention.core import softcap_option
from llmjax.attention.decoding import UnsupportedCache, recurrence
from llmjax.attention.masks import Mask
from llmjax.typing import Array, Float, Int, PyTree

if TYPE_CHECKING:
    from llmjax.config import ModelConfig


@flax.struct.dataclass
class LayerState:
    """One layer's recurrent state; with the scan layout every leaf has a leading layer axis and
    `layer` says which one this view is (updated in place, as `LayerKV` does)."""

    state: PyTree
    layer: Int[Array, ""] | None = None

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
    ) -> tuple[Float[Array, "B T N H"], LayerState]:
        """The new tokens continue this layer's state; `mask` is over the new tokens only."""
        del start  # no slots: the state is the whole past
        steps = recurrence(ATTENTION.get(variant))
        if steps is None:
            raise UnsupportedCache(
                f"attention variant {variant!r} has no recurrent state to decode with; build "
                f"the cache with init_cache(cfg, ...) for this model's config (a KV cache)"
            )
        mine = self.state
        if self.layer is not None:
            mine = jax.tree.map(
                lambda x: jax.lax.dynamic_index_in_dim(x, self.layer, 0, False), mine
            )
        out, new = steps.extend(
            mine,
            q_BxTxNxH,
            k_BxTxKxH,
            v_BxTxKxH,
            mask,
            alibi_slopes=alibi_slopes,
            **softcap_option(logit_softcap),
        )
        if self.layer is None:
            return out, self.replace(state=new)
        stacked = jax.tree.map(
            lambda x, n: jax.lax.dynamic_update_index_in_dim(x, n.astype(x.dtype), self.layer, 0),
            self.state,
            new,
        )
        return out, self.replace(state=stacked)


@flax.struct.dataclass
class StateCache:
    """Every layer's state plus each row's next position; nothing grows with the length."""

    layers: LayerState | tuple[LayerState, ...]  # stacked (scan layout) or one per layer
    index: Int[Array, ""]  # tokens fed so far
    next_positions: Int[Array, " B"]  # default position of each row's next token

    @property
    def batch_size(self) -> int:
        return self.next_positions.shape[0]

    def append(
        self, positions_BxT: Int[Array, "B T"]
    ) -> tuple[StateCache, Mask, Int[Array, "B T"], Int[Array, ""]]:
        """Books T new tokens: (updated cache, causal mask over the new tokens with padding
        (negative positions) invalid, clamped positions, tokens fed before them)."""
        valid_BxT = positions_BxT >= 0
        positions_BxT = jnp.maximum(positions_BxT, 0).astype(jnp.int32)
        last = jnp.max(jnp.where(valid_BxT, positions_BxT + 1, 0), axis=1)
        cache = self.replace(
            index=self.index + positions_BxT.shape[1],
            next_positions=jnp.maximum(self.next_positions, last),
        )
        mask = Mask(positions_BxT, positions_BxT, kv_valid=valid_BxT, causal=True)
        return cache, mask, positions_BxT, self.index

    def default_positions(self, length: int) -> Int[Array, "B T"]:
        return self.next_positions[:, None] + jnp.arange(length, dtype=jnp.int32)

    def take(self, rows_R: Int[Array, " R"]) -> StateCache:
        """The cache of rows `rows_R` (beam reordering, repeating a prompt for many samples)."""
        axis = 1 if isinstance(self.layers, LayerState) else 0
        layers = jax.tree.map(lambda x: jnp.take(x, rows_R, axis=axis), self.layers)
        return self.replace(layers=layers, next_positions=self.next_positions[rows_R])


def init_state_cache(cfg: ModelConfig, batch_size: int) -> StateCache:
    """The empty state of every layer of a model whose attention variant has a recurrence."""
    steps = recurrence(ATTENTION.get(cfg.attention))
    if steps is None:
        raise UnsupportedCache(
            f"attention variant {cfg.attention!r} has no recurrent state; use init_cache"
        )
    one = steps.init(batch_size, cfg.kv_heads, cfg.dim_head)
    if cfg.scan_layers:
        layers = LayerState(jax.tree.map(lambda x: jnp.stack([x] * cfg.n_layers), one))
    else:
        layers = tuple(LayerState(jax.tree.map(jnp.copy, one)) for _ in range(cfg.n_layers))
    return StateCache(
        layers=layers,
        index=jnp.zeros((), jnp.int32),
        next_positions=jnp.zeros((batch_size,), jnp.int32),
    )
