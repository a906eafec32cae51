"""What a model family provides: its forward pass, config checks, decoding state and FLOP count.

A family is a linen module class registered in `llmjax.models.MODELS` under the name that
`ModelConfig.arch` selects. Everything the rest of llmjax knows about a model goes through this
protocol, so a new family (an RNN, a mixture of experts) is one file plus a registration:

- `Family(cfg)` is the module. `__call__(tokens_BxT, positions_BxT=None, segments_BxT=None, *,
  deterministic=True, return_hidden=False, cache=None, logits_at=None, parents_BxT=None,
  return_attention=False, head_mask=None)` returns a `ModelOutput`. Negative positions mark
  padding; with a cache the tokens continue the cached ones and positions default to each
  row's next positions. Without one, segment ids keep packed documents apart (decoding without
  a cache puts padding in a segment of its own). `logits_at` (int [B, K], indices into T) asks
  for the logits of those positions only: the output's logits are then [B, K, V] (hidden
  states and aux stay [B, T, ...]). `parents_BxT` (with segments) packs a tree: a token also
  sees the tokens of the segment it names, so several continuations share one copy of their
  prefix (`llmjax.attention.Mask`); a family that serves it says so with the class attribute
  `tree_packing = True`, and one that cannot raises ValueError. The last two serve attention
  analysis (llmjax.analysis) and only a family with attention heads takes them:
  `return_attention=True` fills `ModelOutput.attention` with the float32 [L, B, N, T, S]
  probabilities of every layer and head; `head_mask` (float [L, N]: 1 keeps a head, 0 zeroes
  its output before the output projection) ablates heads, a mask of ones computing what None
  does, bit for bit.
- `check_config(cfg)` raises `ConfigError` for names of parts the family does not know (and
  for any other value it cannot serve); `build_model` calls it.
- `init_cache(cfg, batch_size, length, *, rolling=False)` is the empty `DecodingState` for
  `length` tokens (a fixed-size recurrent state ignores the length).
- `decoding_limits(cfg)` is what sizing a decoding cache needs (`DecodingLimits`).
- `matmul_params(cfg)` and `forward_flops_per_token(cfg, seq_len, *, causal_halving=False)` are
  the family's FLOP count, which `llmjax.scaling` turns into training FLOPs and MFU.

These are classmethods or staticmethods (linen wraps only instance methods), so they are asked
of the class, before any module or parameter exists. A `typing.Protocol` rather than a base
class: a family already inherits from `nn.Module`, whose dataclass machinery a second base
with behaviour would have to cooperate with, and there is no default worth inheriting (every
count and state is the family's own). Structural typing states the contract and checks
nothing at run time; `missing_members` does that when a family is looked up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

from llmjax.typing import Array, Float, Int

if TYPE_CHECKING:
    from llmjax.config import ModelConfig
    from llmjax.models.output import ModelOutput

S = TypeVar("S", bound="DecodingState")


class DecodingState(Protocol):
    """A family's decoding state (KV cache, recurrent state): a pytree of fixed-shape arrays.

    Decoding passes it to `model.apply(..., cache=state)` and keeps the `cache` of the output;
    the state is donated to jitted steps and carried through `lax.scan`/`lax.while_loop`, so
    appending tokens must not change its shapes. Beyond that decoding only asks for rows.
    """

    def take(self: S, rows_R: Int[Array, " R"]) -> S:
        """The state of rows `rows_R` (beam reordering, repeating a prompt for many samples)."""
        ...


@dataclass(frozen=True)
class DecodingLimits:
    """What sizing a decoding cache needs to know of a model."""

    # Tokens each query sees (sliding-window attention), or None for the whole past: a windowed
    # model whose positions extrapolate can decode past max_seq_len with a rolling cache.
    window: int | None
    # Whether positions beyond max_seq_len are meaningful (a learned table has no rows there).
    extrapolates: bool


class ModelFamily(Protocol):
    """The class a `MODELS` entry is; see the module docstring for each member."""

    cfg: ModelConfig

    def __call__(
        self,
        tokens_BxT: Int[Array, "B T"],
        positions_BxT: Int[Array, "B T"] | None = None,
        segments_BxT: Int[Array, "B T"] | None = None,
        *,
        deterministic: bool = True,
        return_hidden: bool = False,
        cache: DecodingState | None = None,
        logits_at: Int[Array, "B K"] | None = None,
        parents_BxT: Int[Array, "B T"] | None = None,
        return_attention: bool = False,
        head_mask: Float[Array, "L N"] | None = None,
    ) -> ModelOutput: ...

    @classmethod
    def check_config(cls, cfg: ModelConfig) -> None: ...

    @classmethod
    def init_cache(
        cls, cfg: ModelConfig, batch_size: int, length: int, *, rolling: bool = False
    ) -> DecodingState: ...

    @classmethod
    def decoding_limits(cls, cfg: ModelConfig) -> DecodingLimits: ...

    @classmethod
    def matmul_params(cls, cfg: ModelConfig) -> int:
        """Weights a token is multiplied with (2 FLOPs each forward)."""
        ...

    @classmethod
    def forward_flops_per_token(
        cls, cfg: ModelConfig, seq_len: int, *, causal_halving: bool = False
    ) -> float:
        """Forward FLOPs per token at context `seq_len`: 2 * matmul_params plus whatever grows
        with the context (a transformer's T x T attention matmuls)."""
        ...


MEMBERS: tuple[str, ...] = (
    "check_config",
    "init_cache",
    "decoding_limits",
    "matmul_params",
    "forward_flops_per_token",
)


def missing_members(family: type) -> list[str]:
    """The protocol's class-level members `family` lacks (empty when it is complete)."""
    return [name for name in MEMBERS if not callable(getattr(family, name, None))]
