"""Recurrent baselines: LSTM and GRU language models behind the model-family protocol.

The embedding table, LM head (tied or not), padded-vocabulary logits and value head are the
transformer's. Between them `n_layers` recurrent layers of width `d_model` are stacked the way
the transformer stacks its sublayers (`norm`, `norm_position`, `residual`): by default pre-norm
residual, `x + dropout(cell(norm(x)))`, then a final norm; `residual=False` stacks the cells
plainly (each layer's hidden states are the next one's inputs, as torch.nn.LSTM does).

Each layer projects the inputs of all timesteps onto its gates with one matmul, then scans
over time with only the recurrent matmul inside the loop. Gate order and equations are
PyTorch's (LSTM: i, f, g, o; GRU: r, z, n with the recurrent bias inside r * (.)).

Tokens are read in row order: non-negative positions carry no meaning beyond that, a negative
position marks padding (the state passes through it unchanged), and a change of segment id
resets the state to zero, so each packed document is read as if alone. Segment ids are runs: an
id that recurs after another is a new document (attention would join the two runs), so decoding
by recomputation (use_cache=False) needs left-padded prompts, the default.

The kernels are `input_kernel` and `recurrent_kernel` [D, gates * D]: weight decay applies to
them (their names end in "kernel"); Muon, which knows dense and attention kernels by name,
leaves them to its Adam.

Config fields the recurrence has no use for are ignored: n_heads, n_kv_heads, head_dim, d_ff,
mlp, the bias overrides of attention and MLP, rope_theta, scaled_residual_init, scan_layers
and scan_unroll (the layers are a Python loop, params `blocks_0`, `blocks_1`, ...). Fields
that would change the model if it honoured them are rejected by `check_config`: attention,
attention_window, position (other than the default table, which is not built, or none),
rope_scaling, remat and LoRA.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from llmjax.errors import ConfigError
from llmjax.layers.common import constrain, contract, dtype_of, normal, param
from llmjax.layers.embeddings import Embedder
from llmjax.layers.norms import NORMS
from llmjax.models.family import DecodingLimits
from llmjax.models.output import ModelOutput
from llmjax.models.transformer import ACTIVATION, PADDED_LOGIT, value_head
from llmjax.typing import Array, Float, Int

if TYPE_CHECKING:
    from llmjax.config import ModelConfig

# Timesteps per iteration of the time scan. Unrolling measured no faster on XLA:CPU (a nano
# LSTM train step: 64, 62, 64 and 91 ms at 1, 2, 4 and 8) and compiles slower.
TIME_UNROLL = 1

Carry = tuple[Float[Array, "B D"], ...]


# ----------------------------------------------------------------------------- cells


def lstm_step(
    carry: Carry, gx_BxG: Float[Array, "B G"], w_hh_DxG: Float[Array, "D G"], b_hh_G
) -> Carry:
    """One LSTM step from the input's gate pre-activations gx = x W_ih + b (G = 4D)."""
    del b_hh_G  # one bias suffices: PyTorch's b_ih + b_hh is a single sum
    h_BxD, c_BxD = carry
    g_BxG = gx_BxG + _recurrent(h_BxD, w_hh_DxG)
    i, f, g, o = jnp.split(g_BxG, 4, axis=-1)
    c_BxD = jax.nn.sigmoid(f) * c_BxD + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c_BxD), c_BxD


def gru_step(
    carry: Carry, gx_BxG: Float[Array, "B G"], w_hh_DxG: Float[Array, "D G"], b_hh_G
) -> Carry:
    """One GRU step (G = 3D): r and z from input + recurrent, n = tanh(x_n + r * (h W_hn +
    b_hn)), h' = (1 - z) n + z h."""
    (h_BxD,) = carry
    gh_BxG = _recurrent(h_BxD, w_hh_DxG)
    if b_hh_G is not None:
        gh_BxG = gh_BxG + b_hh_G
    xr, xz, xn = jnp.split(gx_BxG, 3, axis=-1)
    hr, hz, hn = jnp.split(gh_BxG, 3, axis=-1)
    r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    return ((1.0 - z) * n + z * h_BxD,)


def _recurrent(h_BxD, w_hh_DxG):
    return jnp.dot(h_BxD.astype(w_hh_DxG.dtype), w_hh_DxG, preferred_element_type=jnp.float32)


@dataclass(frozen=True)
class Cell:
    """A recurrent cell: gates per unit, state arrays per layer, and the step."""

    name: str
    gates: int
    carries: int
    step: Callable[..., Carry]
    recurrent_bias: bool  # a bias on h W_hh that cannot fold into the input's


