"""How do models extend context? Recall at a distance per attention variant, and perplexity
beyond the trained length with and without RoPE scaling, and with ALiBi (Q33).

Part 1: small models learn associative recall at length T (a fact token "(k, v)", later a query
for k that must be answered v; llmjax.data.synthetic.RecallTask); accuracy is reported per
distance bucket. Full attention can reach any distance; a sliding window only its window (times
the layers, through relays); block-sparse its local and global blocks; linear attention keeps a
fixed-size state of the whole past.
Part 2: models trained on text at length L are evaluated at L, 2L and 4L: RoPE without scaling,
with linear interpolation, NTK-aware and YaRN scaling (applied at evaluation only, no
fine-tuning), ALiBi, and a learned position table (which cannot run beyond L).

    python -m experiments.long_context           # full: ~45 minutes on 2 shared CPU cores
    python -m experiments.long_context --quick   # seconds: tiny models, few steps
"""

import dataclasses

import numpy as np

from llmjax.attention import ATTENTION, register_attention
from llmjax.attention.block_sparse import BlockSparsePattern, make_block_sparse
from llmjax.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig
from llmjax.data import prepare_data, train_batch
from llmjax.data.sources import FromFunction
from llmjax.data.synthetic import RecallTask
from llmjax.eval.long_context import perplexity_at, recall_by_distance, with_rope_scaling
from llmjax.results import experiment_parser, write_results
from llmjax.train.trainer import Trainer

SCALINGS = ["none", "linear", "ntk", "yarn"]


def settings(quick: bool) -> dict:
    if quick:
        return dict(
            recall_len=32,
            recall_steps=30,
            recall_lr=1e-2,
            recall_position="none",
            text_len=32,
            text_steps=30,
            batch=8,
            stretch=[1, 2],
            eval_batches=2,
            variants=["sliding_window"],
            positions=["rope"],
            scalings=["none", "yarn"],
            d_model=32,
        )
    # Recall shows a long loss plateau before the retrieval circuit forms (~1k steps here).
    # It needs no positions (a query finds its fact by content), so its models use none.
    return dict(
        recall_len=64,
        recall_steps=3000,
        recall_lr=1e-2,
        recall_position="none",
        text_len=64,
        text_steps=1000,
        batch=32,
        stretch=[1, 2, 4],
        eval_batches=8,
        variants=["xla", "sliding_window", "block_sparse", "linear"],
        positions=["rope", "alibi", "learned"],
        scalings=SCALINGS,
        d_model=64,
    )


