"""The model section of a config: shape and architectural switches of a decoder.

Names of registered parts (norm, mlp, position, attention kernel, remat policy, RoPE scaling)
are checked by the model family when the model is built, not here: a config imports nothing
above it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from llmjax.config.checks import check, check_choice, check_finite, check_positive, round_up
from llmjax.config.moe import MoEConfig
from llmjax.errors import ConfigError

DTYPES = ("float32", "bfloat16", "float16")
# pre: x + f(norm(x)); post: norm(x + f(x)); sandwich: x + norm(f(norm(x))) (Gemma 2/3);
# post_branch: x + norm(f(x)) (OLMo 2). All but post end in a final norm.
NORM_POSITIONS = ("pre", "post", "sandwich", "post_branch")
QK_NORM_SCOPES = ("head", "all")
# MLPs with a gate and an up projection (three matrices): their default width is ~8/3 d_model.
GATED_MLPS = ("swiglu", "geglu")


@dataclass(frozen=True)
class RopeScaling:
    """How RoPE frequencies are stretched to run beyond the trained context."""

    kind: str = "none"
    factor: float = 1.0
    original_max_seq_len: int | None = None
    # Llama-3 style frequency-band scaling.
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    # YaRN ramp boundaries (in rotations over the original context).
    beta_fast: float = 32.0
    beta_slow: float = 1.0

    def __post_init__(self):
        section = "model.rope_scaling"
        check_finite(
            self,
            "factor",
            "low_freq_factor",
            "high_freq_factor",
            "beta_fast",
            "beta_slow",
            section=section,
        )
        check(
            self.factor >= 1.0,
            f"{section}.factor must be >= 1 (it stretches the context), got {self.factor}",
        )
        check(
            self.low_freq_factor > 0,
            f"{section}.low_freq_factor must be > 0, got {self.low_freq_factor}; Llama 3 uses 1.0",
        )
        check(
            self.high_freq_factor > self.low_freq_factor,
            f"{section}.high_freq_factor ({self.high_freq_factor}) must be larger than "
            f"low_freq_factor ({self.low_freq_factor}); Llama 3 uses 4.0 and 1.0",
        )
        check(
            self.beta_fast > 0 and self.beta_slow > 0,
            f"{section}.beta_fast and beta_slow count rotations and must be > 0, got "
            f"{self.beta_fast} and {self.beta_slow}; YaRN uses 32 and 1",
        )
        check_positive(self, "original_max_seq_len", section=section)


# The weights LoRA adapts by default: every attention and MLP projection.
LORA_DEFAULT_TARGETS = "attention/|mlp/"


@dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters (LoRA) beside chosen projection kernels: y = x W + (alpha / rank) x A B.

    A starts random and B at zero, so a model with new adapters computes what its base does.
    `targets` is a regular expression searched in each kernel's param path
    ("blocks/attention/query_kernel", "blocks/mlp/up/kernel"); unscanned layers are
    "blocks_0/...", so one layer can be chosen alone.
    """

    rank: int = 0  # 0: no adapters
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.0  # on the adapter's input, while training
    targets: str = LORA_DEFAULT_TARGETS

    def __post_init__(self):
        check_finite(self, "alpha", "dropout", section="model.lora")
        check(
            isinstance(self.rank, int) and self.rank >= 0,
            f"model.lora.rank must be an integer >= 1 (0 turns LoRA off), got {self.rank!r}",
        )
        check(self.alpha > 0, f"model.lora.alpha must be > 0 (e.g. 16), got {self.alpha}")
        check(
            0.0 <= self.dropout < 1.0,
            f"model.lora.dropout must be in [0, 1) (e.g. 0.05; 0 turns it off), got {self.dropout}",
        )
        try:
            re.compile(self.targets)
        except re.error as e:
            raise ConfigError(
                f"model.lora.targets={self.targets!r} is not a regular expression: {e}"
            ) from None
        check(bool(self.targets), "model.lora.targets is empty; e.g. 'attention/|mlp/'")

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank if self.rank else 0.0