LSTM_CELL = Cell("lstm", gates=4, carries=2, step=lstm_step, recurrent_bias=False)
GRU_CELL = Cell("gru", gates=3, carries=1, step=gru_step, recurrent_bias=True)


def scan_cell(
    cell: Cell,
    carry: Carry,
    gx_BxTxG: Float[Array, "B T G"],
    w_hh_DxG: Float[Array, "D G"],
    b_hh_G,
    reset_BxT: jax.Array | None,
    valid_BxT: jax.Array | None,
) -> tuple[Carry, Float[Array, "B T D"]]:
    """Runs `cell` over T steps: the state resets to zero where `reset`, and stays as it was
    where not `valid` (padding); None for either: nowhere. Returns the last state and every
    step's hidden state."""

    def step(carry, xs):
        gx_BxG, reset_B, valid_B = xs
        if reset_B is not None:
            carry = tuple(jnp.where(reset_B[:, None], 0.0, s) for s in carry)
        new = cell.step(carry, gx_BxG, w_hh_DxG, b_hh_G)
        if valid_B is not None:
            new = tuple(jnp.where(valid_B[:, None], n, s) for n, s in zip(new, carry, strict=True))
        return new, new[0]

    T = gx_BxTxG.shape[1]
    time_major = (
        jnp.swapaxes(gx_BxTxG, 0, 1),
        None if reset_BxT is None else reset_BxT.T,
        None if valid_BxT is None else valid_BxT.T,
    )
    carry, h_TxBxD = jax.lax.scan(step, carry, time_major, unroll=min(TIME_UNROLL, T))
    return carry, jnp.swapaxes(h_TxBxD, 0, 1)


# ----------------------------------------------------------------------------- decoding state


@flax.struct.dataclass
class RecurrentState:
    """Every layer's cell state: the whole past of each row in a fixed number of arrays."""

    carry: tuple[Float[Array, "L B D"], ...]  # (h, c) for an LSTM, (h,) for a GRU; float32

    @property
    def batch_size(self) -> int:
        return self.carry[0].shape[1]

    def take(self, rows_R: Int[Array, " R"]) -> RecurrentState:
        """The state of rows `rows_R` (beam reordering, repeating a prompt for many samples)."""
        return self.replace(carry=tuple(jnp.take(x, rows_R, axis=1) for x in self.carry))


# ----------------------------------------------------------------------------- modules


class RecurrentLayer(nn.Module):
    """One cell over a sequence: the input projection for all steps, then the time scan."""

    cfg: ModelConfig
    cell: Cell

    @nn.compact
    def __call__(self, x_BxTxD, carry: Carry, reset_BxT, valid_BxT):
        cfg, cell = self.cfg, self.cell
        D, G = cfg.d_model, cell.gates * cfg.d_model
        dtype = dtype_of(cfg.dtype)
        w_ih = param(self, "input_kernel", (D, G), ("embed", "mlp"), normal(cfg.init_std),
                     cfg.param_dtype)  # fmt: skip
        w_hh = param(self, "recurrent_kernel", (D, G), ("embed", "mlp"),
                     nn.initializers.orthogonal(), cfg.param_dtype)  # fmt: skip
        gx_BxTxG = contract(x_BxTxD.astype(dtype), w_ih.astype(dtype)).astype(jnp.float32)
        b_hh = None
        if cfg.use_bias:
            gx_BxTxG = gx_BxTxG + param(self, "input_bias", (G,), ("mlp",),
                                        _gate_bias_init(cell, D), cfg.param_dtype)  # fmt: skip
            if cell.recurrent_bias:
                b_hh = param(self, "recurrent_bias", (G,), ("mlp",), nn.initializers.zeros,
                             cfg.param_dtype)  # fmt: skip
        # The recurrence runs data-parallel only: its weight is gathered once, before the loop,
        # and each step's gates and state keep their width and the sequence whole (split over
        # the tensor axis, every step would pay collectives for one small matmul; left to
        # itself, the SPMD partitioner got the gradients wrong on a data x fsdp x tensor mesh).
        gx_BxTxG = constrain(gx_BxTxG, ("batch", None, None))
        carry = tuple(constrain(s, ("batch", None)) for s in carry)
        w_hh = constrain(w_hh.astype(dtype), (None, None))
        carry, h_BxTxD = scan_cell(cell, carry, gx_BxTxG, w_hh, b_hh, reset_BxT, valid_BxT)
        return h_BxTxD.astype(dtype), carry


