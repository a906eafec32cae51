"""Harness throughput: log-likelihood scoring of a multiple-choice task, llmjax against
lm-evaluation-harness's `hf` backend on the same weights.

    python -m experiments.bench_eval                 # nano preset, 1,000 items x 4 choices
    python -m experiments.bench_eval --quick         # test-tiny, 40 items

A run of the preset with a BPE tokenizer (trained on the built-in corpus; one optimizer step,
since speed does not depend on the weights) is exported to Hugging Face form. The task's items
are lm-eval loglikelihood requests (context, " " + choice), as a multiple-choice task makes
them; the same requests are scored by

  llmjax     llmjax.lm_eval.LlmjaxLM.loglikelihood (llmjax.eval's TokenScorer, jit-compiled)
  hf         lm_eval.models.huggingface.HFLM.loglikelihood (PyTorch, float32, CPU)

at the same batch size, alternately (llmjax, hf, llmjax, hf ...), so that a busy spell of a
shared machine slows both alike; the time of a repeat includes llmjax's compilation in the
first repeat only (the first repeat is reported apart). The log-likelihoods are checked equal
(largest difference reported). Prints one JSON object and writes results/bench_eval/.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from llmjax.config import ConfigError, apply_overrides, get_preset
from llmjax.results import experiment_parser, write_results

TARGETS = {"time_ratio_max": 0.5}  # llmjax's scoring time at most half of hf's
FULL = {"preset": "nano", "items": 1000, "choices": 4, "repeats": 3}
QUICK = {"preset": "test-tiny", "items": 40, "choices": 4, "repeats": 2}


def parse_args(argv: list[str] | None):
    parser = experiment_parser(__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32, help="rows per batch (both)")
    parser.add_argument("--items", type=int, default=None, help="task items (default: 1000)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats of each")
    args = parser.parse_args(argv)
    for name in ("batch_size", "items", "repeats"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')}={value} is out of range; valid: >= 1")
    return args


def _requests(rng: np.random.Generator, words: list[str], items: int, choices: int) -> list:
    from lm_eval.api.instance import Instance

    out = []
    for i in range(items):
        context = " ".join(rng.choice(words, size=int(rng.integers(8, 20))))
        for j in range(choices):
            choice = " ".join(rng.choice(words, size=int(rng.integers(1, 5))))
            out.append(Instance("loglikelihood", {}, (context, " " + choice), j,
                                ("bench", i, 1)))  # fmt: skip
    return out


def _build(preset: str, root: Path) -> tuple[Path, Path, list[str]]:
    from llmjax import fit
    from llmjax.data.corpus import default_corpus
    from llmjax.hf import convert_to_hf

    cfg = apply_overrides(get_preset(preset), [
        "data.tokenizer=bpe", "data.bpe_vocab_size=2048", "train.steps=1", "train.eval_every=1",
        "train.eval_batches=1", "train.mfu=false", "train.checkpoint_every=1"])  # fmt: skip
    fit(cfg, root / "run", progress=False)
    convert_to_hf(root / "run", root / "hf")
    text = default_corpus().data[:200_000].decode(errors="ignore")
    words = sorted({w for w in text.split() if w.isalpha()})
    return root / "run", root / "hf", words


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    s = dict(QUICK if args.quick else FULL)
    s["items"] = args.items or s["items"]
    s["repeats"] = args.repeats or s["repeats"]
    try:
        import torch
        from lm_eval.models.huggingface import HFLM

        import llmjax.lm_eval as adapter
    except ImportError as e:
        message = f"bench_eval needs lm-eval[hf] and torch ({e}); pip install 'lm-eval[hf]'"
        raise SystemExit(message) from None
    with tempfile.TemporaryDirectory() as tmp:
        run, hf_dir, words = _build(s["preset"], Path(tmp))
        requests = _requests(np.random.default_rng(0), words, s["items"], s["choices"])
        ours = adapter.LlmjaxLM(run=str(run), batch_size=args.batch_size)
        theirs = HFLM(pretrained=str(hf_dir), batch_size=args.batch_size, device="cpu",
                      dtype="float32")  # fmt: skip
        times: dict[str, list[float]] = {"llmjax": [], "hf": []}
        results: dict[str, list] = {}
        for _ in range(s["repeats"] + 1):  # the first repeat: llmjax compiles
            for name, lm in (("llmjax", ours), ("hf", theirs)):
                t0 = time.perf_counter()
                results[name] = lm.loglikelihood(requests, disable_tqdm=True)
                times[name].append(time.perf_counter() - t0)
    diff = max(abs(a[0] - b[0]) for a, b in zip(results["llmjax"], results["hf"], strict=True))
    median = {k: float(np.median(v[1:])) for k, v in times.items()}
    ratio = median["llmjax"] / median["hf"]
    report = {
        "preset": s["preset"],
        "items": s["items"],
        "requests": len(requests),
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "first_s": {k: round(v[0], 3) for k, v in times.items()},
        "median_s": {k: round(v, 3) for k, v in median.items()},
        "requests_per_s": {k: round(len(requests) / v, 1) for k, v in median.items()},
        "time_ratio": round(ratio, 3),
        "max_abs_loglik_diff": diff,
        "targets": TARGETS,
        "target_met": ratio <= TARGETS["time_ratio_max"],
    }
    print(json.dumps(report))
    rows = [{"backend": k, "median_s": round(median[k], 3), "first_s": round(times[k][0], 3),
             "requests_per_s": report["requests_per_s"][k]} for k in times]  # fmt: skip
    write_results("bench_eval", report, rows=rows, out_dir=args.out_dir, quick=args.quick)
    return report


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except ConfigError as e:
        raise SystemExit(f"bench_eval: error: {e}") from None