def small_config(
    s: dict,
    *,
    vocab: int,
    seq_len: int,
    steps: int,
    lr: float = 3e-3,
    position: str = "rope",
    **model,
) -> Config:
    return Config(
        model=ModelConfig(
            vocab_size=vocab,
            max_seq_len=seq_len,
            d_model=s["d_model"],
            n_layers=2,
            n_heads=4,
            position=position,
            use_bias=False,
            **model,
        ),
        data=DataConfig(batch_size=s["batch"]),
        optim=OptimConfig(lr=lr, warmup_steps=min(100, steps // 10), weight_decay=0.0),
        train=TrainConfig(steps=steps),
    )


def train(cfg: Config, batch_fn) -> tuple[dict, np.ndarray]:
    """Trains cfg.train.steps steps on batch_fn(step): (params, loss of every step)."""
    state, metrics = Trainer(cfg).train(FromFunction(batch_fn))
    return state.params, np.asarray([m["loss"] for m in metrics], np.float32)


def recall_part(s: dict) -> tuple[list[dict], dict]:
    task = RecallTask(seq_len=s["recall_len"])
    window = s["recall_len"] // 4
    # The registered block_sparse uses 64-token blocks; at these lengths use 8-token blocks.
    sparse = BlockSparsePattern(block=8, local_blocks=2, global_blocks=1)
    labels = {
        "sliding_window": f"sliding_window (w={window})",
        "block_sparse": f"block_sparse (b={sparse.block}, local 2, global 1)",
    }
    edges = np.unique(np.linspace(1, s["recall_len"], 9).astype(int))
    rows, curves = [], {}
    for variant in s["variants"]:
        name = f"block_sparse_{sparse.block}" if variant == "block_sparse" else variant
        if variant == "block_sparse":
            register_attention(name)(make_block_sparse(sparse))
        try:
            cfg = small_config(
                s,
                vocab=task.vocab_size,
                seq_len=task.seq_len,
                steps=s["recall_steps"],
                lr=s["recall_lr"],
                position=s["recall_position"],
                attention=name,
                attention_window=window if variant == "sliding_window" else None,
            )
            rng = np.random.default_rng(0)
            params, losses = train(cfg, lambda step, rng=rng: task.batch(rng, s["batch"]))
            buckets = recall_by_distance(
                cfg.model, params, task, edges=edges, batches=8, batch_size=s["batch"], seed=1
            )
        finally:
            if name != variant:
                ATTENTION.unregister(name)
        loss = float(losses[-max(1, len(losses) // 10) :].mean())
        label = labels.get(variant, variant)
        print(f"recall {label}: final loss {loss:.3f}", flush=True)
        curves[label] = buckets
        for b in buckets:
            rows.append(
                {
                    "part": "recall",
                    "model": label,
                    "distance": f"[{b['low']},{b['high']})",
                    "accuracy": b["accuracy"],
                    "train_loss": loss,
                }
            )
    return rows, curves


def extrapolation_part(s: dict, data_path: str | None) -> tuple[list[dict], dict]:
    data = prepare_data(data_path, "byte")
    length, vocab = s["text_len"], data.tokenizer.vocab_size
    rows, curves = [], {}

    def batches(step):
        return train_batch(data.train, step, batch_size=s["batch"], seq_len=length, seed=0)

    for position in s["positions"]:
        cfg = small_config(s, vocab=vocab, seq_len=length, steps=s["text_steps"])
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, position=position))
        params, losses = train(cfg, batches)
        print(f"text {position}: final loss {losses[-10:].mean():.3f}", flush=True)
        kinds = s["scalings"] if position == "rope" else [None]
        for kind in kinds:
            label = f"rope/{kind}" if kind else position
            curves[label] = []
            for n in s["stretch"]:
                model_cfg = cfg.model
                if kind is not None and n > 1:
                    model_cfg = with_rope_scaling(cfg.model, kind, float(n), length)
                if kind not in (None, "none") and n == 1:
                    ppl = curves["rope/none"][0]  # every kind is the identity at factor 1
                else:
                    try:
                        ppl = perplexity_at(
                            model_cfg,
                            params,
                            data.val,
                            seq_len=n * length,
                            batch_size=max(1, s["batch"] // n),
                            max_batches=s["eval_batches"] * n,
                        )
                    except ValueError as e:  # a learned table has no rows beyond L
                        print(f"{label} at {n * length}: {str(e).split(';')[0]}")
                        ppl = None
                curves[label].append(ppl)
                rows.append(
                    {
                        "part": "extrapolation",
                        "model": label,
                        "eval_len": n * length,
                        "perplexity": ppl,
                    }
                )
    return rows, curves


def plot(recall, extrap, s):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110)
    for label, buckets in recall.items():
        pts = [((b["low"] + b["high"]) / 2, b["accuracy"]) for b in buckets]
        pts = [p for p in pts if p[1] is not None]
        if pts:
            axes[0].plot(*zip(*pts, strict=True), "o-", ms=3, label=label)
    axes[0].set(
        xlabel="distance between key and its recall (tokens)",
        ylabel="recall accuracy",
        title=f"associative recall, trained at T={s['recall_len']}",
        ylim=(-0.05, 1.05),
    )
    lengths = [n * s["text_len"] for n in s["stretch"]]
    for label, ppls in extrap.items():
        pts = [(x, y) for x, y in zip(lengths, ppls, strict=True) if y is not None]
        if pts:
            axes[1].plot(*zip(*pts, strict=True), "o-", ms=3, label=label)
    axes[1].axvline(s["text_len"], color="gray", ls=":", lw=1)
    axes[1].set(
        xlabel="evaluation length (bytes)",
        ylabel="perplexity",
        yscale="log",
        title=f"beyond the trained length L={s['text_len']}",
    )
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv=None):
    parser = experiment_parser(__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="text for part 2 (default: built-in corpus)")
    args = parser.parse_args(argv)
    s = settings(args.quick)
    recall_rows, recall = recall_part(s)
    extrap_rows, extrap = extrapolation_part(s, args.data)
    metrics = {"settings": s, "recall": recall, "perplexity": extrap}
    return write_results(
        "long_context",
        metrics,
        rows=recall_rows + extrap_rows,
        plots={"long_context": plot(recall, extrap, s)},
        out_dir=args.out_dir,
        quick=args.quick,
    )


if __name__ == "__main__":
    main()