def _gate_bias_init(cell: Cell, width: int):
    """Zeros, but an LSTM's forget gate starts at 1 (it remembers by default; Jozefowicz et
    al. 2015)."""

    def init(key, shape, dtype=jnp.float32):
        del key
        bias = jnp.zeros(shape, dtype)
        return bias.at[width : 2 * width].set(1.0) if cell.name == "lstm" else bias

    return init


class Recurrent(nn.Module):
    """Token ids in, a `ModelOutput` with next-token logits (float32) out; see the module
    docstring. With a `cache` (a `RecurrentState`) the tokens continue each row's state and the
    output carries the new one. The classmethods are the model-family protocol."""

    cfg: ModelConfig
    cell = LSTM_CELL  # a class attribute, not a field: each family fixes its cell

    @nn.compact
    def __call__(
        self,
        tokens_BxT: Int[Array, "B T"],
        positions_BxT: Int[Array, "B T"] | None = None,
        segments_BxT: Int[Array, "B T"] | None = None,
        *,
        deterministic: bool = True,
        return_hidden: bool = False,
        cache: RecurrentState | None = None,
        logits_at: Int[Array, "B K"] | None = None,
        parents_BxT: Int[Array, "B T"] | None = None,
    ) -> ModelOutput:
        cfg = self.cfg
        B, T = tokens_BxT.shape
        if parents_BxT is not None:
            raise ValueError(
                "a recurrent model cannot pack a tree (parents_BxT): its state runs through "
                "the tokens in order; pack each continuation after its own copy of the context"
            )
        if cache is not None and segments_BxT is not None:
            raise ValueError(
                "segments (packed documents) cannot be combined with a cache; give each "
                "sequence its own row"
            )
        # Without positions or segments the scan skips the masking (training batches).
        valid_BxT = None if positions_BxT is None else positions_BxT >= 0
        reset_BxT = None
        if segments_BxT is not None:
            reset_BxT = jnp.zeros((B, T), bool)
            reset_BxT = reset_BxT.at[:, 1:].set(segments_BxT[:, 1:] != segments_BxT[:, :-1])
        if cache is None:
            cache = self.init_cache(cfg, B, T)
            keep_state = False
        else:
            keep_state = True

        embedder = Embedder(cfg, name="embed")
        x_BxTxD = embedder.encode(tokens_BxT)
        # A zero-valued hook: with the "perturbations" collection passed in, its gradient is
        # d(output)/d(input embeddings) (used by causality tests and saliency experiments).
        x_BxTxD = self.perturb("embeddings", x_BxTxD)
        drop = nn.Dropout(cfg.dropout, deterministic=deterministic)
        x_BxTxD = constrain(drop(x_BxTxD), ACTIVATION)
        norm = NORMS.get(cfg.norm)
        carries = []
        for i in range(cfg.n_layers):
            layer = RecurrentLayer(cfg, self.cell, name=f"blocks_{i}")
            carry = tuple(s[i] for s in cache.carry)

            def run(h, layer=layer, carry=carry):
                y, new = layer(h, carry, reset_BxT, valid_BxT)
                carries.append(new)
                return y

            # The transformer's sublayer: pre: x + f(norm(x)); post: norm(x + f(x)); without
            # residual connections the "x +" is dropped in both placements.
            if cfg.norm_position == "pre":
                h = norm(cfg, deterministic=deterministic, name=f"blocks_{i}_norm")(x_BxTxD)
                y = drop(run(h))
                x_BxTxD = x_BxTxD + y if cfg.residual else y
            else:
                y = drop(run(x_BxTxD))
                y = x_BxTxD + y if cfg.residual else y
                x_BxTxD = norm(cfg, deterministic=deterministic, name=f"blocks_{i}_norm")(y)
            x_BxTxD = constrain(x_BxTxD, ACTIVATION)
        if cfg.norm_position == "pre":
            x_BxTxD = norm(cfg, deterministic=deterministic, name="final_norm")(x_BxTxD)

        logits = _logits(cfg, embedder, x_BxTxD, logits_at)
        aux = {"value": value_head(cfg, x_BxTxD)} if cfg.value_head else {}
        state = None
        if keep_state:
            stacked = tuple(jnp.stack(s) for s in zip(*carries, strict=True))
            state = cache.replace(carry=stacked)
        return ModelOutput(
            logits=logits, hidden=x_BxTxD if return_hidden else None, cache=state, aux=aux
        )

    # ------------------------------------------------------------------ the family protocol

    @classmethod
    def check_config(cls, cfg: ModelConfig) -> None:
        """The norm is registered, and no field asks for a part a recurrence does not have."""
        NORMS.get(cfg.norm, field="model.norm")
        arch = f"model.arch={cfg.arch!r}"
        rejected = {
            "attention": (cfg.attention not in ("auto", "xla"), "leave it at the default 'auto'"),
            "attention_window": (cfg.attention_window is not None, "leave it unset"),
            "position": (
                cfg.position not in ("learned", "none"),
                "set model.position=none (tokens are ordered by the recurrence)",
            ),
            "rope_scaling.kind": (cfg.rope_scaling.kind != "none", "leave it at 'none'"),
            "remat": (cfg.remat not in ("none", "auto"), "set model.remat=none"),
            "lora.rank": (cfg.lora.rank != 0, "set model.lora.rank=0 (full fine-tuning)"),
            # The transformer's block features (a recurrent layer has none of them).
            "norm_position": (
                cfg.norm_position not in ("pre", "post"),
                "set model.norm_position=pre or post",
            ),
            "global_every": (cfg.global_every is not None, "leave it unset"),
            "parallel_block": (cfg.parallel_block, "set model.parallel_block=false"),
            "embed_scale": (cfg.embed_scale, "set model.embed_scale=false"),
            "final_logit_softcap": (cfg.final_logit_softcap is not None, "leave it unset"),
        }
        for name, (bad, fix) in rejected.items():
            if bad:
                value = functools.reduce(getattr, name.split("."), cfg)
                raise ConfigError(
                    f"model.{name}={value!r} does not apply to a recurrent model ({arch}); {fix}"
                )

    @classmethod
    def init_cache(
        cls, cfg: ModelConfig, batch_size: int, length: int, *, rolling: bool = False
    ) -> RecurrentState:
        """Zero state of every layer; its size does not depend on `length`."""
        del length
        if batch_size < 1:
            raise ValueError(f"cache batch_size must be >= 1, got {batch_size}")
        if rolling:
            raise ValueError(
                "a recurrent state already keeps the whole past in fixed size; a rolling "
                "cache does not apply, use rolling=False"
            )
        shape = (cfg.n_layers, batch_size, cfg.d_model)
        return RecurrentState(tuple(jnp.zeros(shape, jnp.float32) for _ in range(cls.cell.carries)))

    @classmethod
    def decoding_limits(cls, cfg: ModelConfig) -> DecodingLimits:
        return DecodingLimits(window=None, extrapolates=True)

    @classmethod
    def matmul_params(cls, cfg: ModelConfig) -> int:
        """Per layer the input and recurrent kernels, D x gates*D each, plus the logits."""
        D = cfg.d_model
        return cfg.n_layers * 2 * D * cls.cell.gates * D + cfg.padded_vocab_size * D

    @classmethod
    def forward_flops_per_token(
        cls, cfg: ModelConfig, seq_len: int, *, causal_halving: bool = False
    ) -> float:
        del seq_len, causal_halving  # a step costs the same at any context
        return 2.0 * cls.matmul_params(cfg)


