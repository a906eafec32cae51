"""The data, optimizer, training and parallelism sections of a config, and the whole Config.

Names of registered things (optimizer, schedule, parallel mode, objective) are checked where
they are built, by their registries; what is checked here needs nothing but the values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmjax.config.align import PreferenceConfig, RLConfig
from llmjax.config.checks import check, check_choice, check_finite, check_positive
from llmjax.config.model import ModelConfig
from llmjax.errors import ConfigError

# Dynamic loss scaling: auto (on for model.dtype=float16), dynamic (always), none.
LOSS_SCALE_MODES = ("auto", "dynamic", "none")
# Which tokens validate: the last val_fraction of the stream, or documents drawn by hash.
VAL_SPLITS = ("tail", "documents")


@dataclass(frozen=True)
class DataConfig:
    """Where the text comes from, how it is tokenized and batched."""

    # A text file or folder, JSONL, Parquet, a dataset saved with save_to_disk, or hf:NAME[:CONFIG]
    # (a hub dataset in the local cache); None: the built-in corpus (this interpreter's stdlib)
    path: str | None = None
    # How path is read: auto (from its name), text, jsonl, parquet or datasets
    format: str = "auto"
    text_field: str = "text"  # JSONL, Parquet, datasets: the field that holds a record's text
    dataset_split: str = "train"  # datasets: the split to read
    streaming: bool = False  # datasets: read rows as an IterableDataset
    tokenizer: str = "byte"  # byte | char | bpe | path to a tokenizer.json
    bpe_vocab_size: int = 4096
    seq_len: int | None = None  # None: model.max_seq_len
    batch_size: int = 12
    val_fraction: float = 0.1
    # Which tokens validate: tail (the last val_fraction of the token stream, nanoGPT's way) or
    # documents (each file or record by a hash of it, drawn from the whole corpus)
    val_split: str = "tail"
    cache_dir: str | None = None

    def __post_init__(self):
        check_positive(self, "bpe_vocab_size", "seq_len", "batch_size", section="data")
        check_finite(self, "val_fraction", section="data")
        check(
            0.0 < self.val_fraction < 1.0,
            f"data.val_fraction must be in (0, 1), got {self.val_fraction}",
        )
        check_choice("data.val_split", self.val_split, VAL_SPLITS)
        check(
            bool(self.text_field) and bool(self.dataset_split),
            "data.text_field and data.dataset_split must not be empty (defaults: text, train)",
        )


MUON_PRECONDITIONING = ("frobenius", "spectral", "aol", "schatten")


@dataclass(frozen=True)
class MuonConfig:
    """Settings only Muon reads (optim.name=muon); its momentum is optim.momentum."""

    adam_lr: float | None = None  # peak lr of the Adam part (embeddings, norms; None: optim.lr)
    # Newton-Schulz iterations that orthogonalize each update (fewer: a cheaper step, a
    # rougher orthogonalization)
    ns_steps: int = 5
    # How each update is scaled before the iterations: "frobenius" (by its Frobenius norm),
    # "spectral", or "aol"/"schatten", which rescale inside the first iteration from the Gram
    # matrix it computes anyway (optax's `preconditioning`)
    preconditioning: str = "frobenius"

    def __post_init__(self):
        check_finite(self, "adam_lr", section="optim.muon")
        check(self.ns_steps >= 1, f"optim.muon.ns_steps must be >= 1, got {self.ns_steps}")
        check_choice("optim.muon.preconditioning", self.preconditioning, MUON_PRECONDITIONING)
        check(
            self.adam_lr is None or self.adam_lr > 0,
            f"optim.muon.adam_lr must be > 0 or none, got {self.adam_lr}",
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
    # Steps the lr schedule spans (None: train.steps). A new run saves the value it used, so a
    # resumed run with more train.steps keeps its schedule unless this is set anew.
    schedule_steps: int | None = None
    b1: float = 0.9
    b2: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 0.1
    momentum: float = 0.9  # sgd and muon
    clip_norm: float | None = 1.0
    decay_embeddings: bool = False
    muon: MuonConfig = field(default_factory=MuonConfig)

    def __post_init__(self):
        check_finite(
            self,
            "lr",
            "min_lr_ratio",
            "decay_fraction",
            "b1",
            "b2",
            "eps",
            "weight_decay",
            "momentum",
            "clip_norm",
            section="optim",
        )
        check(self.lr > 0, f"optim.lr must be > 0 (e.g. 1e-3), got {self.lr}")
        check(self.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        check_positive(self, "schedule_steps", section="optim")
        check(
            0.0 <= self.min_lr_ratio <= 1.0,
            f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}",
        )
        check(
            0.0 <= self.decay_fraction <= 1.0,
            f"optim.decay_fraction must be in [0, 1], got {self.decay_fraction}",
        )
        check(
            0.0 <= self.b1 < 1.0 and 0.0 <= self.b2 < 1.0,
            f"optim.b1 and b2 must be in [0, 1) (e.g. 0.9 and 0.99), got {self.b1} and {self.b2}",
        )
        # Adam divides by sqrt(v) + eps: with eps=0 a param whose gradient is exactly zero (an
        # unused vocabulary row) gets 0/0 = nan.
        check(self.eps > 0, f"optim.eps must be > 0 (e.g. 1e-8), got {self.eps}")
        check(
            0.0 <= self.momentum < 1.0,
            f"optim.momentum must be in [0, 1) (0: none for sgd; e.g. 0.9), got {self.momentum}",
        )
        check(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        check(
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
    loss_scale: str = "auto"  # one of LOSS_SCALE_MODES
    loss_scale_init: float = 32768.0
    loss_scale_growth_interval: int = 2000  # finite steps in a row before the scale doubles
    mfu: bool = True  # log model FLOPs utilization (on CPU this times a matmul once)
    # A run directory (trained, or made by `llmjax convert`) whose newest params this run starts
    # from, with a fresh optimizer: fine-tuning. Empty: random init. Ignored on resume.
    init_from: str = ""
    # The registered objective a step differentiates (llmjax.objectives): "lm" is next-token
    # prediction.
    objective: str = "lm"
    # Which params the optimizer updates: a regular expression searched in each param's path
    # ("blocks/attention/query_kernel"); the others stay as they are. Empty: all params.
    trainable: str = ""
    # Where records go besides metrics.jsonl: comma-separated names of llmjax.train.loggers
    # (tensorboard, wandb), e.g. "tensorboard,wandb". Empty: metrics.jsonl alone.
    loggers: str = ""

    def __post_init__(self):
        check_positive(
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
            section="train",
        )
        check_finite(self, "z_loss", "loss_scale_init", section="train")
        check(
            isinstance(self.seed, int) and self.seed >= 0,
            f"train.seed must be an integer >= 0, got {self.seed!r}",
        )
        check(self.z_loss >= 0, f"train.z_loss must be >= 0, got {self.z_loss}")
        check_choice("train.loss_scale", self.loss_scale, LOSS_SCALE_MODES)
        check(
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

        try:
            parse_mesh(self.mesh)
        except MeshError as e:
            raise ConfigError(f"parallel.mesh: {e}") from None
        check(
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
    """Everything a run needs: model, data, optimizer and training settings, and those of the
    alignment objectives."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)
    rl: RLConfig = field(default_factory=RLConfig)

    def __post_init__(self):
        check(
            self.data.batch_size % self.train.grad_accum == 0,
            f"data.batch_size={self.data.batch_size} is not divisible by "
            f"train.grad_accum={self.train.grad_accum}; each micro-batch must have the same size",
        )
        check(
            self.seq_len <= self.model.max_seq_len or self.model.position != "learned",
            f"data.seq_len={self.seq_len} is longer than the learned position table "
            f"(model.max_seq_len={self.model.max_seq_len}); lower data.seq_len or raise "
            f"model.max_seq_len",
        )

    @property
    def seq_len(self) -> int:
        return self.data.seq_len or self.model.max_seq_len
