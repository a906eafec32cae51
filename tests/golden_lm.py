"""A fixed next-token LM run whose final params are pinned by a golden file.

The golden file was written by the training code as it was before objectives were pluggable;
`test_objectives.py` reruns the same run through today's loop and compares every leaf bit for
bit. Rewrite it (only after checking why it changed) with

    python -m tests.golden_lm --write
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

GOLDEN = Path(__file__).parent / "data" / "golden_lm_fit.json"


def corpus(path: Path) -> Path:
    import numpy as np

    rng = np.random.default_rng(7)
    words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota"]
    path.write_text("\n".join(" ".join(rng.choice(words, 9)) for _ in range(600)))
    return path


def overrides(data: Path) -> list[str]:
    """Dropout, z-loss, gradient accumulation, a masked eval and two checkpoints."""
    return [
        f"data.path={data}",
        "data.tokenizer=char",
        "data.batch_size=4",
        "model.dropout=0.1",
        "train.z_loss=1e-3",
        "train.grad_accum=2",
        "train.steps=6",
        "train.eval_every=3",
        "train.eval_batches=2",
        "train.checkpoint_every=3",
        "train.log_every=2",
        "train.mfu=false",
    ]


def leaf_digests(params) -> dict[str, dict]:
    """Per leaf: sha256 of its float32 bytes, its sum and first values (to show how far)."""
    import jax
    import numpy as np

    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(params)):
        x = np.ascontiguousarray(np.asarray(leaf, np.float32))
        out[jax.tree_util.keystr(path)] = {
            "sha256": hashlib.sha256(x.tobytes()).hexdigest(),
            "shape": list(x.shape),
            "sum": float(x.sum(dtype=np.float64)),
            "head": [float(v) for v in x.ravel()[:3]],
        }
    return out


def run(tmp: Path) -> dict:
    """Trains the pinned run in `tmp` and returns what the golden file records."""
    import jax
    import jaxlib

    import llmjax

    cfg = llmjax.apply_overrides(llmjax.get_preset("test-tiny"), overrides(corpus(tmp / "c.txt")))
    result = llmjax.fit(cfg, tmp / "run", progress=False)
    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "history": [{k: r[k] for k in ("step", "split", "loss") if k in r} for r in result.history],
        "final_eval": {k: result.final_eval[k] for k in ("loss", "accuracy", "tokens")},
        "params": leaf_digests(result.state.params),
    }


if __name__ == "__main__":
    import tempfile

    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.golden_lm --write")
    # The test suite's flags (tests/conftest.py): the same compiled programs, the same bits.
    import tests.conftest  # noqa: F401

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LLMJAX_CACHE_DIR"] = tmp + "/cache"
        record = run(Path(tmp))
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {GOLDEN}: {len(record['params'])} leaves")
