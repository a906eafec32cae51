"""Q1, Q3: a language model is a probability distribution over sequences, factorised by the
chain rule into next-token conditionals, and sampling draws from it one token at a time.

On a byte model of the nano shape (4 layers, d=128, context 128) trained on the built-in
corpus (this interpreter's standard-library source), three measurements:

  chain rule   sampled sequences' log-probability summed over the KV-cached decoding steps
               (each token's log p as it was drawn) against one teacher-forced forward pass
               over the whole sequence (llmjax.eval.TokenScorer): log p(x) = sum_t log
               p(x_t | x_<t), to float32 rounding
  sampling     many one-token samples after fixed contexts against the model's softmax: the
               total variation distance between the sampled frequencies and the probabilities,
               beside the distance exact sampling from those probabilities gives at the same
               number of draws (multinomial draws in numpy), and a chi-square test
  context      validation loss at each position of a 128-token window: how much a longer
               context helps, with a 5-gram Kneser-Ney model of the same training bytes beside
               it (its context stops at 4 tokens)

    python -m experiments.autoregressive [--quick]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from llmjax import fit
from llmjax.config import PRESETS, apply_overrides
from llmjax.data import ByteTokenizer, prepare_data
from llmjax.decode.samplers import SamplingConfig
from llmjax.decode.tokens import generate_tokens
from llmjax.eval import EvalLM, KneserNey
from llmjax.results import experiment_parser, write_results
from llmjax.train.fit import with_vocab

FULL = {"steps": 1500, "sequences": 64, "prompt": 16, "new_tokens": 100, "contexts": 6,
        "draws": 20_000, "windows": 512, "ngram_bytes": 2_000_000, "null_repeats": 200}  # fmt: skip
QUICK = {"steps": 8, "sequences": 8, "prompt": 8, "new_tokens": 16, "contexts": 2,
         "draws": 2000, "windows": 16, "ngram_bytes": 100_000, "null_repeats": 20}  # fmt: skip
CONTEXT = 128
POSITIONS = (1, 2, 4, 8, 16, 32, 64, 127)


def _train(s: dict, out: Path) -> Path:
    cfg = apply_overrides(with_vocab(PRESETS["nano"], ByteTokenizer()), [
        f"model.max_seq_len={CONTEXT}", "data.batch_size=16", f"train.steps={s['steps']}",
        f"train.eval_every={s['steps']}", "train.eval_batches=4", "train.mfu=false",
        "optim.name=muon", "optim.lr=1e-2", "optim.momentum=0.95", "optim.warmup_steps=20",
        f"train.checkpoint_every={s['steps']}"])  # fmt: skip
    fit(cfg, out, progress=False)
    return out


def chain_rule(lm: EvalLM, val: np.ndarray, s: dict, key: jax.Array) -> dict:
    """Per-step log-probs of sampled sequences against one forward pass over each."""
    rng = np.random.default_rng(1)
    starts = rng.integers(0, len(val) - s["prompt"], s["sequences"])
    prompts = [np.asarray(val[a : a + s["prompt"]], np.int32) for a in starts]
    out = generate_tokens(lm.model, lm.variables, prompts, max_new_tokens=s["new_tokens"],
                          key=key, sampling=SamplingConfig(temperature=1.0))  # fmt: skip
    requests, stepwise = [], []
    for b, p in enumerate(prompts):
        n = int(out.lengths[b])
        requests.append((p, out.tokens[b, :n]))
        stepwise.append(out.log_probs[b, :n].astype(np.float64))
    onepass = lm.scorer.score(requests)
    seq_diff = np.asarray([abs(o.logprob - w.sum()) for o, w in zip(onepass, stepwise,
                                                                     strict=True)])  # fmt: skip
    tok_diff = max(float(np.abs(o.logprobs - w).max()) for o, w in zip(onepass, stepwise,
                                                                        strict=True))  # fmt: skip
    return {
        "sequences": len(prompts),
        "tokens_per_sequence": float(np.mean([len(w) for w in stepwise])),
        "mean_logprob": float(np.mean([w.sum() for w in stepwise])),
        "max_abs_seq_diff": float(seq_diff.max()),
        "mean_abs_seq_diff": float(seq_diff.mean()),
        "max_abs_token_diff": tok_diff,
        "points": [(float(w.sum()), o.logprob) for o, w in zip(onepass, stepwise, strict=True)],
    }


def sampling(lm: EvalLM, val: np.ndarray, s: dict, key: jax.Array) -> dict:
    """One-token samples after fixed contexts against the softmax there."""
    from scipy.stats import chisquare

    rng = np.random.default_rng(2)
    V = lm.tokenizer.vocab_size
    rows, chunk = [], 2000
    for c in range(s["contexts"]):
        a = int(rng.integers(0, len(val) - 64))
        context = np.asarray(val[a : a + 64], np.int32)
        logits = lm.model.apply(lm.variables, context[None]).logits[0, -1, :V]
        p = np.asarray(jax.nn.softmax(logits.astype(np.float32)), np.float64)
        p /= p.sum()
        counts = np.zeros(V, np.int64)
        for i in range(0, s["draws"], chunk):
            n = min(chunk, s["draws"] - i)
            out = generate_tokens(lm.model, lm.variables, [context] * n, max_new_tokens=1,
                                  key=jax.random.fold_in(key, c * 1000 + i),
                                  sampling=SamplingConfig(temperature=1.0))  # fmt: skip
            counts += np.bincount(out.tokens[:, 0], minlength=V)[:V]
        f = counts / counts.sum()
        tv = 0.5 * float(np.abs(f - p).sum())
        null = [0.5 * float(np.abs(rng.multinomial(s["draws"], p) / s["draws"] - p).sum())
                for _ in range(s["null_repeats"])]  # fmt: skip
        big = p * s["draws"] >= 5  # chi-square bins: expected count >= 5, the rest pooled
        obs = np.append(counts[big], counts[~big].sum())
        exp = np.append(p[big], p[~big].sum()) * s["draws"]
        keep = exp > 0
        chi = chisquare(obs[keep], exp[keep])
        top = np.argsort(-p)[:8]
        rows.append({
            "context": lm.tokenizer.decode(context[-24:]),
            "entropy_nats": float(-(p[p > 0] * np.log(p[p > 0])).sum()),
            "top_p": float(p[top[0]]),
            "tv": tv,
            "tv_exact_sampling_mean": float(np.mean(null)),
            "tv_exact_sampling_p95": float(np.percentile(null, 95)),
            "chi2_p_value": float(chi.pvalue),
            "top": [(int(t), float(p[t]), float(f[t])) for t in top],
        })  # fmt: skip
    return {"draws": s["draws"], "contexts": rows}


def context_loss(lm: EvalLM, data, s: dict) -> dict:
    """Mean validation loss at each position of a window, transformer and 5-gram."""
    rng = np.random.default_rng(3)
    val = data.val
    starts = rng.integers(0, len(val) - CONTEXT - 1, s["windows"])
    windows = [np.asarray(val[a : a + CONTEXT + 1], np.int32) for a in starts]
    scored = lm.scorer.score([(w[:1], w[1:]) for w in windows])
    nll = -np.stack([x.logprobs for x in scored]).mean(0)  # [CONTEXT]: position t predicts t+1
    train = np.asarray(data.train[: s["ngram_bytes"]], np.int64)
    kn = KneserNey.fit(train, order=5, vocab_size=lm.tokenizer.vocab_size)
    kn_nll = -np.stack([kn.log_probs(w)[1:] for w in windows]).mean(0)
    return {
        "windows": len(windows),
        "transformer": nll.tolist(),
        "kneser_ney_5": kn_nll.tolist(),
        "at": {
            str(t): {"transformer": float(nll[t - 1]), "kneser_ney_5": float(kn_nll[t - 1])}
            for t in POSITIONS
        },  # fmt: skip
    }


def _plot(chain: dict, samp: dict, ctx: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.3), dpi=100)
    x, y = np.asarray(chain["points"]).T
    a.plot(x, y, "o", ms=4, label=f"{chain['sequences']} sampled sequences")
    lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
    a.plot([lo, hi], [lo, hi], "k--", lw=1, label="equal")
    a.set_title(f"chain rule: max difference {chain['max_abs_seq_diff']:.1e} nats")
    a.set_xlabel("sum of log p over decoding steps (nats)")
    a.set_ylabel("log p from one forward pass (nats)")
    for i, row in enumerate(samp["contexts"]):
        probs, freqs = np.asarray([(t[1], t[2]) for t in row["top"]]).T
        b.loglog(probs, np.maximum(freqs, 1e-5), "o", ms=4, label=f"context {i + 1}")
    b.plot([1e-3, 1], [1e-3, 1], "k--", lw=1, label="equal")
    b.set_title(f"next-token samples ({samp['draws']:,} per context, top 8 tokens)")
    b.set_xlabel("model probability")
    b.set_ylabel("sampled frequency")
    pos = np.arange(1, len(ctx["transformer"]) + 1)
    c.semilogx(pos, ctx["transformer"], label="transformer (context 128)")
    c.semilogx(pos, ctx["kneser_ney_5"], label="5-gram Kneser-Ney")
    c.set_title(f"validation loss by position ({ctx['windows']} windows)")
    c.set_xlabel("tokens of context before the predicted token")
    c.set_ylabel("loss (nats per byte)")
    for ax in (a, b, c):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = experiment_parser(__doc__.splitlines()[0]).parse_args(argv)
    s = QUICK if args.quick else FULL
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run = _train(s, Path(tmp) / "run")
        lm = EvalLM.from_run(run, batch_size=32)
        data = prepare_data(None, lm.tokenizer)
        key = jax.random.key(0)
        chain = chain_rule(lm, data.val, s, jax.random.fold_in(key, 1))
        samp = sampling(lm, data.val, s, jax.random.fold_in(key, 2))
        ctx = context_loss(lm, data, s)
    metrics = {"settings": s, "chain_rule": chain, "sampling": samp, "context": ctx,
               "wall_s": round(time.perf_counter() - t0, 1)}  # fmt: skip
    rows = [
        {"measure": "chain rule: max |sum of step log p - one pass| (nats/sequence)",
         "value": chain["max_abs_seq_diff"]},
        {"measure": "chain rule: max per-token difference (nats)",
         "value": chain["max_abs_token_diff"]},
        *({"measure": f"sampling context {i + 1}: TV (exact sampling: mean, p95)",
           "value": r["tv"], "reference": f"{r['tv_exact_sampling_mean']:.4f}, "
           f"{r['tv_exact_sampling_p95']:.4f}", "chi2_p": r["chi2_p_value"]}
          for i, r in enumerate(samp["contexts"])),
        *({"measure": f"loss at position {t} (nats/byte)", "value": v["transformer"],
           "reference": f"5-gram {v['kneser_ney_5']:.3f}"} for t, v in ctx["at"].items()),
    ]  # fmt: skip
    out = write_results("autoregressive", metrics, rows=rows,
                        plots={"autoregressive": _plot(chain, samp, ctx)},
                        out_dir=args.out_dir, quick=args.quick)  # fmt: skip
    print(
        json.dumps(
            {
                "max_abs_seq_diff": chain["max_abs_seq_diff"],
                "tv": [r["tv"] for r in samp["contexts"]],
                "wall_s": metrics["wall_s"],
            }
        )
    )
    metrics["results_dir"] = str(out)
    return metrics


if __name__ == "__main__":
    main()
