"""The model-family protocol: a toy recurrent family defined here decodes, is checked and is
counted through the library untouched; the transformer's config checks name the option."""

import dataclasses

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import pytest

import llmjax
from llmjax import scaling
from llmjax.config import ModelConfig, RopeScaling
from llmjax.decode import init_cache
from llmjax.errors import ConfigError
from llmjax.models import MODELS, DecodingLimits, ModelOutput, build_model, family_of, init_model
from llmjax.typing import Array, Float, Int

TOY = "test-gru"


@flax.struct.dataclass
class GRUState:
    """Each row's hidden state and next position: the whole past in D numbers."""

    h_BxD: Float[Array, "B D"]
    next_positions: Int[Array, " B"]

    def take(self, rows_R: Int[Array, " R"]) -> "GRUState":
        return GRUState(self.h_BxD[rows_R], self.next_positions[rows_R])


class GRUCell(nn.Module):
    """One GRU step; a row's state resets where its segment changes, padding leaves it as is."""

    d_model: int

    @nn.compact
    def __call__(self, h_BxD, xs):
        x_BxD, reset_B, valid_B = xs
        h0_BxD = jnp.where(reset_B[:, None], 0.0, h_BxD)
        xh = jnp.concatenate([x_BxD, h0_BxD], axis=-1)
        z_BxD, r_BxD = jnp.split(nn.sigmoid(nn.Dense(2 * self.d_model, name="gates")(xh)), 2, -1)
        xrh = jnp.concatenate([x_BxD, r_BxD * h0_BxD], axis=-1)
        n_BxD = jnp.tanh(nn.Dense(self.d_model, name="candidate")(xrh))
        new_BxD = jnp.where(valid_B[:, None], (1 - z_BxD) * h0_BxD + z_BxD * n_BxD, h_BxD)
        return new_BxD, new_BxD


class ToyGRU(nn.Module):
    """Embedding, one GRU layer scanned over time, logits: no attention, no positions."""

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        tokens_BxT,
        positions_BxT=None,
        segments_BxT=None,
        *,
        deterministic=True,
        return_hidden=False,
        cache=None,
    ) -> ModelOutput:
        cfg = self.cfg
        B, T = tokens_BxT.shape
        if cache is not None and segments_BxT is not None:
            raise ValueError("segments cannot be combined with a cache")
        if positions_BxT is None:
            start_B = jnp.zeros((B,), jnp.int32) if cache is None else cache.next_positions
            positions_BxT = start_B[:, None] + jnp.arange(T, dtype=jnp.int32)
        valid_BxT = positions_BxT >= 0
        reset_BxT = jnp.zeros((B, T), bool)
        if segments_BxT is not None:
            previous = jnp.concatenate([segments_BxT[:, :1], segments_BxT[:, :-1]], axis=1)
            reset_BxT = segments_BxT != previous
        h_BxD = jnp.zeros((B, cfg.d_model)) if cache is None else cache.h_BxD
        x_BxTxD = nn.Embed(cfg.padded_vocab_size, cfg.d_model, name="embed")(tokens_BxT)
        scan = nn.scan(
            GRUCell,
            variable_broadcast="params",
            split_rngs={"params": False},
            in_axes=1,
            out_axes=1,
        )
        h_BxD, hidden_BxTxD = scan(cfg.d_model, name="gru")(h_BxD, (x_BxTxD, reset_BxT, valid_BxT))
        logits_BxTxV = nn.Dense(cfg.padded_vocab_size, use_bias=False, name="head")(hidden_BxTxD)
        new_cache = None
        if cache is not None:
            last_B = jnp.max(jnp.where(valid_BxT, positions_BxT + 1, 0), axis=1)
            new_cache = GRUState(h_BxD, jnp.maximum(cache.next_positions, last_B))
        return ModelOutput(
            logits=logits_BxTxV.astype(jnp.float32),
            hidden=hidden_BxTxD if return_hidden else None,
            cache=new_cache,
        )

    @classmethod
    def check_config(cls, cfg):
        if cfg.attention_window is not None:
            raise ConfigError(
                f"model.attention_window={cfg.attention_window} does not apply to a recurrent "
                f"model; leave it unset"
            )

    @classmethod
    def init_cache(cls, cfg, batch_size, length, *, rolling=False):
        del length  # the state does not grow with the sequence
        if rolling:
            raise ValueError("a recurrent state has no rolling variant")
        return GRUState(jnp.zeros((batch_size, cfg.d_model)), jnp.zeros((batch_size,), jnp.int32))

    @classmethod
    def decoding_limits(cls, cfg):
        return DecodingLimits(window=None, extrapolates=True)

    @classmethod
    def matmul_params(cls, cfg):
        D = cfg.d_model
        return 2 * D * 2 * D + 2 * D * D + D * cfg.padded_vocab_size

    @classmethod
    def forward_flops_per_token(cls, cfg, seq_len, *, causal_halving=False):
        return 2.0 * cls.matmul_params(cfg)  # a recurrence costs the same at any context