@dataclass(frozen=True)
class ModelConfig:
    """Shape and architectural switches of a decoder-only language model."""

    arch: str = "transformer"
    vocab_size: int = 259
    # Embedding and logit rows are padded to a multiple of this (sharding, hardware tiles);
    # padded ids get -inf logits, so they are never predicted.
    vocab_multiple: int = 1
    max_seq_len: int = 64
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: same as n_heads (MHA); 1: MQA; between: GQA
    head_dim: int | None = None  # None: d_model // n_heads
    d_ff: int | None = None  # None: 4*d_model (gelu) or ~8/3*d_model rounded up to 64 (swiglu)
    mlp: str = "gelu"
    norm: str = "layernorm"
    norm_position: str = "pre"
    norm_eps: float = 1e-5
    residual: bool = True
    # Attention and MLP side by side on the same input, x + attn(norm1(x)) + mlp(norm2(x))
    # (GPT-NeoX, GPT-J); needs norm_position=pre.
    parallel_block: bool = False
    position: str = "learned"
    rope_theta: float = 10_000.0
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    # RoPE on the first rotary_fraction of each head's dims, the rest passed through (GPT-NeoX
    # rotates 1/4); its frequencies are those of a head of that many dims.
    rotary_fraction: float = 1.0
    # A registered attention variant (llmjax.attention). "auto": the backend's fused kernel where
    # one serves the call (on a CPU llmjax's causal kernel, on a GPU cuDNN, on a TPU splash),
    # else flash for long inputs, else "xla"; it logs what it chose.
    attention: str = "auto"
    attention_window: int | None = None  # sliding-window size in tokens; None: full causal
    # Local/global alternation (Gemma 2/3): layers i with (i + 1) % global_every == 0 attend to
    # the whole context, the others within attention_window; None: every layer alike.
    global_every: int | None = None
    # RoPE base of the windowed layers when global_every is set (Gemma 3: 10000 locally, 1e6
    # globally); they use no RoPE scaling. None: rope_theta and rope_scaling as the others.
    rope_local_theta: float | None = None
    # RMSNorm of each query and key head before RoPE (OLMo 2, Gemma 3), one learned scale per
    # head dim shared by the heads: params attention/query_norm and attention/key_norm.
    qk_norm: bool = False
    # "head": each head normalized alone, one scale [head_dim] (Qwen3, Gemma 3); "all": all
    # heads' values together, a scale [heads, head_dim] (OLMo 2 normalizes the whole q and k).
    qk_norm_scope: str = "head"
    # Attention logits -> cap * tanh(logits / cap) before ALiBi and the mask (Gemma 2 uses 50);
    # None: uncapped. Every attention variant but linear attention serves it.
    attn_logit_softcap: float | None = None
    # Attention logits are scaled by attn_scale_dim ** -0.5 (Gemma's query_pre_attn_scalar);
    # None: head_dim ** -0.5.
    attn_scale_dim: float | None = None
    # Output logits -> cap * tanh(logits / cap) (Gemma 2 uses 30); None: uncapped.
    final_logit_softcap: float | None = None
    # Token embeddings times sqrt(d_model) before the first block (Gemma), in the compute dtype.
    embed_scale: bool = False
    use_bias: bool = True
    # Per-part overrides of use_bias (None: follow use_bias), e.g. Qwen2 biases q/k/v only.
    qkv_bias: bool | None = None
    out_bias: bool | None = None  # the attention output projection
    mlp_bias: bool | None = None
    tie_embeddings: bool = True
    dropout: float = 0.0
    init_std: float = 0.02
    scaled_residual_init: bool = True  # output projections get std / sqrt(2 * n_layers)
    scan_layers: bool = True
    # Layers per scan iteration (n_layers: fully unrolled, same params layout). XLA:CPU runs an
    # unrolled stack faster than a while loop; unrolling costs compile time.
    scan_unroll: int = 1
    # What a layer keeps for the backward pass (llmjax.models.remat); auto: by platform and shape
    remat: str = "auto"
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    lora: LoraConfig = field(default_factory=LoraConfig)
    # A scalar head (Dense D -> 1, param `value_head`) on the final hidden state, returned as
    # ModelOutput.aux["value"] [B, T] in float32: a reward model's score, PPO's value function.
    value_head: bool = False
    moe: MoEConfig = field(default_factory=MoEConfig)

    def __post_init__(self):
        check_positive(
            self,
            "vocab_size",
            "vocab_multiple",
            "max_seq_len",
            "d_model",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "head_dim",
            "d_ff",
            "attention_window",
            "global_every",
            "scan_unroll",
            section="model",
        )
        check_finite(
            self,
            "norm_eps",
            "rope_theta",
            "dropout",
            "init_std",
            "attn_logit_softcap",
            "attn_scale_dim",
            "final_logit_softcap",
            "rope_local_theta",
            "rotary_fraction",
            section="model",
        )
        if self.head_dim is None:
            nearest = self.n_heads * max(1, round(self.d_model / self.n_heads))
            check(
                self.d_model % self.n_heads == 0,
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; choose "
                f"d_model as a multiple of n_heads (e.g. {nearest}) or set head_dim explicitly",
            )
        check(
            self.n_heads % self.kv_heads == 0,
            f"n_kv_heads={self.kv_heads} does not divide n_heads={self.n_heads}; each kv head "
            f"serves a whole group of query heads (use a divisor of {self.n_heads})",
        )
        check_choice("model.norm_position", self.norm_position, NORM_POSITIONS)
        check_choice("model.qk_norm_scope", self.qk_norm_scope, QK_NORM_SCOPES)
        check_choice("model.dtype", self.dtype, DTYPES)
        check_choice("model.param_dtype", self.param_dtype, DTYPES)
        if self.position == "rope":
            check(
                self.dim_head % 2 == 0,
                f"RoPE rotates pairs of dimensions, so head_dim must be even; got "
                f"head_dim={self.dim_head} (d_model={self.d_model}, n_heads={self.n_heads})",
            )
        check(
            0.0 <= self.dropout < 1.0,
            f"model.dropout must be in [0, 1) (a probability; 0 turns it off), got {self.dropout}",
        )
        check(self.norm_eps > 0, f"model.norm_eps must be > 0 (e.g. 1e-5), got {self.norm_eps}")
        check(self.init_std > 0, f"model.init_std must be > 0 (e.g. 0.02), got {self.init_std}")
        check(
            self.rope_theta > 0,
            f"model.rope_theta must be > 0 (e.g. 10000), got {self.rope_theta}",
        )
        check(
            self.attn_logit_softcap is None or self.attn_logit_softcap > 0,
            f"model.attn_logit_softcap must be > 0 (logits are bounded to +-cap; Gemma 2 uses "
            f"50) or None for no cap, got {self.attn_logit_softcap}",
        )
        for name, example in (
            ("attn_scale_dim", "Gemma 2 27B uses 144"),
            ("final_logit_softcap", "Gemma 2 uses 30"),
            ("rope_local_theta", "Gemma 3 uses 10000"),
        ):
            value = getattr(self, name)
            check(
                value is None or value > 0,
                f"model.{name} must be > 0 ({example}) or None (off), got {value}",
            )
        if self.global_every is not None:
            check(
                self.attention_window is not None,
                f"model.global_every={self.global_every} makes the other layers local, but "
                f"model.attention_window is unset; set the local window (e.g. "
                f"model.attention_window=4096) or unset global_every",
            )
        check(
            self.rope_local_theta is None or self.global_every is not None,
            "model.rope_local_theta is the RoPE base of the local layers of a local/global "
            "model; set model.global_every (e.g. 6) or unset rope_local_theta",
        )
        if self.moe.enabled:
            moe_layers = [i for i in range(self.n_layers) if self.moe.is_moe_layer(i)]
            check(
                bool(moe_layers),
                f"model.moe makes no layer MoE: first_dense={self.moe.first_dense} with "
                f"n_layers={self.n_layers}; lower model.moe.first_dense",
            )
            check(
                not self.scan_layers or len(moe_layers) == self.n_layers,
                f"model.moe.every={self.moe.every} and first_dense={self.moe.first_dense} mix "
                f"dense and MoE layers, which a scan over identical layers cannot hold; set "
                f"model.scan_layers=false (or every=1 and first_dense=0)",
            )
        check(
            0.0 < self.rotary_fraction <= 1.0,
            f"model.rotary_fraction must be in (0, 1] (GPT-NeoX uses 0.25; 1 rotates the whole "
            f"head), got {self.rotary_fraction}",
        )
        if self.position == "rope":
            check(
                self.rotary_dim % 2 == 0 and self.rotary_dim > 0,
                f"RoPE rotates pairs of dimensions, so head_dim * rotary_fraction must be a "
                f"positive even number; got {self.dim_head} * {self.rotary_fraction}",
            )
        check(
            not self.parallel_block or self.norm_position == "pre",
            f"model.parallel_block runs attention and MLP on the same pre-normed input; it "
            f"needs model.norm_position='pre', got {self.norm_position!r}",
        )
        for name in ("qk_norm", "embed_scale", "parallel_block"):
            check(
                isinstance(getattr(self, name), bool),
                f"model.{name} must be true or false, got {getattr(self, name)!r}",
            )

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def dim_head(self) -> int:
        return self.d_model // self.n_heads if self.head_dim is None else self.head_dim

    @property
    def ffn_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        if self.mlp in GATED_MLPS:
            return round_up(int(8 * self.d_model / 3), 64)
        return 4 * self.d_model

    @property
    def expert_dim(self) -> int:
        """Width of each expert MLP (model.moe.d_expert, else the dense MLP's)."""
        return self.ffn_dim if self.moe.d_expert is None else self.moe.d_expert

    @property
    def shared_expert_dim(self) -> int:
        """Width of the MoE layers' shared MLP (model.moe.d_shared, else n_shared_experts
        expert widths; 0 without shared experts)."""
        moe = self.moe
        return moe.n_shared_experts * self.expert_dim if moe.d_shared is None else moe.d_shared

    @property
    def has_qkv_bias(self) -> bool:
        return self.use_bias if self.qkv_bias is None else self.qkv_bias

    @property
    def has_out_bias(self) -> bool:
        return self.use_bias if self.out_bias is None else self.out_bias

    @property
    def has_mlp_bias(self) -> bool:
        return self.use_bias if self.mlp_bias is None else self.mlp_bias

    @property
    def rotary_dim(self) -> int:
        """Dims of each head that RoPE rotates (the first ones)."""
        return int(self.dim_head * self.rotary_fraction)

    @property
    def mask_window(self) -> int | None:
        """The window of the mask every layer starts from: attention_window, or None when some
        layers are global (global_every; the local ones narrow it themselves)."""
        return self.attention_window if self.global_every is None else None

    def is_local(self, layer: int) -> bool:
        """Whether `layer` attends within attention_window (every layer when not alternating)."""
        if self.global_every is None:
            return self.attention_window is not None
        return (layer + 1) % self.global_every != 0

    @property
    def padded_vocab_size(self) -> int:
        return round_up(self.vocab_size, self.vocab_multiple)
