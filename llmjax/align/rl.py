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
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from llmjax.align.advantages import KLController
from llmjax.align.rewards import RewardFn, RewardModel, parse_reward
from llmjax.align.rollout import PromptSet, Rollout, load_prompts, make_rollout
from llmjax.config import Config, ConfigError, apply_overrides, load_config
from llmjax.data import load_tokenizer
from llmjax.data.instruct import SimpleTemplate
from llmjax.data.sources import Region, cut
from llmjax.models import build_model
from llmjax.models.lora import merge_adapters
from llmjax.runs import Checkpointer, RunDir, open_source, restore_params, start_config
from llmjax.runs.chat_template import run_template
from llmjax.runs.init_from import read_params
from llmjax.runs.shapes import weights_target
from llmjax.train.fit import FitResult, fit
from llmjax.train.frozen import Frozen
from llmjax.train.trainer import Hook, Trainer

log = logging.getLogger(__name__)

KINDS = ("ppo", "grpo")
REFERENCE = "reference"
# Objective metrics each optimizer step's "rl" record carries (those the objective reports),
# by their names in the record: "kl" there is the rollout's KL to the reference per sequence,
# "loss_kl" GRPO's in-loss k3 per token.
STEP_METRICS = {
    "loss": "loss",
    "policy_loss": "policy_loss",
    "value_loss": "value_loss",
    "value_mse": "value_mse",
    "entropy": "entropy",
    "clip_frac": "clip_frac",
    "approx_kl": "approx_kl",
    "kl": "loss_kl",
}


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


# ----------------------------------------------------------------------------- the source


class Rollouts:
    """The batch source of an RL run: minibatches of rollouts made with the params the
    `RolloutHook` hands over at each rollout boundary (a pure function of the step, given
    those params)."""

    def __init__(
        self,
        cfg: Config,
        *,
        prompts: PromptSet,
        tokenizer: Any,
        reward_fn: RewardFn,
        ref_model_cfg: Any,
        ref_params: Any,
        kl: KLController,
        params: Any,
        params_index: int,
    ):
        self.cfg, self.rl = cfg, cfg.rl
        self.kind = cfg.train.objective
        self.prompts, self.tokenizer, self.reward_fn, self.kl = prompts, tokenizer, reward_fn, kl
        self.model = build_model(cfg.model)
        self.ref_model, self.ref_params = build_model(ref_model_cfg), ref_params
        self.k = cfg.rl.steps_per_rollout
        self._params, self._params_index = params, params_index
        self.current: Rollout | None = None
        self.current_index: int | None = None
        self.stats: dict[int, dict[str, float]] = {}
        self.made_at: dict[int, float] = {}  # when each rollout was ready (perf_counter)

    def set_params(self, index: int, params: Any) -> None:
        """The params rollout `index` is made with."""
        self._params, self._params_index = params, index

    def rollout(self, index: int) -> Rollout:
        if self.current_index == index:
            return self.current
        if self._params_index != index:
            log.warning(
                "rollout %d is made with the params of rollout %d's boundary (the run resumed "
                "inside a rollout)",
                index,
                self._params_index,
            )
        decode_model, decode_params = None, None
        if self.cfg.model.lora.rank:  # decodes at the base model's speed
            decode_params, merged_cfg = merge_adapters(self._params, self.cfg.model)
            decode_model = build_model(merged_cfg)
        self.current = make_rollout(
            rl=self.rl,
            kind=self.kind,
            model=self.model,
            params=self._params,
            ref_model=self.ref_model,
            ref_params=self.ref_params,
            prompts=self.prompts,
            tokenizer=self.tokenizer,
            reward_fn=self.reward_fn,
            index=index,
            seed=self.cfg.train.seed,
            seq_len=self.cfg.seq_len,
            kl=self.kl,
            decode_model=decode_model,
            decode_params=decode_params,
        )
        self.current_index = index
        self.stats[index] = self.current.stats
        self.made_at[index] = time.perf_counter()
        return self.current

    def minibatch(self, step: int) -> dict[str, np.ndarray]:
        """The rows optimizer step `step` trains on (epoch-wise shuffles of its rollout)."""
        index, j = divmod(step, self.k)
        epoch, part = divmod(j, self.rl.minibatches)
        batch = self.rollout(index).batch
        rows = self.rl.rollout_rows
        order = np.random.default_rng([self.cfg.train.seed, index, epoch, 29]).permutation(rows)
        size = rows // self.rl.minibatches
        take = np.sort(order[part * size : (part + 1) * size])
        return {k: v[take] for k, v in batch.items()}

    def batches(self, start: int, region: Region | None = None) -> Iterator[dict]:
        step = start
        while True:
            yield cut(self.minibatch(step), region)
            step += 1

    def latest_batch(self) -> dict[str, np.ndarray]:
        """The first minibatch of the newest rollout (what evaluation reports on)."""
        index = self._params_index if self.current_index is None else self.current_index
        return self.minibatch(index * self.k)


class RolloutHook(Hook):
    """Hands the params to the source at each rollout boundary, writes an "rl" record per
    optimizer step (the objective's metrics; the rollout's reward, KL, coefficient and
    rollout_s; update_s, the time since the rollout was made: at its last step, the time of
    all its updates), and keeps the KL controller's state with each checkpoint."""

    def __init__(self, source: Rollouts):
        self.source = source
        self.trainer: Trainer | None = None

    def on_start(self, trainer: Trainer, step: int) -> None:
        self.trainer = trainer

    def due(self, step: int, end: int) -> bool:
        return step % self.source.k == 0

    def on_state(self, step: int, state: Any) -> None:
        params = self.trainer.parallel.host_state(state).params
        self.source.set_params(step // self.source.k, params)

    def on_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        index = (step - 1) // self.source.k
        record = {"step": step, "split": "rl"}
        record.update({v: float(metrics[k]) for k, v in STEP_METRICS.items() if k in metrics})
        record.update(self.source.stats.get(index, {}))
        made = self.source.made_at.get(index)
        if made is not None:
            record["update_s"] = time.perf_counter() - made
        self.trainer.emit(record)

    def state_dict(self) -> dict[str, Any]:
        return self.source.kl.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # fit_rl set the controller from the checkpoint before the loop: the loop makes its
        # first rollout (which updates the coefficient) before it hands the hooks their state.
        pass


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
