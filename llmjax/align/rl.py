"""RL runs from a reward on the one training loop: PPO (RLHF, with the policy's value head)
and GRPO (group-normalised advantages, no value head).

    cfg = rl_config("ppo", init_from="runs/sft", overrides=["train.steps=40"])
    result = fit_ppo(cfg, "runs/ppo", prompts=["What is 2 + 3?", ...], reward_fn=arith_reward)

A run alternates rollouts and updates: rollout i is made with the params after i * K optimizer
steps (K = rl.ppo_epochs * rl.minibatches), and its rows (rl.prompts_per_rollout *
rl.group_size) are shuffled once per epoch and split into rl.minibatches minibatches, one per
optimizer step. So train.steps counts optimizer steps, and data.batch_size is the rows of one
minibatch: rl_config sets it to rollout_rows / minibatches (another value is refused).

Rollout i samples with fold_in(key(train.seed), i) and chooses its prompts as a pure function
of (train.seed, i); the KL controller's coefficient is saved with each checkpoint. A run
stopped at a rollout boundary (checkpoint_every and stop_after are multiples of K) and resumed
ends with the params an uninterrupted run has. A run stopped elsewhere (a signal) resumes by
making the interrupted rollout again from the params it stopped with: it trains on, but not
identically. The reference is the starting params (LoRA: merged base, without value head),
frozen; it is not saved, and a resumed run reads it again from train.init_from at the step it
started from.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from llmjax.align.advantages import KLController
from llmjax.align.experience import RolloutHook, Rollouts
from llmjax.align.rewards import RewardFn, RewardModel, parse_reward
from llmjax.align.rollout import PromptSet, load_prompts
from llmjax.config import Config, ConfigError, apply_overrides, load_config
from llmjax.data import load_tokenizer
from llmjax.data.instruct import SimpleTemplate
from llmjax.models.lora import merge_adapters
from llmjax.runs import Checkpointer, RunDir, open_source, restore_params, start_config
from llmjax.runs.chat_template import run_template
from llmjax.runs.init_from import read_params
from llmjax.runs.shapes import weights_target
from llmjax.train.fit import FitResult, fit
from llmjax.train.frozen import Frozen
from llmjax.train.trainer import Hook

log = logging.getLogger(__name__)

KINDS = ("ppo", "grpo")
REFERENCE = "reference"

# ----------------------------------------------------------------------------- config


def rl_config(
    kind: str,
    *,
    init_from: str | Path | None = None,
    resume: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> Config:
    """The config of a ppo or grpo run: a new one from `init_from` (its config with the
    objective, PPO's value head, and data.batch_size = one minibatch of a rollout), or the
    saved config of the run `resume` continues; then `overrides`. The source's train.steps
    and train.checkpoint_every, unless overridden, are rounded up to whole rollouts."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of {', '.join(KINDS)}")
    if resume is not None:
        return apply_overrides(start_config(resume=resume, init_from=init_from), list(overrides))
    if init_from is None:
        raise ConfigError(
            f"{kind} trains a policy from a trained run: pass --init-from RUN (e.g. a run of "
            f"`llmjax sft`)"
        )
    cfg = start_config(init_from=init_from)
    model = dataclasses.replace(cfg.model, value_head=cfg.model.value_head or kind == "ppo")
    cfg = dataclasses.replace(
        cfg, model=model, train=dataclasses.replace(cfg.train, objective=kind)
    )
    cfg = apply_overrides(cfg, list(overrides))
    given = {o.split("=", 1)[0].strip() for o in overrides}
    rows, mb = cfg.rl.rollout_rows, cfg.rl.minibatches
    if "data.batch_size" not in given and rows % mb == 0:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=rows // mb))
    # Steps and checkpoints the source's config had (not asked for) round up to whole rollouts.
    k = cfg.rl.steps_per_rollout
    train = {
        name: -(-getattr(cfg.train, name) // k) * k
        for name in ("steps", "checkpoint_every")
        if f"train.{name}" not in given
    }
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train))


def check_rl(cfg: Config, stop_after: int | None = None) -> None:
    """The checks an RL run's config must pass before anything is written."""
    rl, kind = cfg.rl, cfg.train.objective
    if kind not in KINDS:
        raise ConfigError(f"train.objective={kind!r} is not an RL objective ({', '.join(KINDS)})")
    if kind == "ppo" and not cfg.model.value_head:
        raise ConfigError("ppo needs the policy's value head: set model.value_head=true")
    if not cfg.train.init_from:
        raise ConfigError(f"{kind} starts from a trained run: set train.init_from (--init-from)")
    rows = rl.rollout_rows
    if rows % rl.minibatches:
        raise ConfigError(
            f"a rollout of rl.prompts_per_rollout * rl.group_size = {rows} rows does not split "
            f"into rl.minibatches={rl.minibatches} equal minibatches; choose a divisor of {rows}"
        )
    if cfg.data.batch_size != rows // rl.minibatches:
        raise ConfigError(
            f"data.batch_size={cfg.data.batch_size} is not the rows of one minibatch "
            f"({rows} rollout rows / {rl.minibatches} minibatches = {rows // rl.minibatches}); "
            f"leave data.batch_size unset, or set it to {rows // rl.minibatches}"
        )
    if kind == "grpo" and rl.group_size < 2:
        raise ConfigError("grpo normalises rewards within groups: set rl.group_size >= 2")
    k = rl.steps_per_rollout
    for name, value in (
        ("train.steps", cfg.train.steps),
        ("train.checkpoint_every", cfg.train.checkpoint_every),
        ("stop_after", stop_after),
    ):
        if value is not None and value % k:
            raise ConfigError(
                f"{name}={value} is not a multiple of the {k} optimizer steps of a rollout "
                f"(rl.ppo_epochs * rl.minibatches), so a run would stop inside a rollout; use "
                f"a multiple of {k}, e.g. {max(k, value // k * k)}"
            )


