"""The batch source of an RL run: rollouts made with the params of each rollout boundary,
served as minibatches, and the hook that hands those params over and records each step.

Rollout i is made with the params after i * K optimizer steps (K = rl.ppo_epochs *
rl.minibatches); its rows are shuffled once per epoch (a pure function of (train.seed, i,
epoch)) and split into rl.minibatches minibatches, one per optimizer step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from llmjax.align.advantages import KLController
from llmjax.align.rewards import RewardFn
from llmjax.align.rollout import PromptSet, Rollout, make_rollout
from llmjax.config import Config
from llmjax.data.sources import Region, cut
from llmjax.models import build_model
from llmjax.models.lora import merge_adapters
from llmjax.train.trainer import Hook, Trainer

log = logging.getLogger(__name__)

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