@pytest.fixture(scope="module")
def toy():
    """(model, params) of the toy family, registered for this module only."""
    MODELS.register(TOY)(ToyGRU)
    cfg = ModelConfig(arch=TOY, vocab_size=61, d_model=16, n_heads=1, n_layers=1, position="none")
    params, _ = init_model(cfg, jax.random.key(0))
    # Sharper than the default init, so greedy choices are far from ties.
    params = jax.tree.map(lambda x: 3.0 * x, params)
    yield build_model(cfg), params
    MODELS.unregister(TOY)


PROMPTS = [[5, 9, 2], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [8, 8, 1]]


def _tokens(completions):
    return [c.tokens.tolist() for c in completions]


def test_toy_family_is_found_and_builds(toy):
    model, params = toy
    assert family_of(model.cfg) is ToyGRU and isinstance(model, ToyGRU)
    state = init_cache(model.cfg, 3, 1000)
    assert isinstance(state, GRUState) and state.h_BxD.shape == (3, 16)
    assert state.take(jnp.asarray([2, 2, 0, 1])).h_BxD.shape == (4, 16)


@pytest.mark.parametrize("num_beams", [1, 2], ids=["greedy", "beams"])
def test_toy_decodes_with_its_state_as_by_recomputation(toy, num_beams):
    """Prompts of different lengths (left-padded): the family's own state gives the tokens that
    rerunning the whole sequence gives; beams reorder the state through its `take`."""
    model, params = toy
    kw = dict(params=params, max_new_tokens=6, temperature=0.0, num_beams=num_beams)
    cached = llmjax.generate(model, PROMPTS, use_cache=True, **kw)
    recomputed = llmjax.generate(model, PROMPTS, use_cache=False, **kw)
    assert _tokens(cached) == _tokens(recomputed)
    assert all(len(c.tokens) == 6 for c in cached)


def test_toy_flop_count_comes_from_the_family(toy):
    model, params = toy
    cfg = model.cfg
    kernels = sum(x.size for path, x in jax.tree_util.tree_leaves_with_path(params)
                  if "kernel" in jax.tree_util.keystr(path))  # fmt: skip
    assert scaling.matmul_params(cfg) == kernels == ToyGRU.matmul_params(cfg)
    assert scaling.train_flops_per_token(cfg, 128) == 6.0 * kernels
    assert scaling.train_flops_per_token(cfg, 4096) == 6.0 * kernels
    assert scaling.attention_flops_per_token(cfg, 128) == 0.0


def test_toy_family_checks_its_own_config(toy):
    model, _ = toy
    with pytest.raises(ConfigError, match="model.attention_window=4 does not apply"):
        build_model(dataclasses.replace(model.cfg, attention_window=4))


def test_a_family_missing_a_member_is_refused(toy):
    class Incomplete(nn.Module):
        cfg: ModelConfig

    model, _ = toy
    MODELS.register("test-incomplete")(Incomplete)
    try:
        cfg = dataclasses.replace(model.cfg, arch="test-incomplete")
        with pytest.raises(TypeError, match="lacks check_config, init_cache"):
            build_model(cfg)
    finally:
        MODELS.unregister("test-incomplete")


# ----------------------------------------------------------------------------- the transformer


def _with(cfg, **fields):
    """`cfg` with fields set past ModelConfig's own checks (as a config from elsewhere may be)."""
    cfg = dataclasses.replace(cfg)
    for name, value in fields.items():
        object.__setattr__(cfg, name, value)
    return cfg


@pytest.mark.parametrize("field", ["arch", "mlp", "norm", "position", "attention", "remat"])
def test_unknown_part_names_the_option(tiny_model, field):
    with pytest.raises(ConfigError, match=rf"model\.{field}='nonesuch' is not known; valid"):
        build_model(_with(tiny_model, **{field: "nonesuch"}))


def test_unknown_rope_scaling_kind_names_the_option(tiny_model):
    scaling_cfg = RopeScaling()
    object.__setattr__(scaling_cfg, "kind", "nonesuch")
    with pytest.raises(ConfigError, match=r"model\.rope_scaling\.kind='nonesuch' is not known"):
        build_model(_with(tiny_model, position="rope", rope_scaling=scaling_cfg))


def test_rope_scaling_kind_checks_run(tiny_model):
    yarn = RopeScaling(kind="yarn", factor=2.0, original_max_seq_len=32)
    object.__setattr__(yarn, "original_max_seq_len", None)
    with pytest.raises(ConfigError, match="needs original_max_seq_len"):
        build_model(_with(tiny_model, position="rope", rope_scaling=yarn))


def test_the_transformer_states_its_decoding_limits(tiny_model):
    assert family_of(tiny_model).decoding_limits(tiny_model) == DecodingLimits(None, False)
    windowed = dataclasses.replace(tiny_model, position="rope", attention_window=4)
    assert family_of(windowed).decoding_limits(windowed) == DecodingLimits(4, True)
