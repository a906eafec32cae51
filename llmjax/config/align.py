"""The alignment sections of a config: preference objectives (reward model, DPO/IPO) and
reinforcement learning from a reward (PPO, GRPO).

They live in the run's config.json like every other section, so `--set preference.beta=0.2`
works on the command line and a resumed run keeps its settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmjax.config.checks import check, check_choice, check_finite, check_positive

PREFERENCE_LOSSES = ("sigmoid", "ipo")  # DPO's logistic loss, IPO's squared loss
KL_ESTIMATORS = ("k1", "k3")  # log-ratio; Schulman's unbiased, non-negative k3
PROMPT_FORMATS = ("chat", "plain")  # rendered by the run's chat template; the text as it is
ON_REWARD_ERROR = ("stop", "skip")  # raise naming the prompt; mask the row out and count it


@dataclass(frozen=True)
class PreferenceConfig:
    """Settings of the objectives trained on {prompt, chosen, rejected} pairs."""

    # DPO/IPO: strength of the implicit KL to the reference (higher: stay closer).
    beta: float = 0.1
    loss: str = "sigmoid"  # sigmoid: DPO; ipo: IPO's (h - 1/(2 beta))^2
    # DPO: the share of pairs whose label is taken to be flipped (conservative DPO); 0: off.
    label_smoothing: float = 0.0
    # Reward model: -log sigmoid(r_chosen - r_rejected - margin).
    margin: float = 0.0

    def __post_init__(self):
        check_finite(self, "beta", "label_smoothing", "margin", section="preference")
        check(
            self.beta > 0,
            f"preference.beta must be > 0 (e.g. 0.1; higher stays closer to the reference), got "
            f"{self.beta}",
        )
        check_choice("preference.loss", self.loss, PREFERENCE_LOSSES)
        check(
            0.0 <= self.label_smoothing < 0.5,
            f"preference.label_smoothing must be in [0, 0.5), got {self.label_smoothing}",
        )


@dataclass(frozen=True)
class RLConfig:
    """Settings of the policy-gradient objectives (PPO, GRPO) and of their rollouts."""

    prompts_per_rollout: int = 8  # prompts sampled per rollout
    group_size: int = 4  # completions per prompt (GRPO's group; PPO: 1 is usual)
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    # KL penalty to the frozen reference, per token: coef * KL estimate.
    kl_coef: float = 0.05
    # Adaptive KL controller (Ziegler et al. 2019): the coefficient follows the measured KL
    # toward this target (None: a fixed coefficient).
    kl_target: float | None = None
    kl_horizon: int = 10_000
    kl_estimator: str = "k1"
    ppo_epochs: int = 2  # passes over each rollout batch
    minibatches: int = 2  # optimizer steps per pass (the rollout batch is split evenly)
    clip: float = 0.2  # policy ratio clip
    value_clip: float = 0.2  # value prediction clip around the rollout's values
    vf_coef: float = 0.1
    entropy_coef: float = 0.0
    gamma: float = 1.0
    lam: float = 0.95  # GAE lambda
    whiten_rewards: bool = False
    whiten_advantages: bool = True
    # The policy's log-probs (and PPO's values) of a rollout: false takes them from the
    # decoder as it samples (they equal a teacher-forced pass to ~1e-6 in float32); true
    # recomputes them with one teacher-forced pass. Always recomputed when the model computes
    # in a lower precision or decodes from merged LoRA weights.
    recompute_logp: bool = False
    # What a run of `llmjax ppo` / `llmjax grpo` recorded, so that --resume rebuilds it: the
    # reward spec (arith, count:<char>, run:<DIR>, module:function) and the prompts (arith or
    # a JSONL file of {"prompt": ...}).
    reward: str = ""
    prompts: str = ""
    prompt_format: str = "chat"
    arith_prompts: int = 512  # prompts=arith or builtin: how many built-in prompts
    on_reward_error: str = "stop"

    def __post_init__(self):
        check_choice("rl.prompt_format", self.prompt_format, PROMPT_FORMATS)
        check_choice("rl.on_reward_error", self.on_reward_error, ON_REWARD_ERROR)
        check_positive(
            self,
            "arith_prompts",
            "prompts_per_rollout",
            "group_size",
            "max_new_tokens",
            "kl_horizon",
            "ppo_epochs",
            "minibatches",
            section="rl",
        )
        check_finite(
            self,
            "temperature",
            "kl_coef",
            "kl_target",
            "clip",
            "value_clip",
            "vf_coef",
            "entropy_coef",
            "gamma",
            "lam",
            section="rl",
        )
        check(self.temperature > 0, f"rl.temperature must be > 0, got {self.temperature}")
        check(
            isinstance(self.top_k, int) and self.top_k >= 0,
            f"rl.top_k must be an integer >= 0 (0: off), got {self.top_k!r}",
        )
        check(self.kl_coef >= 0, f"rl.kl_coef must be >= 0 (0: no KL penalty), got {self.kl_coef}")
        check(
            self.kl_target is None or self.kl_target > 0,
            f"rl.kl_target must be > 0 (or unset for a fixed coefficient), got {self.kl_target}",
        )
        check_choice("rl.kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        check(self.clip > 0, f"rl.clip must be > 0 (e.g. 0.2), got {self.clip}")
        check(self.value_clip > 0, f"rl.value_clip must be > 0 (e.g. 0.2), got {self.value_clip}")
        check(0.0 <= self.gamma <= 1.0, f"rl.gamma must be in [0, 1], got {self.gamma}")
        check(0.0 <= self.lam <= 1.0, f"rl.lam must be in [0, 1], got {self.lam}")

    @property
    def rollout_rows(self) -> int:
        """Completions per rollout: prompts_per_rollout * group_size."""
        return self.prompts_per_rollout * self.group_size

    @property
    def steps_per_rollout(self) -> int:
        """Optimizer steps on each rollout: ppo_epochs * minibatches."""
        return self.ppo_epochs * self.minibatches
