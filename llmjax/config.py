"""Frozen, validated configs for model, data, optimizer and training; named presets; overrides."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from llmjax.errors import ConfigError

DTYPES = ("float32", "bfloat16", "float16")
NORM_POSITIONS = ("pre", "post")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None:
            _check(
                isinstance(value, int) and value > 0,
                f"{type(obj).__name__}.{name} must be a positive integer, got {value!r}",
            )


def _check_choice(owner: str, name: str, value: str, registry_or_choices) -> None:
    choices = (
        registry_or_choices.names()
        if hasattr(registry_or_choices, "names")
        else list(registry_or_choices)
    )
    _check(
        value in choices,
        f"{owner}.{name}={value!r} is not known; valid choices: {', '.join(choices)}",
    )


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
        from llmjax.layers.positions import ROPE_SCALING_CHECKS, ROPE_SCALINGS

        _check_choice("RopeScaling", "kind", self.kind, ROPE_SCALINGS)
        _check(
            self.factor >= 1.0,
            f"RopeScaling.factor must be >= 1 (it stretches the context), got {self.factor}",
        )
        _check(
            self.high_freq_factor > self.low_freq_factor,
            f"RopeScaling.high_freq_factor ({self.high_freq_factor}) must be larger than "
            f"low_freq_factor ({self.low_freq_factor}); Llama 3 uses 4.0 and 1.0",
        )
        _check_positive(self, "original_max_seq_len")
        problem = ROPE_SCALING_CHECKS.get(self.kind, lambda _: None)(self)
        _check(problem is None, str(problem))


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
    position: str = "learned"
    rope_theta: float = 10_000.0
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    attention: str = "xla"
    attention_window: int | None = None  # sliding-window size in tokens; None: full causal
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
    remat: str = "none"
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"

    def __post_init__(self):
        from llmjax.attention import ATTENTION
        from llmjax.layers.mlp import MLPS
        from llmjax.layers.norms import NORMS
        from llmjax.layers.positions import POSITIONS
        from llmjax.models import MODELS, REMAT_POLICIES

        _check_positive(
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
            "scan_unroll",
        )
        if self.head_dim is None:
            nearest = self.n_heads * max(1, round(self.d_model / self.n_heads))
            _check(
                self.d_model % self.n_heads == 0,
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; choose "
                f"d_model as a multiple of n_heads (e.g. {nearest}) or set head_dim explicitly",
            )
        _check(
            self.n_heads % self.kv_heads == 0,
            f"n_kv_heads={self.kv_heads} does not divide n_heads={self.n_heads}; each kv head "
            f"serves a whole group of query heads (use a divisor of {self.n_heads})",
        )
        _check_choice("ModelConfig", "arch", self.arch, MODELS)
        _check_choice("ModelConfig", "mlp", self.mlp, MLPS)
        _check_choice("ModelConfig", "norm", self.norm, NORMS)
        _check_choice("ModelConfig", "norm_position", self.norm_position, NORM_POSITIONS)
        _check_choice("ModelConfig", "position", self.position, POSITIONS)
        _check_choice("ModelConfig", "attention", self.attention, ATTENTION)
        _check_choice("ModelConfig", "remat", self.remat, REMAT_POLICIES)
        _check_choice("ModelConfig", "dtype", self.dtype, DTYPES)
        _check_choice("ModelConfig", "param_dtype", self.param_dtype, DTYPES)
        if self.position == "rope":
            _check(
                self.dim_head % 2 == 0,
                f"RoPE rotates pairs of dimensions, so head_dim must be even; got "
                f"head_dim={self.dim_head} (d_model={self.d_model}, n_heads={self.n_heads})",
            )
        _check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        _check(self.norm_eps > 0, f"norm_eps must be > 0, got {self.norm_eps}")
        _check(self.init_std > 0, f"init_std must be > 0, got {self.init_std}")
        _check(self.rope_theta > 0, f"rope_theta must be > 0, got {self.rope_theta}")

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
        if self.mlp == "swiglu":
            return _round_up(int(8 * self.d_model / 3), 64)
        return 4 * self.d_model

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
    def padded_vocab_size(self) -> int:
        return _round_up(self.vocab_size, self.vocab_multiple)


@dataclass(frozen=True)
class DataConfig:
    """Where the text comes from, how it is tokenized and batched."""

    path: str | None = None  # None: the built-in corpus (this interpreter's stdlib source)
    tokenizer: str = "byte"  # byte | char | bpe | path to a tokenizer.json
    bpe_vocab_size: int = 4096
    seq_len: int | None = None  # None: model.max_seq_len
    batch_size: int = 12
    val_fraction: float = 0.1
    cache_dir: str | None = None

    def __post_init__(self):
        _check_positive(self, "bpe_vocab_size", "seq_len", "batch_size")
        _check(
            0.0 < self.val_fraction < 1.0,
            f"data.val_fraction must be in (0, 1), got {self.val_fraction}",
        )


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer, learning-rate schedule and clipping."""

    name: str = "adamw"
    lr: float = 1e-3
    schedule: str = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio
    decay_fraction: float = 0.2  # warmup-stable-decay: share of steps spent decaying
    b1: float = 0.9
    b2: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 0.1
    momentum: float = 0.9  # sgd and muon
    muon_adam_lr: float | None = None  # muon: peak lr of the Adam part (None: lr)
    # muon: Newton-Schulz iterations that orthogonalize each update (fewer: a cheaper step, a
    # rougher orthogonalization)
    muon_ns_steps: int = 5
    clip_norm: float | None = 1.0
    decay_embeddings: bool = False

    def __post_init__(self):
        from llmjax.train.optim import OPTIMIZERS, SCHEDULES

        _check_choice("optim", "name", self.name, OPTIMIZERS)
        _check_choice("optim", "schedule", self.schedule, SCHEDULES)
        _check(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        _check(self.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        _check(
            0.0 <= self.min_lr_ratio <= 1.0,
            f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}",
        )
        _check(
            0.0 <= self.decay_fraction <= 1.0,
            f"optim.decay_fraction must be in [0, 1], got {self.decay_fraction}",
        )
        _check(0.0 <= self.b1 < 1.0 and 0.0 <= self.b2 < 1.0, "optim.b1 and b2 must be in [0, 1)")
        _check(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        _check(
            self.muon_ns_steps >= 1, f"optim.muon_ns_steps must be >= 1, got {self.muon_ns_steps}"
        )
        _check(
            self.clip_norm is None or self.clip_norm > 0,
            f"optim.clip_norm must be > 0 or none, got {self.clip_norm}",
        )


@dataclass(frozen=True)
class TrainConfig:
    """Length of training, evaluation, logging and checkpointing cadence."""

    steps: int = 2000
    seed: int = 0
    eval_every: int = 250
    eval_batches: int = 20
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    z_loss: float = 0.0
    max_nonfinite: int = 10  # this many non-finite steps in a row stop the run
    # Micro-batches per optimizer step (data.batch_size is split into this many, summed in a
    # lax.scan inside the step; the loss is normalized by the total token count).
    grad_accum: int = 1
    # Dynamic loss scaling: auto (on for model.dtype=float16), dynamic (always), none.
    loss_scale: str = "auto"
    loss_scale_init: float = 32768.0
    loss_scale_growth_interval: int = 2000  # finite steps in a row before the scale doubles
    mfu: bool = True  # log model FLOPs utilization (on CPU this times a matmul once)
    # A run directory (trained, or made by `llmjax convert`) whose newest params this run starts
    # from, with a fresh optimizer: fine-tuning. Empty: random init. Ignored on resume.
    init_from: str = ""

    def __post_init__(self):
        from llmjax.train.precision import LOSS_SCALE_MODES

        _check_positive(
            self,
            "steps",
            "eval_every",
            "eval_batches",
            "log_every",
            "checkpoint_every",
            "keep_checkpoints",
            "max_nonfinite",
            "grad_accum",
            "loss_scale_growth_interval",
        )
        _check(self.z_loss >= 0, f"train.z_loss must be >= 0, got {self.z_loss}")
        _check_choice("train", "loss_scale", self.loss_scale, LOSS_SCALE_MODES)
        _check(
            self.loss_scale_init >= 1.0,
            f"train.loss_scale_init must be >= 1, got {self.loss_scale_init}",
        )


@dataclass(frozen=True)
class ParallelConfig:
    """How a step is spread over devices: none (one device), mesh (jit + shardings), pmap."""

    mode: str = "auto"  # auto: mesh if a mesh is given, else none
    # Mesh axis sizes, e.g. "data=2,fsdp=2,tensor=2" (axes: data, fsdp, sequence, tensor; one
    # may be -1 for the rest). Empty: every device on data (in mesh mode).
    mesh: str = ""

    def __post_init__(self):
        from llmjax.sharding import MeshError, parse_mesh
        from llmjax.train.parallel import PARALLELISM

        _check_choice("parallel", "mode", self.mode, ["auto", *PARALLELISM.names()])
        try:
            parse_mesh(self.mesh)
        except MeshError as e:
            raise ConfigError(f"parallel.mesh: {e}") from None
        _check(
            not self.mesh or self.kind == "mesh",
            f"parallel.mesh={self.mesh!r} needs parallel.mode=mesh (or auto), not {self.mode!r}",
        )

    @property
    def kind(self) -> str:
        """The parallel mode in effect (auto resolved)."""
        if self.mode != "auto":
            return self.mode
        return "mesh" if self.mesh else "none"


@dataclass(frozen=True)
class Config:
    """Everything a run needs: model, data, optimizer and training settings."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def __post_init__(self):
        _check(
            self.data.batch_size % self.train.grad_accum == 0,
            f"data.batch_size={self.data.batch_size} is not divisible by "
            f"train.grad_accum={self.train.grad_accum}; each micro-batch must have the same size",
        )
        _check(
            self.seq_len <= self.model.max_seq_len or self.model.position != "learned",
            f"data.seq_len={self.seq_len} is longer than the learned position table "
            f"(model.max_seq_len={self.model.max_seq_len}); lower data.seq_len or raise "
            f"model.max_seq_len",
        )

    @property
    def seq_len(self) -> int:
        return self.data.seq_len or self.model.max_seq_len


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


# ----------------------------------------------------------------------------- presets

PRESETS: dict[str, Config] = {
    "test-tiny": Config(
        model=ModelConfig(max_seq_len=32, d_model=32, n_layers=2, n_heads=4, d_ff=64),
        data=DataConfig(batch_size=4),
        optim=OptimConfig(warmup_steps=2),
        train=TrainConfig(
            steps=20, eval_every=10, eval_batches=2, log_every=5, checkpoint_every=10
        ),
    ),
    # nanoGPT's CPU shape (4 layers, 4 heads, d=128, ctx 64, batch 12, no biases).
    "nano": Config(
        model=ModelConfig(
            max_seq_len=64, d_model=128, n_layers=4, n_heads=4, use_bias=False, scan_unroll=4
        ),
        data=DataConfig(batch_size=12),
        optim=OptimConfig(lr=1e-3, warmup_steps=100, min_lr_ratio=0.1, b2=0.99),
        train=TrainConfig(steps=2000),
    ),
    # The nano shape and batch with RoPE, Muon and a short schedule, characters as tokens: on
    # tiny Shakespeare (--data tinyshakespeare.txt) it reaches val loss ~1.83 in 400 steps, where
    # nanoGPT's AdamW recipe needs ~2000 for 1.89. Evaluates once, on the whole val split.
    "shakespeare-char": Config(
        model=ModelConfig(
            max_seq_len=64,
            d_model=128,
            n_layers=4,
            n_heads=4,
            use_bias=False,
            position="rope",
            scan_unroll=4,
        ),
        data=DataConfig(tokenizer="char", batch_size=12),
        optim=OptimConfig(name="muon", lr=1e-2, momentum=0.95, warmup_steps=30, b2=0.99),
        train=TrainConfig(steps=400, eval_every=400, eval_batches=10_000, checkpoint_every=400),
    ),
    # nanoGPT's shakespeare GPU shape (6 layers, 6 heads, d=384, ctx 256, batch 64).
    "medium": Config(
        model=ModelConfig(max_seq_len=256, d_model=384, n_layers=6, n_heads=6, use_bias=False),
        data=DataConfig(batch_size=64),
        optim=OptimConfig(lr=1e-3, warmup_steps=100, b2=0.99),
        train=TrainConfig(steps=5000),
    ),
    # GPT-2 124M shape; the vocabulary is padded to a multiple of 64 as nanoGPT does.
    "gpt2-small": Config(
        model=ModelConfig(
            vocab_size=50257,
            vocab_multiple=64,
            max_seq_len=1024,
            d_model=768,
            n_layers=12,
            n_heads=12,
            dropout=0.0,
        ),
        data=DataConfig(batch_size=8, tokenizer="bpe", bpe_vocab_size=50257),
        optim=OptimConfig(lr=6e-4, warmup_steps=700, b2=0.95),
        train=TrainConfig(steps=10000),
    ),
    "llama-tiny": Config(
        model=ModelConfig(
            max_seq_len=128,
            d_model=128,
            n_layers=4,
            n_heads=4,
            n_kv_heads=2,
            mlp="swiglu",
            norm="rmsnorm",
            position="rope",
            use_bias=False,
            tie_embeddings=False,
        ),
        data=DataConfig(batch_size=12),
        optim=OptimConfig(lr=1e-3, warmup_steps=100, b2=0.95),
        train=TrainConfig(steps=2000),
    ),
    # Llama-3.2-1B shape.
    "llama-1b": Config(
        model=ModelConfig(
            vocab_size=128256,
            vocab_multiple=128,
            max_seq_len=2048,
            d_model=2048,
            n_layers=16,
            n_heads=32,
            n_kv_heads=8,
            d_ff=8192,
            mlp="swiglu",
            norm="rmsnorm",
            position="rope",
            rope_theta=500_000.0,
            use_bias=False,
            tie_embeddings=True,
            remat="full",
        ),
        data=DataConfig(batch_size=4, tokenizer="bpe", bpe_vocab_size=32768),
        optim=OptimConfig(lr=3e-4, warmup_steps=2000, b2=0.95),
        train=TrainConfig(steps=100000),
    ),
}


def get_preset(name: str) -> Config:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}") from None


# ----------------------------------------------------------------------------- overrides

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_NONE = {"none", "null"}


def _parse_value(text: str, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if text.strip().lower() in _NONE and type(None) in typing.get_args(annotation):
            return None
        errors = []
        for option in options:
            try:
                return _parse_value(text, option, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError("; ".join(errors))
    if annotation is bool:
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"{where} expects a boolean (true/false), got {text!r}")
    if annotation is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{where} expects an integer, got {text!r}") from None
    if annotation is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{where} expects a number, got {text!r}") from None
    if annotation is str:
        return text
    raise ConfigError(f"{where} cannot be set from the command line (type {annotation})")


def _replace_path(obj: Any, path: list[str], text: str, full: str) -> Any:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    head = path[0]
    if head not in names:
        raise ConfigError(
            f"unknown option {full!r}: {type(obj).__name__} has no field {head!r}; "
            f"valid fields: {', '.join(names)}"
        )
    current = getattr(obj, head)
    if len(path) == 1:
        if dataclasses.is_dataclass(current):
            raise ConfigError(f"{full!r} is a section; set one of its fields, e.g. {full}.<field>")
        value = _parse_value(text, hints[head], full)
    else:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"{'.'.join(full.split('.')[: -len(path) + 1])!r} has no sub-fields")
        value = _replace_path(current, path[1:], text, full)
    return dataclasses.replace(obj, **{head: value})


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """Applies `section.field=value` strings (e.g. `model.n_layers=6`) with type checks."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.field=value")
        key, text = item.split("=", 1)
        cfg = _replace_path(cfg, key.strip().split("."), text.strip(), key.strip())
    return cfg


# ----------------------------------------------------------------------------- serialization


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(
            f"{where}: unknown field(s) {sorted(unknown)}; valid fields: {sorted(names)}"
        )
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = _from_dict(hint, value, f"{where}.{key}")
        kwargs[key] = value
    return cls(**kwargs)


def from_dict(data: dict[str, Any]) -> Config:
    return _from_dict(Config, data, "config")


def save_config(cfg: Config, path) -> None:
    with open(path, "w") as f:
        json.dump(to_dict(cfg), f, indent=2)
        f.write("\n")


def load_config(path) -> Config:
    with open(path) as f:
        return from_dict(json.load(f))