# ----------------------------------------------------------------------------- runs


def _reference(params: Any, model_cfg: Any) -> tuple[Any, Any]:
    """(params, model config) of the frozen reference: the starting policy with its LoRA
    adapters folded in and without the value head."""
    merged, merged_cfg = merge_adapters(params, model_cfg)
    merged = {k: v for k, v in merged.items() if k != "value_head"}
    return merged, dataclasses.replace(merged_cfg, value_head=False)


def _start_params(cfg: Config, base_step: int | None) -> Any:
    """The params a new run of `cfg` starts from (as fit computes them)."""
    target = weights_target(cfg.model)
    params, _, _ = restore_params(
        open_source(cfg.train.init_from),
        cfg.model,
        target["params"],
        target["model_state"],
        seed=cfg.train.seed,
        step=base_step,
    )
    return params


def _resume_point(out: str | Path) -> tuple[int, dict[str, Any]] | None:
    """(step, meta) of the newest checkpoint of the run in `out`, or None without one."""
    run = RunDir.open(out)
    if not run.checkpoints.is_dir():
        return None
    with Checkpointer(run.checkpoints, read_only=True) as ckpt:
        steps = ckpt.steps()
        if not steps:
            return None
        return steps[-1], ckpt.meta(steps[-1])


def rl_prompts(cfg: Config, tokenizer: Any, texts: Sequence[str] | None) -> PromptSet:
    """The run's prompts (`texts`, else rl.prompts) encoded as rl.prompt_format says."""
    if texts is None:
        texts = load_prompts(cfg.rl.prompts, arith_count=cfg.rl.arith_prompts, seed=0)
    template = None
    if cfg.rl.prompt_format == "chat":
        template = run_template(cfg.train.init_from, tokenizer) or SimpleTemplate()
    prompts = PromptSet.build(texts, tokenizer, template)
    prompts.check_fits(cfg.rl.max_new_tokens, cfg.seq_len)
    return prompts


def fit_rl(
    cfg: Config,
    out: str | Path | None,
    *,
    prompts: Sequence[str] | None = None,
    reward_fn: RewardFn | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    hooks: Sequence[Hook] = (),
    **options: Any,
) -> FitResult:
    """`fit` of an RL run (module docstring): `prompts` (default: rl.prompts) and `reward_fn`
    (default: the one rl.reward names). `options` are fit's (overwrite, progress, ...)."""
    check_rl(cfg, stop_after)
    tokenizer = load_tokenizer(RunDir(Path(cfg.train.init_from)).tokenizer)
    if reward_fn is None:
        reward_fn = parse_reward(cfg.rl.reward)
    if isinstance(reward_fn, RewardModel):
        reward_fn.check_tokenizer(tokenizer)
    prompt_set = rl_prompts(cfg, tokenizer, prompts)
    if resume and out is not None:
        saved = load_config(RunDir.open(out).config).rl
        if saved != cfg.rl:
            changed = [
                f"rl.{f.name}: {getattr(saved, f.name)!r} -> {getattr(cfg.rl, f.name)!r}"
                for f in dataclasses.fields(saved)
                if getattr(saved, f.name) != getattr(cfg.rl, f.name)
            ]
            raise ConfigError(
                f"a resumed run keeps the rl settings it started with ({'; '.join(changed)}); "
                f"drop those overrides, or start a new run"
            )
    point = _resume_point(out) if resume and out is not None else None
    kl = KLController(cfg.rl.kl_coef, cfg.rl.kl_target, cfg.rl.kl_horizon)
    base_step = None
    if point is not None:
        step, meta = point
        base_step = (meta.get("base") or {}).get("step")
        state = (meta.get("hooks") or {}).get(RolloutHook.__name__)
        if state:
            kl.load_state_dict(state)
        params, _, _ = read_params(RunDir.open(out), cfg, step)
    else:
        step = 0
    start = _start_params(cfg, base_step)
    if point is None:
        params = start
    ref_params, ref_cfg = _reference(start, cfg.model)
    del start
    source = Rollouts(
        cfg,
        prompts=prompt_set,
        tokenizer=tokenizer,
        reward_fn=reward_fn,
        ref_model_cfg=ref_cfg,
        ref_params=ref_params,
        kl=kl,
        params=params,
        params_index=step // cfg.rl.steps_per_rollout,
    )
    return fit(
        cfg,
        out,
        resume=resume,
        stop_after=stop_after,
        source=source,
        val=lambda: [source.latest_batch()],
        tokenizer=tokenizer,
        # A copy: placing a frozen tree on a mesh may donate the arrays it is given.
        frozen={REFERENCE: Frozen(jax.tree.map(np.array, ref_params), model=ref_cfg)},
        hooks=[RolloutHook(source), *hooks],
        **options,
    )


def fit_ppo(cfg: Config, out: str | Path | None, **options: Any) -> FitResult:
    """`fit_rl` with the ppo objective (rl_config("ppo", ...) makes its config)."""
    return fit_rl(_objective(cfg, "ppo"), out, **options)


def fit_grpo(cfg: Config, out: str | Path | None, **options: Any) -> FitResult:
    """`fit_rl` with the grpo objective (rl_config("grpo", ...) makes its config)."""
    return fit_rl(_objective(cfg, "grpo"), out, **options)


def _objective(cfg: Config, kind: str) -> Config:
    if cfg.train.objective not in (kind, "lm"):
        raise ConfigError(f"train.objective={cfg.train.objective} in a {kind} run; drop it")
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, objective=kind))