class LSTM(Recurrent):
    """Stacked LSTM language model (`model.arch=lstm`)."""

    cell = LSTM_CELL


class GRU(Recurrent):
    """Stacked GRU language model (`model.arch=gru`)."""

    cell = GRU_CELL


def _logits(cfg: ModelConfig, embedder: Embedder, x_BxTxD, logits_at) -> jax.Array:
    """The transformer's head: tied or own kernel, float32, padded vocabulary rows masked."""
    if logits_at is not None:
        x_BxTxD = jnp.take_along_axis(x_BxTxD, logits_at[..., None].astype(jnp.int32), axis=1)
    if cfg.tie_embeddings:
        logits_BxTxV = embedder.decode(x_BxTxD)
    else:
        head = nn.Dense(
            cfg.padded_vocab_size,
            use_bias=False,
            dtype=dtype_of(cfg.dtype),
            param_dtype=dtype_of(cfg.param_dtype),
            kernel_init=nn.with_logical_partitioning(normal(cfg.init_std), ("embed", "vocab")),
            dot_general=functools.partial(jax.lax.dot_general, preferred_element_type=jnp.float32),
            name="lm_head",
        )
        logits_BxTxV = head(x_BxTxD)
    logits_BxTxV = logits_BxTxV.astype(jnp.float32)
    if cfg.padded_vocab_size > cfg.vocab_size:
        real = jnp.arange(cfg.padded_vocab_size) < cfg.vocab_size
        logits_BxTxV = jnp.where(real, logits_BxTxV, PADDED_LOGIT)
    return constrain(logits_BxTxV, ("batch", "length", "vocab"))
