"""Tokenization throughput and memory: a generated text corpus tokenized into the token cache,
a block at a time, by the byte and the BPE tokenizer.

    python -m experiments.bench_tokenize                  # a 1,000 MB (1 GB) corpus
    python -m experiments.bench_tokenize --size-mb 50     # a smaller one
    python -m experiments.bench_tokenize --quick          # 5 MB

The corpus is a text file of words drawn from a Zipf-like distribution over 20,000 generated
words (with some accented and CJK letters), each followed by a space, a newline (1 in 12) or
a blank line (1 in 100), written to a temporary directory a block at a time. A BPE tokenizer
(4,096 ids) is trained on its first 4 MB. Each tokenizer then runs `prepare_data` on the file
with an empty cache in a fresh process: the file is hashed for the cache key, then read,
tokenized and written to the .npy cache in 8 MiB blocks. Reported per tokenizer: the seconds
of that call and its MB/s (corpus bytes / seconds, MB = 10^6 bytes), the seconds of the
hashing pass alone, the tokens, and the process's peak resident memory (ru_maxrss), with what
importing llmjax had already taken. Prints one JSON object and writes results/bench_tokenize/.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

TARGETS = {"peak_rss_mb_max_at_1gb": 2048}
FULL = {"size_mb": 1000}
QUICK = {"size_mb": 5}
BPE_VOCAB = 4096
BPE_TRAIN_BYTES = 4 * 10**6
_LETTERS = list("abcdefghijklmnopqrstuvwxyz") * 8 + list("éèüöñç日本語文字")
_WORDS = 20_000
_SEPARATORS = (" ", "\n", "\n\n")


def parse_args(argv: list[str] | None):
    from llmjax.results import experiment_parser

    parser = experiment_parser(__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=None, help="corpus size (default 1000)")
    args = parser.parse_args(argv)
    if args.size_mb is not None and args.size_mb <= 0:
        parser.error(f"--size-mb={args.size_mb} is out of range; valid: > 0")
    return args


def write_corpus(path: Path, size: int, seed: int = 0) -> int:
    """Writes `size` bytes of generated text to `path`, about 1 MB at a time; returns its size.

    Each word is followed by a space, or (1 in 12) a newline, or (1 in 100) a blank line."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 10, size=_WORDS)
    words = ["".join(rng.choice(_LETTERS, size=n)) for n in lengths]
    pieces = [(w + sep).encode() for w in words for sep in _SEPARATORS]  # word i, sep j: 3i + j
    weights = 1.0 / np.arange(1, _WORDS + 1) ** 1.1
    written = 0
    with open(path, "wb") as f:
        while written < size:
            chosen = rng.choice(_WORDS, size=200_000, p=weights / weights.sum())
            seps = rng.choice(len(_SEPARATORS), size=len(chosen), p=[0.907, 0.083, 0.01])
            block = b"".join([pieces[i] for i in (3 * chosen + seps).tolist()])[: size - written]
            f.write(block)
            written += len(block)
    return written


def measure(path: str, tokenizer: str, cache_dir: str) -> dict[str, Any]:
    """One tokenizer's run, in a fresh process: the hashing pass, then prepare_data."""
    from llmjax.data import load_tokenizer, prepare_data
    from llmjax.data.documents import file_blocks, sha256_of_blocks

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tok = "byte" if tokenizer == "byte" else load_tokenizer(tokenizer)
    t0 = time.perf_counter()
    sha256_of_blocks(file_blocks(path))
    hash_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    data = prepare_data(path, tok, cache_dir=cache_dir, progress=False)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "hash_s": hash_s,
        "tokens": int(len(data.train) + len(data.val)),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "import_rss_mb": baseline,
    }


def _in_fresh_process(*args: str) -> dict[str, Any]:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(measure, *args).result()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    size_mb = args.size_mb or (QUICK if args.quick else FULL)["size_mb"]
    from llmjax.data import BPETokenizer
    from llmjax.results import write_results

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        size = write_corpus(root / "corpus.txt", int(size_mb * 10**6))
        generate_s = time.perf_counter() - t0
        with open(root / "corpus.txt", "rb") as f:
            sample = f.read(BPE_TRAIN_BYTES)
        t0 = time.perf_counter()
        bpe = BPETokenizer.train(sample, BPE_VOCAB)
        train_s = time.perf_counter() - t0
        bpe_dir = root / "bpe"
        bpe.save(bpe_dir)
        rows = []
        for name, spec in (("byte", "byte"), (f"bpe{BPE_VOCAB}", str(bpe_dir))):
            result = _in_fresh_process(str(root / "corpus.txt"), spec, str(root / f"cache-{name}"))
            rows.append({"tokenizer": name, "mb_per_s": round(size / 1e6 / result["seconds"], 2),
                         "seconds": round(result["seconds"], 2),
                         "hash_s": round(result["hash_s"], 2), "tokens": result["tokens"],
                         "bytes_per_token": round(size / result["tokens"], 3),
                         "peak_rss_mb": round(result["peak_rss_mb"], 1),
                         "import_rss_mb": round(result["import_rss_mb"], 1)})  # fmt: skip
    peak = max(r["peak_rss_mb"] for r in rows)
    report = {
        "size_mb": round(size / 1e6, 2),
        "cpus": os.cpu_count(),
        "generate_s": round(generate_s, 2),
        "bpe_train_s": round(train_s, 2),
        "bpe_train_mb": BPE_TRAIN_BYTES / 1e6,
        "results": rows,
        "peak_rss_mb": peak,
        "targets": TARGETS,
        "target_met": peak <= TARGETS["peak_rss_mb_max_at_1gb"],
    }
    print(json.dumps(report))
    write_results("bench_tokenize", report, rows=rows, out_dir=args.out_dir, quick=args.quick)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
