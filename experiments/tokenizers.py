"""Q8/Q9/Q28: per-token loss is not comparable across tokenizers; bits-per-byte is.

The same model shape is trained for the same number of steps on the same text with a byte, a
character and a BPE tokenizer. A coarser tokenizer packs more bytes into each token, so its loss
per token is higher even when it models the text better; dividing total nats by the bytes they
cover (bits per byte) puts all three on one scale.

    python -m experiments.tokenizers [--quick] [--data PATH]
"""

import dataclasses
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from llmjax.config import apply_overrides, get_preset  # noqa: E402
from llmjax.data import default_corpus, prepare_data  # noqa: E402
from llmjax.results import experiment_parser, write_results  # noqa: E402
from llmjax.train.fit import fit  # noqa: E402


def main(argv=None):
    parser = experiment_parser(__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="text file or folder (default: built-in)")
    args = parser.parse_args(argv)

    preset = "test-tiny" if args.quick else "nano"
    steps = 20 if args.quick else 1500
    bpe_vocab = 512 if args.quick else 4096
    cfg = apply_overrides(
        get_preset(preset),
        [f"train.steps={steps}", "train.eval_batches=8", f"train.eval_every={steps}"],
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = args.data
        if path is None and args.quick:
            # A 300 KB slice keeps BPE training and tokenization to a second or two.
            path = Path(tmp) / "stdlib-slice.py"
            path.write_bytes(default_corpus().data[:300_000])
        rows = []
        for spec in ("byte", "char", "bpe"):
            data = prepare_data(path, spec, bpe_vocab_size=bpe_vocab)
            n_bytes = int(data.tokenizer.token_byte_lengths()[data.train].sum())
            run_cfg = dataclasses.replace(
                cfg, data=dataclasses.replace(cfg.data, tokenizer=spec, bpe_vocab_size=bpe_vocab)
            )
            result = fit(run_cfg, data=data, progress=False)
            rows.append(
                {
                    "tokenizer": spec,
                    "vocab": data.tokenizer.vocab_size,
                    "bytes_per_token": n_bytes / len(data.train),
                    "val_loss_per_token": result.final_eval["loss"],
                    "bits_per_byte": result.final_eval["bits_per_byte"],
                    "train_s": result.wall_s,
                }
            )

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    names = [r["tokenizer"] for r in rows]
    axes[0].bar(names, [r["val_loss_per_token"] for r in rows], color="tab:orange")
    axes[0].set_title("validation loss per token (nats)")
    axes[1].bar(names, [r["bits_per_byte"] for r in rows], color="tab:blue")
    axes[1].set_title("bits per byte (comparable)")
    fig.suptitle(f"{preset}, {steps} steps, same text")
    best = min(rows, key=lambda r: r["bits_per_byte"])
    metrics = {
        "preset": preset,
        "steps": steps,
        "best_tokenizer_by_bits_per_byte": best["tokenizer"],
        "loss_order_differs_from_bpb_order": (
            sorted(
                names,
                key=lambda n: next(r["val_loss_per_token"] for r in rows if r["tokenizer"] == n),
            )
            != sorted(
                names, key=lambda n: next(r["bits_per_byte"] for r in rows if r["tokenizer"] == n)
            )
        ),
    }
    return write_results(
        "tokenizers",
        metrics,
        rows=rows,
        plots={"loss_vs_bpb": fig},
        out_dir=args.out_dir,
        quick=args.quick,
    )


if __name__ == "__main__":
    main()
