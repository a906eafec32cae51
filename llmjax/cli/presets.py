"""`llmjax presets`: the named configs."""

from __future__ import annotations

import argparse

from llmjax.config import PRESETS


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help="list the named configs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for name, cfg in PRESETS.items():
        m = cfg.model
        print(
            f"{name:12s} {m.n_layers}L {m.n_heads}H d={m.d_model} ctx={m.max_seq_len} "
            f"{m.norm}/{m.mlp}/{m.position} batch={cfg.data.batch_size}"
        )
    return 0
