"""What limits context length? Memory and time of one attention layer against length (Q32).

One layer's forward + backward (batch 1, 4 heads x 64 = d 256) for each attention variant:
XLA's compiled temporary memory and the best-of-3 wall time, for T = 256 .. 16k. Exact
attention (reference, xla) grows as T^2; flash keeps memory O(T) but still does T^2 work; the
sliding window, block-sparse and linear variants do O(T) work. Slopes are fitted on log-log
axes over T in [1k, 16k] (where measured).

    python -m experiments.context_cost            # full: ~10 minutes on 2 shared CPU cores
    python -m experiments.context_cost --quick    # seconds: two short lengths
"""

import numpy as np

from llmjax.eval.attention_cost import attention_cost, loglog_slope
from llmjax.results import experiment_parser, write_results

WINDOW = 512
# label -> (registered variant, sliding window or None)
VARIANTS = {
    "reference": ("reference", None),
    "xla": ("xla", None),
    "flash": ("flash", None),
    f"flash w={WINDOW}": ("flash", WINDOW),
    f"sliding_window w={WINDOW}": ("sliding_window", WINDOW),
    "block_sparse": ("block_sparse", None),
    "linear": ("linear", None),
}
FIT_RANGE = (1024, 16384)


def plot(rows, fits):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110)
    for label in VARIANTS:
        mine = [r for r in rows if r["variant"] == label]
        for ax, key, unit in ((axes[0], "seconds", 1.0), (axes[1], "temp_mib", 1.0)):
            pts = [(r["T"], r[key] * unit) for r in mine if r[key]]
            if pts:
                slope = fits[label]["time" if key == "seconds" else "memory"]
                ax.loglog(*zip(*pts, strict=True), "o-", ms=3, label=f"{label} ({slope:.2f})")
    axes[0].set(xlabel="sequence length T", ylabel="forward+backward seconds", title="time")
    axes[1].set(xlabel="sequence length T", ylabel="compiled temp memory (MiB)", title="memory")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, title="variant (log-log slope)", title_fontsize=7)
    fig.tight_layout()
    return fig


def main(argv=None):
    parser = experiment_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--max-run-gib",
        type=float,
        default=4.0,
        help="skip timing a point whose temp memory exceeds this (default 4)",
    )
    args = parser.parse_args(argv)
    lengths = [128, 256] if args.quick else [256 * 2**i for i in range(7)]
    rows = []
    for label, (variant, window) in VARIANTS.items():
        for length in lengths:
            point = attention_cost(
                variant,
                length,
                window=window,
                repeats=1 if args.quick else 3,
                max_run_bytes=int(args.max_run_gib * 2**30),
            )
            rows.append(
                {
                    "variant": label,
                    "T": length,
                    "temp_mib": point.temp_bytes / 2**20,
                    "seconds": point.seconds,
                }
            )
            print(
                f"{label:>22} T={length:>6}: {rows[-1]['temp_mib']:10.1f} MiB "
                f"{point.seconds if point.seconds is not None else float('nan'):8.4f} s",
                flush=True,
            )
    low, high = (lengths[0], lengths[-1]) if args.quick else FIT_RANGE
    fits = {}
    for label in VARIANTS:
        mine = [r for r in rows if r["variant"] == label and low <= r["T"] <= high]
        timed = [r for r in mine if r["seconds"]]
        fits[label] = {
            "time": loglog_slope([r["T"] for r in timed], [r["seconds"] for r in timed]),
            "memory": loglog_slope(
                [r["T"] for r in mine], [max(r["temp_mib"], 1e-3) for r in mine]
            ),
            "fit_lengths": [r["T"] for r in timed],
        }
    metrics = {
        "lengths": lengths,
        "batch": 1,
        "heads": 4,
        "head_dim": 64,
        "window": WINDOW,
        "fit_range": [low, high],
        "slopes": fits,
    }
    at = {r["variant"]: r["temp_mib"] for r in rows if r["T"] == 8192}
    if at:
        metrics["flash_over_reference_temp_at_8192"] = at["flash"] / at["reference"]
    print("log-log slopes (time, memory):")
    for label, fit in fits.items():
        print(f"  {label:>22}: {fit['time']:.2f}  {fit['memory']:.2f}")
    return write_results(
        "context_cost",
        metrics,
        rows=rows,
        plots={"context_cost": plot(rows, fits)},
        out_dir=args.out_dir,
        quick=args.quick,
    )


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
