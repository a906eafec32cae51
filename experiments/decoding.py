"""Decoding strategies trade likelihood for diversity: greedy, temperatures, top-k and top-p.

A small model is trained on the built-in corpus, then continues the same held-out prompts with
each strategy. Per strategy: distinct-n (diversity), rep-4 (repetition within a continuation),
the model's mean log-likelihood of the chosen tokens, the entropy of the distribution the
tokens were drawn from, and the model's own entropy along the way. The real continuations of
the prompts are scored the same way as a reference row.

    python -m experiments.decoding [--quick]
"""

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from llmjax.config import apply_overrides, get_preset  # noqa: E402
from llmjax.data import prepare_data  # noqa: E402
from llmjax.decode import SamplingConfig, generate_tokens  # noqa: E402
from llmjax.decode.metrics import generation_stats  # noqa: E402
from llmjax.decode.samplers import entropy  # noqa: E402
from llmjax.models import build_model  # noqa: E402
from llmjax.objectives.losses import token_log_probs  # noqa: E402
from llmjax.results import experiment_parser, write_results  # noqa: E402
from llmjax.train.fit import fit  # noqa: E402

STRATEGIES = {
    "greedy": SamplingConfig(temperature=0),
    "temp 0.7": SamplingConfig(temperature=0.7),
    "temp 1.0": SamplingConfig(temperature=1.0),
    "temp 1.3": SamplingConfig(temperature=1.3),
    "top-k 10": SamplingConfig(top_k=10),
    "top-k 40": SamplingConfig(top_k=40),
    "top-p 0.8": SamplingConfig(top_p=0.8),
    "top-p 0.95": SamplingConfig(top_p=0.95),
    "min-p 0.1": SamplingConfig(min_p=0.1),
    "typical 0.9": SamplingConfig(typical_p=0.9),
    "rep-penalty 1.3": SamplingConfig(repetition_penalty=1.3),
}
# --quick: one strategy per compiled program (each costs seconds to compile on a CPU).
QUICK = ("greedy", "temp 0.7", "temp 1.3", "top-k 10", "top-p 0.8")


def _prompts(val: np.ndarray, n: int, prompt_len: int, new: int, seed: int = 0):
    """n (prompt, real continuation) pairs cut at random places of the validation stream."""
    starts = np.random.default_rng(seed).integers(0, len(val) - prompt_len - new, n)
    return [val[s : s + prompt_len] for s in starts], [
        val[s + prompt_len : s + prompt_len + new] for s in starts
    ]


def _reference_stats(model, params, prompts, continuations) -> dict:
    """The metrics of the real text, with its log-likelihood and entropy under the model."""
    pairs = zip(prompts, continuations, strict=True)
    seqs = jax.numpy.asarray(np.stack([np.concatenate(pc) for pc in pairs]))
    logits = jax.jit(model.apply)({"params": params}, seqs[:, :-1]).logits
    p = len(prompts[0])
    log_probs = np.asarray(token_log_probs(logits, seqs[:, 1:]))[:, p - 1 :]
    ent = np.asarray(jax.vmap(entropy)(logits))[:, p - 1 :]
    return generation_stats(continuations, log_probs, ent)


def main(argv=None):
    parser = experiment_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    if args.quick:
        preset, steps, n_prompts, prompt_len, new = "test-tiny", 60, 8, 8, 24
    else:
        preset, steps, n_prompts, prompt_len, new = "nano", 1000, 32, 16, 112
    overrides = [f"train.steps={steps}", f"train.eval_every={steps}", "train.eval_batches=4"]
    if not args.quick:
        overrides += ["model.max_seq_len=128"]
    cfg = apply_overrides(get_preset(preset), overrides)
    data = prepare_data(cfg.data.path, cfg.data.tokenizer)
    result = fit(cfg, data=data, progress=False)
    model = build_model(result.config.model)  # fit set the vocabulary from the tokenizer
    params = result.state.params
    prompts, continuations = _prompts(np.asarray(data.val), n_prompts, prompt_len, new)

    reference = _reference_stats(model, params, prompts, continuations)
    rows = [{"strategy": "reference text", **reference}]
    samples = {}
    for name, sampling in STRATEGIES.items():
        if args.quick and name not in QUICK:
            continue
        out = generate_tokens(
            model, {"params": params}, prompts, max_new_tokens=new, key=jax.random.key(1),
            sampling=sampling,
        )  # fmt: skip
        stats = generation_stats(out.tokens, out.log_probs, out.entropy, out.sample_entropy)
        rows.append({"strategy": name, **stats})
        samples[name] = data.tokenizer.decode(out.tokens[0])

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in rows:
        axes[0].scatter(r["log_likelihood"], r["distinct_2"], s=30)
        axes[0].annotate(r["strategy"], (r["log_likelihood"], r["distinct_2"]), fontsize=8)
    axes[0].set_xlabel("mean log-likelihood per token (nats)")
    axes[0].set_ylabel("distinct-2")
    axes[0].set_title("likelihood vs diversity")
    names = [r["strategy"] for r in rows]
    x = np.arange(len(rows))
    axes[1].bar(x - 0.2, [r["rep_4"] for r in rows], 0.4, label="rep-4")
    axes[1].bar(x + 0.2, [r["distinct_3"] for r in rows], 0.4, label="distinct-3")
    axes[1].set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    axes[1].legend()
    axes[1].set_title("repetition and diversity")
    fig.suptitle(f"{preset}, {steps} steps, {n_prompts} prompts x {new} new tokens")

    by_name = {r["strategy"]: r for r in rows}
    metrics = {
        "preset": preset,
        "steps": steps,
        "val_loss": result.final_eval.get("loss"),
        "prompts": n_prompts,
        "new_tokens": new,
        "greedy_rep_4": by_name["greedy"]["rep_4"],
        "temp_1.3_rep_4": by_name["temp 1.3"]["rep_4"],
        "most_diverse": max(rows[1:], key=lambda r: r["distinct_2"])["strategy"],
        "most_likely": max(rows[1:], key=lambda r: r["log_likelihood"])["strategy"],
        "samples": samples,
    }
    return write_results("decoding", metrics, rows=rows, plots={"decoding": fig},
                         out_dir=args.out_dir, quick=args.quick)  # fmt: skip


if __name__ == "__main__":
    main()
