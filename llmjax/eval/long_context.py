"""What a small model can reach: recall accuracy against distance, and perplexity beyond the
length it was trained at (with or without RoPE scaling)."""

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llmjax.config import ModelConfig, RopeScaling
from llmjax.data import val_batches
from llmjax.data.synthetic import RecallTask
from llmjax.eval.core import evaluate, make_eval_step
from llmjax.models import build_model


def recall_by_distance(
    model_cfg: ModelConfig,
    params: Any,
    task: RecallTask,
    *,
    edges: Sequence[int],
    batches: int,
    batch_size: int,
    seed: int,
) -> list[dict[str, float]]:
    """Recall accuracy per distance bucket [edges[i], edges[i+1]) on fresh sequences (None for
    a bucket no answer fell into)."""
    model = build_model(model_cfg)
    predict = jax.jit(lambda p, x: jnp.argmax(model.apply({"params": p}, x).logits, axis=-1))
    rng = np.random.default_rng(seed)
    hits, dists = [], []
    for _ in range(batches):
        batch = task.batch(rng, batch_size)
        pred = np.asarray(predict(params, batch["inputs"]))
        scored = batch["mask"] > 0
        hits.append(pred[scored] == batch["targets"][scored])
        dists.append(batch["distance"][scored])
    hit, dist = np.concatenate(hits), np.concatenate(dists)
    rows = []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (dist >= low) & (dist < high)
        count = int(inside.sum())
        rows.append(
            {
                "low": int(low),
                "high": int(high),
                "accuracy": float(hit[inside].mean()) if count else None,
                "count": count,
            }
        )
    return rows


def with_rope_scaling(
    model_cfg: ModelConfig, kind: str, factor: float, original_max_seq_len: int
) -> ModelConfig:
    """The same model evaluated with RoPE stretched `factor` times beyond its trained length."""
    scaling = RopeScaling(kind=kind, factor=factor, original_max_seq_len=original_max_seq_len)
    return dataclasses.replace(model_cfg, rope_scaling=scaling)


def perplexity_at(
    model_cfg: ModelConfig,
    params: Any,
    tokens: np.ndarray,
    *,
    seq_len: int,
    batch_size: int,
    max_batches: int,
) -> float:
    """Perplexity over consecutive windows of `seq_len` tokens (every position scored)."""
    eval_step = jax.jit(make_eval_step(build_model(model_cfg)))
    batches = val_batches(tokens, batch_size=batch_size, seq_len=seq_len, max_batches=max_batches)
    return evaluate(eval_step, params, {}, batches)["perplexity"]
