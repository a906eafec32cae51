"""Token embedding table, also used as the (tied) output projection."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmjax.layers.common import constrain, dtype_of, param


class Embedder(nn.Module):
    """Looks tokens up in a (V, D) table; `decode` projects hidden states back onto it."""

    cfg: object

    def setup(self):
        cfg = self.cfg
        self.embedding = param(
            self,
            "embedding",
            (cfg.padded_vocab_size, cfg.d_model),
            ("vocab", "embed"),
            nn.initializers.normal(cfg.init_std),
            cfg.param_dtype,
        )

    def encode(self, tokens_BxT: jax.Array) -> jax.Array:
        # Gathered whole before the lookup, as FSDP gathers every weight before use: the SPMD
        # partitioner cannot turn a lookup in a vocab x embed sharded table into batch-sharded
        # rows without replicating the output first.
        table_VxD = constrain(self.embedding, (None, None))
        return jnp.take(table_VxD, tokens_BxT, axis=0).astype(dtype_of(self.cfg.dtype))

    def decode(self, x_BxTxD: jax.Array) -> jax.Array:
        table_VxD = self.embedding.astype(dtype_of(self.cfg.dtype))
        return jnp.einsum("BTD,VD->BTV", x_BxTxD, table_VxD, preferred_element_type=jnp.float32)
