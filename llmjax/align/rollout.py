"""Rollouts: completions sampled from the policy for a set of prompts, and the experience
batch an update trains on.

Prompt ids are the run's chat template around a user turn (rl.prompt_format=chat, through
llmjax.data.instruct's encoder) or the text as it is (plain). Completions come from the jitted
KV-cached decoder (`generate_tokens`) at rl.temperature / rl.top_k, `group_size` per prompt,
stopping at the tokenizer's EOS id (and the template's end-of-reply id, if it is one token).

Each row of the experience batch is prompt + completion, left-aligned in a window of seq_len
inputs: `inputs`, `targets`, `mask` (1 on the completion's targets, the stop token included),
and aligned with `targets`: `old_logp` (the policy's log-probs), `ref_logp` (the frozen
reference's, one jitted teacher-forced pass), `old_values` (PPO: the value head's), and from
the rewards `advantages` / `returns`. The policy's log-probs and values come from the decoder
as it samples (its steps run the value head too), so a rollout costs sampling plus the
reference's pass; with rl.recompute_logp (and always in a lower compute precision, or when
decoding from merged LoRA weights) one more teacher-forced pass of the training model
recomputes them, so that they equal what the loss computes.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llmjax.align import advantages as adv
from llmjax.align.rewards import RewardFn, arith_prompts, compute_rewards
from llmjax.data.instruct import ChatTemplate, ConversationEncoder, Message
from llmjax.data.records import read_records
from llmjax.decode import init_cache, steps
from llmjax.decode.chat import reply_end
from llmjax.decode.loop import DecodeOutput
from llmjax.decode.samplers import SamplingConfig
from llmjax.decode.tokens import check_prompts, decode_prompts, generate_tokens
from llmjax.errors import ConfigError
from llmjax.objectives.losses import token_log_probs

# ----------------------------------------------------------------------------- prompts


def load_prompts(spec: str, *, arith_count: int = 512, seed: int = 0) -> list[str]:
    """The prompt texts a spec names: `arith` (built-in arithmetic questions), `builtin` (the
    requests of the built-in preference data, llmjax.data.preference), a JSONL file of
    {"prompt": "..."} lines, or a Parquet file with a 'prompt' column."""
    if spec == "arith":
        return arith_prompts(arith_count, seed)
    if spec == "builtin":
        from llmjax.data.preference import builtin_prompts

        return builtin_prompts(np.random.default_rng([seed, 5]), arith_count)
    if not spec:
        raise ConfigError("no prompts given: pass --prompts FILE.jsonl, arith or builtin")
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"--prompts {spec}: no such file (a JSONL file of {{'prompt': ...}}, or a Parquet "
            "file with a 'prompt' column)"
        )
    out = []
    for where, record in read_records(path, ConfigError):
        text = record.get("prompt") if isinstance(record, dict) else None
        if not isinstance(text, str) or not text:
            raise ConfigError(
                f"{where}: not a record with a non-empty string 'prompt'; each line (or "
                f'Parquet row) must be {{"prompt": "..."}}'
            )
        out.append(text)
    if not out:
        raise ConfigError(f"{path} holds no prompts")
    return out


@dataclass(frozen=True, eq=False)
class PromptSet:
    """Prompt texts, their token ids, and the ids that end a completion."""

    texts: list[str]
    ids: list[np.ndarray]
    stop_ids: tuple[int, ...]
    stop_texts: tuple[str, ...]

    @classmethod
    def build(
        cls, texts: Sequence[str], tokenizer: Any, template: ChatTemplate | None
    ) -> PromptSet:
        """`template` None: plain text (after the tokenizer's prompt prefix)."""
        stops, stop_texts = [], []
        if template is None:
            ids = [
                np.concatenate([tokenizer.prompt_prefix, tokenizer.encode(t)]).astype(np.int32)
                for t in texts
            ]
        else:
            encoder = ConversationEncoder(tokenizer, template)
            ids = [encoder.prompt_ids((Message("user", t),)) for t in texts]
            stops, stop_texts = reply_end(template, encoder)
        if tokenizer.eos_id is not None:
            stops.append(tokenizer.eos_id)
        return cls(list(texts), ids, tuple(sorted(set(stops))), tuple(stop_texts))

    def check_fits(self, max_new_tokens: int, seq_len: int) -> None:
        """A rollout must fit the training window: prompt + max_new_tokens <= seq_len."""
        longest = int(np.argmax([len(i) for i in self.ids]))
        n = len(self.ids[longest])
        if n + max_new_tokens > seq_len:
            raise ConfigError(
                f"a rollout of prompt {self.texts[longest]!r} ({n} tokens) plus "
                f"rl.max_new_tokens={max_new_tokens} is longer than the context (seq len "
                f"{seq_len}); lower rl.max_new_tokens to {max(seq_len - n, 0)} or less, or "
                f"shorten the prompts"
            )

    def select(self, index: int, count: int, seed: int) -> np.ndarray:
        """The prompts of rollout `index`: a pure function of (seed, index), without
        repeats within a rollout when there are enough prompts."""
        rng = np.random.default_rng([seed, index, 17])
        n = len(self.ids)
        return rng.choice(n, size=count, replace=count > n)


# ----------------------------------------------------------------------------- forward passes


@functools.partial(jax.jit, static_argnums=(0, 4))
def _teacher_forced(model, params, inputs_BxT, targets_BxT, values: bool):
    out = model.apply({"params": params}, inputs_BxT)
    logp = token_log_probs(out.logits, targets_BxT)
    value = out.aux["value"].astype(jnp.float32) if values else jnp.zeros_like(logp)
    return logp, value


def sequence_stats(model, params, inputs_BxT, targets_BxT, *, values: bool = False):
    """(log-probs of the targets, values or zeros) [B, T] of `model` on the rows (float32)."""
    logp, value = _teacher_forced(model, params, inputs_BxT, targets_BxT, values)
    return np.asarray(logp, np.float64), np.asarray(value, np.float64)


# ----------------------------------------------------------------------------- sampling with values


@functools.partial(jax.jit, static_argnames=("model",), donate_argnames=("cache",))
def _prefill_with_value(model, variables, tokens_BxT, valid_BxT, cache):
    """steps.prefill, plus the value head at each row's last prompt token."""
    out = model.apply(variables, tokens_BxT, steps.prompt_positions(valid_BxT), cache=cache)
    rows_B, last_B = jnp.arange(tokens_BxT.shape[0]), steps.last_valid_index(valid_BxT)
    return out.logits[rows_B, last_B], out.aux["value"][rows_B, last_B], out.cache


@functools.cache
def _step_with_value(model):
    """steps.cached_step that also writes the fed token's value into column i of a [B, N + 1]
    buffer carried beside the cache (one function object per model, so jit caches hit)."""

    def step(variables, token_B, state):
        cache, values_BxN, i = state
        out = model.apply(variables, token_B[:, None], cache=cache)
        value_B = out.aux["value"][:, 0].astype(jnp.float32)
        return out.logits[:, 0], (out.cache, values_BxN.at[:, i].set(value_B), i + 1)

    return step


def sample_with_values(
    model: Any,
    variables: Any,
    prompts: Sequence[np.ndarray],
    *,
    max_new_tokens: int,
    key: jax.Array,
    sampling: SamplingConfig,
    stop_ids: Sequence[int] = (),
    pad_id: int = 0,
) -> tuple[DecodeOutput, np.ndarray] | None:
    """generate_tokens for a model with a value head, plus float32 values [B, N]: column k is
    the value at the position that predicts completion token k (the last prompt token for
    k = 0). None where the prompts need a rolling cache or a cropped context (the caller
    samples without values)."""
    prompts = check_prompts(prompts, model.cfg.vocab_size)
    plan = steps.plan_cache(model.cfg, max(len(p) for p in prompts), max_new_tokens)
    if plan.rolling or plan.crop or plan.chunk != plan.prompt_len:
        return None
    tokens_BxT, valid_BxT = steps.pad_prompts(prompts, padding="left", length=plan.prompt_len)
    tokens_BxT, valid_BxT = jnp.asarray(tokens_BxT), jnp.asarray(valid_BxT)
    cache = init_cache(model.cfg, len(prompts), plan.cache_len)
    first_BxV, value_B, cache = _prefill_with_value(model, variables, tokens_BxT, valid_BxT, cache)
    values_BxN = jnp.zeros((len(prompts), max_new_tokens + 1), jnp.float32)
    values_BxN = values_BxN.at[:, 0].set(value_B.astype(jnp.float32))
    out = decode_prompts(
        _step_with_value(model),
        variables,
        (cache, values_BxN, jnp.ones((), jnp.int32)),
        first_BxV,
        tokens_BxT,
        valid_BxT,
        max_new_tokens=max_new_tokens,
        key=key,
        sampling=sampling,
        stop_ids=stop_ids,
        pad_id=pad_id,
    )
    values = np.asarray(jax.device_get(out.model_state[1]), np.float64)[:, :max_new_tokens]
    out.model_state = None  # the cache is not needed past this point
    return out, values


def _completion_layout(prompt_ids, out: DecodeOutput, per_token: np.ndarray, seq_len: int):
    """[B, N] per-completion-token numbers at their rows_of target positions ([B, seq_len])."""
    full = np.zeros((len(prompt_ids), seq_len), np.float64)
    for b, p in enumerate(prompt_ids):
        n = int(out.lengths[b])
        full[b, len(p) - 1 : len(p) - 1 + n] = per_token[b, :n]
    return full


# ----------------------------------------------------------------------------- the rollout


@dataclass
class Rollout:
    """One rollout's experience batch (numpy, all rows) and its statistics."""

    batch: dict[str, np.ndarray]
    stats: dict[str, float] = field(default_factory=dict)
    completions: list[str] = field(default_factory=list)


def rows_of(
    prompt_ids: Sequence[np.ndarray], tokens_BxN: np.ndarray, lengths_B: np.ndarray, seq_len: int
) -> dict[str, np.ndarray]:
    """inputs, targets, mask [B, seq_len] of prompt + completion rows, left-aligned."""
    B = len(prompt_ids)
    inputs = np.zeros((B, seq_len), np.int32)
    targets = np.zeros((B, seq_len), np.int32)
    mask = np.zeros((B, seq_len), np.float32)
    for b, p in enumerate(prompt_ids):
        seq = np.concatenate([p, tokens_BxN[b, : lengths_B[b]]]).astype(np.int32)
        n = len(seq) - 1
        inputs[b, :n], targets[b, :n] = seq[:-1], seq[1:]
        mask[b, len(p) - 1 : n] = 1.0
    return {"inputs": inputs, "targets": targets, "mask": mask}


def cut_at_stop_text(text: str, stop_texts: Sequence[str]) -> str:
    """The completion text before the first of `stop_texts`."""
    ends = [text.find(s) for s in stop_texts if s and s in text]
    return text[: min(ends)] if ends else text


def make_rollout(
    *,
    rl: Any,
    kind: str,
    model: Any,
    params: Any,
    ref_model: Any,
    ref_params: Any,
    prompts: PromptSet,
    tokenizer: Any,
    reward_fn: RewardFn,
    index: int,
    seed: int,
    seq_len: int,
    kl: adv.KLController,
    decode_model: Any = None,
    decode_params: Any = None,
) -> Rollout:
    """Rollout `index`: prompts chosen by (seed, index), sampled with key fold_in(key(seed),
    index), scored, and turned into PPO's (kind="ppo") or GRPO's experience batch. Updates
    the KL controller with the rollout's KL."""
    t0 = time.perf_counter()
    chosen = prompts.select(index, rl.prompts_per_rollout, seed)
    rows = np.repeat(chosen, rl.group_size)  # the completions of a prompt are adjacent
    prompt_ids = [prompts.ids[i] for i in rows]
    key = jax.random.fold_in(jax.random.key(seed), index)
    sample = dict(
        max_new_tokens=rl.max_new_tokens,
        key=key,
        sampling=SamplingConfig(temperature=rl.temperature, top_k=rl.top_k),
        stop_ids=prompts.stop_ids,
        pad_id=tokenizer.fill_id,
    )
    # The decoder's log-probs (temperature 1, unfiltered) and values are the policy's own when
    # it decodes with the training params in float32.
    recompute = rl.recompute_logp or decode_model is not None or model.cfg.dtype != "float32"
    valued = None
    if not recompute and kind == "ppo":
        valued = sample_with_values(model, {"params": params}, prompt_ids, **sample)
        recompute = valued is None
    if valued is not None:
        out, step_values = valued
    else:
        out = generate_tokens(
            decode_model or model,
            {"params": params if decode_params is None else decode_params},
            prompt_ids,
            **sample,
        )
    batch = rows_of(prompt_ids, out.tokens, out.lengths, seq_len)
    mask = batch["mask"].astype(np.float64)
    if recompute:
        logp, values = sequence_stats(
            model, params, batch["inputs"], batch["targets"], values=kind == "ppo"
        )
    else:
        logp = _completion_layout(prompt_ids, out, out.log_probs, seq_len)
        values = (
            _completion_layout(prompt_ids, out, step_values, seq_len)
            if kind == "ppo"
            else np.zeros_like(logp)
        )
    ref_logp, _ = sequence_stats(ref_model, ref_params, batch["inputs"], batch["targets"])
    completions = [
        cut_at_stop_text(tokenizer.decode(out.tokens[b, : out.lengths[b]]), prompts.stop_texts)
        for b in range(len(rows))
    ]
    texts = [prompts.texts[i] for i in rows]
    # What a reward model reads: prompt + completion without its stop token (a reward model
    # is trained to score a reply at its last token before the end of the reply).
    sequences = [
        np.concatenate([p, out.tokens[b, : out.lengths[b] - int(out.stopped[b])]])
        for b, p in enumerate(prompt_ids)
    ]
    rewards, valid = compute_rewards(
        reward_fn,
        texts,
        completions,
        sequences=sequences,
        skip=rl.on_reward_error == "skip",
    )
    mask = mask * valid[:, None]
    # The decoder's log-probs of the sampled tokens against the teacher-forced ones (0 when
    # the decoder's are used as they are), over every completion token.
    gap = 0.0
    completion = batch["mask"] > 0
    if recompute and completion.any():
        decoded = _completion_layout(prompt_ids, out, out.log_probs, seq_len)
        gap = float(np.abs(logp - decoded)[completion].max())
    kl_BxT = adv.kl_estimate(logp, ref_logp, rl.kl_estimator) * mask
    seq_kl = (adv.kl_estimate(logp, ref_logp, "k1") * mask).sum(1)
    coef = kl.coef
    fields: dict[str, np.ndarray] = {}
    if kind == "ppo":
        token_r = adv.token_rewards(rewards, kl_BxT, mask, coef)
        if rl.whiten_rewards:
            token_r = adv.whiten(token_r, mask, shift_mean=False)
        advantages, returns = adv.gae(token_r, values, mask, gamma=rl.gamma, lam=rl.lam)
        if rl.whiten_advantages:
            advantages = adv.whiten(advantages, mask)
        fields = {"old_values": values * mask, "returns": returns}
    else:
        group = adv.masked_group_advantages(rewards, valid, rl.group_size)
        advantages = group[:, None] * mask
        fields = {"ref_logp": ref_logp, "kl_coef": np.full(len(rows), coef, np.float32)}
    n_valid = max(int(valid.sum()), 1)
    kl.update(float(seq_kl[valid].mean()) if valid.any() else 0.0, int(valid.sum()))
    batch = {
        **batch,
        "mask": mask.astype(np.float32),
        "old_logp": logp.astype(np.float32),
        "advantages": advantages.astype(np.float32),
        **{k: v.astype(np.float32) for k, v in fields.items()},
    }
    stats = {
        "reward": float(rewards[valid].sum() / n_valid),
        "reward_skipped": int((~valid).sum()),
        "kl": float(seq_kl[valid].sum() / n_valid),
        "kl_coef": coef,
        "completion_len": float(out.lengths.mean()),
        "logp_gap": gap,
        "rollout_s": time.perf_counter() - t0,
    }
    return Rollout(batch, stats, completions)
