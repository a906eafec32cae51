"""The `model.moe` section: a mixture-of-experts MLP in place of the dense one."""

from __future__ import annotations

from dataclasses import dataclass

from llmjax.config.checks import check, check_finite, check_positive


@dataclass(frozen=True)
class MoEConfig:
    """A mixture-of-experts MLP in place of the dense one (llmjax.layers.moe).

    Each token's router picks `top_k` of `n_experts` expert MLPs (each the model's `mlp` kind,
    `d_expert` wide) and sums their outputs weighted by its gates; `n_shared_experts` more run
    on every token, as one MLP `d_shared` wide (default: n_shared_experts expert widths), its
    output scaled per token by sigmoid(x . w) when `shared_gate` is set (Qwen2-MoE).
    Computation is dropless: no token is ever dropped for capacity. Layer i (from 0) is an MoE
    layer when i >= first_dense and (i - first_dense) % every == 0.
    """

    n_experts: int = 0  # 0: dense MLPs everywhere
    top_k: int = 2
    router: str = "softmax"  # softmax (Switch, Mixtral) or sigmoid (DeepSeek-V3) scores
    # Gates are the chosen scores divided by their sum (Mixtral, DeepSeek-V3); false: the raw
    # scores (Switch with top_k=1).
    renormalize: bool = True
    n_shared_experts: int = 0
    d_shared: int | None = None  # None: n_shared_experts * the experts' width
    shared_gate: bool = False  # a sigmoid gate per token on the shared MLP's output (Qwen2-MoE)
    d_expert: int | None = None  # None: the dense MLP's width (model.d_ff)
    aux_loss_coef: float = 0.01  # the load-balancing loss (Switch uses 0.01)
    z_loss_coef: float = 0.001  # the router z-loss (ST-MoE uses 0.001)
    every: int = 1  # every n-th layer is MoE (Switch and GShard: 2)
    first_dense: int = 0  # dense layers before the first MoE layer (DeepSeek: 1 to 3)
    # How the experts' matmuls run over tokens sorted by expert (llmjax.layers.grouped): "cpu"
    # (llmjax's C++ grouped matmul: one CPU device), "blocks" (groups padded to block_size
    # rows, one batched matmul), "ragged" (jax.lax.ragged_dot: a grouped GEMM on GPU and TPU;
    # XLA:CPU computes every expert on every row) or "auto": cpu where it serves, else blocks.
    kernel: str = "auto"
    block_size: int = 64

    def __post_init__(self):
        section = "model.moe"
        check(
            isinstance(self.n_experts, int) and self.n_experts >= 0,
            f"{section}.n_experts must be an integer >= 1 (0 turns MoE off), got "
            f"{self.n_experts!r}",
        )
        check_positive(self, "top_k", "d_expert", "d_shared", "every", "block_size",
                       section=section)  # fmt: skip
        check_finite(self, "aux_loss_coef", "z_loss_coef", section=section)
        if self.n_experts:
            check(
                self.top_k <= self.n_experts,
                f"{section}.top_k={self.top_k} is more than n_experts={self.n_experts}; each "
                f"token picks top_k distinct experts (e.g. top_k=2)",
            )
        check(
            isinstance(self.n_shared_experts, int) and self.n_shared_experts >= 0,
            f"{section}.n_shared_experts must be an integer >= 0, got {self.n_shared_experts!r}",
        )
        check(
            self.n_shared_experts or (self.d_shared is None and not self.shared_gate),
            f"{section}.d_shared and shared_gate shape the shared experts, and n_shared_experts "
            f"is 0; set n_shared_experts=1 (or more) to have them",
        )
        check(
            isinstance(self.first_dense, int) and self.first_dense >= 0,
            f"{section}.first_dense must be an integer >= 0, got {self.first_dense!r}",
        )
        check(
            self.aux_loss_coef >= 0 and self.z_loss_coef >= 0,
            f"{section}.aux_loss_coef and z_loss_coef must be >= 0 (0 turns a loss off), got "
            f"{self.aux_loss_coef} and {self.z_loss_coef}",
        )

    @property
    def enabled(self) -> bool:
        return self.n_experts > 0

    def is_moe_layer(self, i: int) -> bool:
        return self.enabled and i >= self.first_dense and (i - self.first_dense) % self.every == 0
