"""Measuring a policy: sample replies to prompts, score them with any reward, and measure how
far the policy moved from a reference (KL per reply).

    policy, reference = load_run("runs/ppo").merged(), load_run("runs/sft").merged()
    samples = sample_replies(policy, PromptSet.build(texts, tok, template), key=key,
                             samples=4, max_new_tokens=40, reference=reference)
    gold = GoldReward()(samples.prompts, samples.replies)      # float32 [N * samples]
    samples.kl                                                 # KL(policy || reference)
    win_rate(gold, gold_of_other_policy)

The KL of a reply is the sum over its tokens of log p_policy - log p_reference, teacher-forced
on the sampled tokens (the stop token included): a Monte Carlo estimate of KL(policy ||
reference) per reply when the replies are the policy's own samples at temperature 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from llmjax.align.rollout import PromptSet, cut_at_stop_text, rows_of, sequence_stats
from llmjax.decode import SamplingConfig
from llmjax.decode.tokens import generate_tokens


@dataclass
class Samples:
    """Replies sampled from a policy, `samples` per prompt (a prompt's replies adjacent)."""

    prompts: list[str]  # the prompt text of each reply
    replies: list[str]  # reply texts, without the stop token or stop text
    # prompt + reply token ids without the stop token: what a reward model scores
    sequences: list[np.ndarray]
    lengths: np.ndarray  # reply tokens, stop token included
    stopped: np.ndarray  # the reply ended with a stop token (not the length limit)
    kl: np.ndarray | None  # KL(policy || reference) per reply; None without a reference


def _model_params(run: Any) -> tuple[Any, Any]:
    """(module, params) of a LoadedRun or a (module, params) pair."""
    if isinstance(run, tuple):
        return run
    return run.model, run.params


def sample_replies(
    policy: Any,
    prompts: PromptSet,
    *,
    key: jax.Array,
    samples: int = 1,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_k: int = 0,
    reference: Any = None,
    tokenizer: Any = None,
    seq_len: int | None = None,
) -> Samples:
    """`samples` replies to each prompt from `policy` (a LoadedRun, or (module, params) with
    `tokenizer`), stopping at the prompts' stop ids; with `reference` (the same kinds), each
    reply's KL from it."""
    model, params = _model_params(policy)
    tokenizer = tokenizer or policy.tokenizer
    rows = [i for i in range(len(prompts.ids)) for _ in range(samples)]
    ids = [prompts.ids[i] for i in rows]
    out = generate_tokens(
        model,
        {"params": params},
        ids,
        max_new_tokens=max_new_tokens,
        key=key,
        sampling=SamplingConfig(temperature=temperature, top_k=top_k),
        stop_ids=prompts.stop_ids,
        pad_id=tokenizer.pad_id if tokenizer.pad_id is not None else 0,
    )
    replies = [
        cut_at_stop_text(tokenizer.decode(out.tokens[b, : out.lengths[b]]), prompts.stop_texts)
        for b in range(len(rows))
    ]
    sequences = [
        np.concatenate([p, out.tokens[b, : out.lengths[b] - int(out.stopped[b])]]).astype(np.int32)
        for b, p in enumerate(ids)
    ]
    kl = None
    if reference is not None:
        # A width rounded up to 16 tokens: one compiled forward serves many batches.
        longest = max(len(p) + int(n) for p, n in zip(ids, out.lengths, strict=True))
        width = seq_len or -(-longest // 16) * 16
        batch = rows_of(ids, out.tokens, out.lengths, width)
        logp, _ = sequence_stats(model, params, batch["inputs"], batch["targets"])
        ref_model, ref_params = _model_params(reference)
        ref_logp, _ = sequence_stats(ref_model, ref_params, batch["inputs"], batch["targets"])
        kl = ((logp - ref_logp) * batch["mask"]).sum(1)
    return Samples(
        prompts=[prompts.texts[i] for i in rows],
        replies=replies,
        sequences=sequences,
        lengths=np.asarray(out.lengths),
        stopped=np.asarray(out.stopped),
        kl=kl,
    )


def win_rate(rewards: np.ndarray, baseline: np.ndarray) -> float:
    """The share of replies whose reward beats the baseline's reply at the same index (the
    same prompt and sample), ties counting half."""
    rewards, baseline = np.asarray(rewards), np.asarray(baseline)
    if rewards.shape != baseline.shape:
        raise ValueError(f"{rewards.shape} rewards against {baseline.shape} baseline rewards")
    return float(np.mean((rewards > baseline) + 0.5 * (rewards == baseline)))
