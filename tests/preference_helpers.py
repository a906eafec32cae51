"""What the preference tests share: a tiny pretrained run to start from, fake models whose
log-probs and values are table lookups (closed forms by hand), and their numpy references."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np

CONTEXT = 96  # room for a built-in pair's longer side in bytes
# Settings of the short preference runs the tests make.
RUN_SET = [
    "optim.lr=3e-3",
    "optim.warmup_steps=0",
    "train.mfu=false",
    "train.log_every=5",
    "data.batch_size=16",
]


def base_run(tmp: Path, corpus: Path) -> Path:
    """A test-tiny run (byte tokenizer, context CONTEXT) trained 2 steps on `corpus`."""
    from llmjax import fit
    from llmjax.config import apply_overrides, get_preset

    cfg = apply_overrides(
        get_preset("test-tiny"),
        [
            f"data.path={corpus}",
            f"model.max_seq_len={CONTEXT}",
            "train.steps=2",
            "train.eval_every=2",
            "train.eval_batches=1",
            "train.mfu=false",
        ],
    )
    fit(cfg, tmp / "base", progress=False)
    return tmp / "base"


class TableModel:
    """A fake model: the logits after token x are params["logits"][x] (a V x V table), and its
    value there params["value"][x]."""

    def apply(self, variables, inputs, positions=None, segments=None, **_):
        params = variables["params"]
        return SimpleNamespace(
            logits=params["logits"][inputs], aux={"value": params["value"][inputs]}
        )


def table_params(rng: np.random.Generator, vocab: int, scale: float = 1.0) -> dict:
    return {
        "logits": jnp.asarray(rng.normal(0, scale, (vocab, vocab)), jnp.float32),
        "value": jnp.asarray(rng.normal(0, scale, vocab), jnp.float32),
    }


def pair_batch(rng: np.random.Generator, vocab: int, b: int = 4, t: int = 6) -> dict:
    """Random pair rows with masks covering a random tail of each row's first tokens."""
    out = {}
    for side in ("chosen", "rejected"):
        out[f"{side}_inputs"] = rng.integers(0, vocab, (b, t)).astype(np.int32)
        out[f"{side}_targets"] = rng.integers(0, vocab, (b, t)).astype(np.int32)
        mask = np.zeros((b, t), np.float32)
        for i in range(b):
            start, end = sorted(rng.choice(np.arange(t + 1), 2, replace=False))
            mask[i, start : max(end, start + 1)] = 1.0
        out[f"{side}_mask"] = mask
    return out


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return (
        x
        - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - x.max(-1, keepdims=True)
    )


def np_sequence_logps(params: dict, batch: dict, side: str) -> np.ndarray:
    """Sum over masked targets of log softmax(table[input])[target], in float64."""
    table = np_log_softmax(np.asarray(params["logits"]))
    lp = table[batch[f"{side}_inputs"], batch[f"{side}_targets"]]
    return (lp * batch[f"{side}_mask"]).sum(1)


def np_last_values(params: dict, batch: dict, side: str) -> np.ndarray:
    """The value at each row's last masked position."""
    mask = batch[f"{side}_mask"]
    last = np.asarray([np.flatnonzero(m)[-1] for m in mask])
    inputs = batch[f"{side}_inputs"][np.arange(len(mask)), last]
    return np.asarray(params["value"], np.float64)[inputs]


def log_sigmoid(x):
    return -np.logaddexp(0.0, -np.asarray(x, np.float64))


def jnp_batch(batch: dict) -> dict:
    return jax.tree.map(jnp.asarray, batch)
