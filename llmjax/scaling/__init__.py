"""Scaling: what a model costs to train (parameters, FLOPs, MFU) and scaling laws fitted to runs."""

from llmjax.scaling.cost import (
    ENV_PEAK,
    PEAK_BF16_FLOPS,
    PEAK_CACHE_FILE,
    ParamCounts,
    attention_flops_per_token,
    forward_flops_per_token,
    matmul_params,
    measure_matmul_peak,
    measured_matmul_peak,
    mfu,
    param_counts,
    peak_flops,
    table_peak,
    train_flops_per_token,
)

__all__ = [
    "ENV_PEAK",
    "PEAK_BF16_FLOPS",
    "PEAK_CACHE_FILE",
    "ParamCounts",
    "attention_flops_per_token",
    "forward_flops_per_token",
    "matmul_params",
    "measure_matmul_peak",
    "measured_matmul_peak",
    "mfu",
    "param_counts",
    "peak_flops",
    "table_peak",
    "train_flops_per_token",
]
