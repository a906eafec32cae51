"""Reward-model and DPO/IPO runs on preference pairs: a new run from another run's params
(`train.init_from`, an SFT or pretrained run), or the resumption of one, through `llmjax.fit`.

    cfg = preference_config("dpo", init_from="runs/sft", overrides=["preference.beta=0.1"])
    data = open_preference(cfg, PreferenceDataConfig(data="pairs.jsonl"), "runs/dpo")
    result = fit_dpo(cfg, "runs/dpo", data)                  # reference: runs/sft's params

    cfg = preference_config("reward", init_from="runs/sft")  # sets model.value_head=true
    result = fit_reward(cfg, "runs/rm", open_preference(cfg, PreferenceDataConfig("builtin")))
    check_same_tokenizer("runs/rm", "runs/policy")           # before scoring a policy's samples

A new run takes train.init_from's tokenizer and chat template (as `llmjax sft` does) and
records its data settings in RUN/preference.json, so that `resume=True` rebuilds the same
batches. LoRA (model.lora.rank > 0) trains adapters (and the value head) alone.

DPO's reference policy is the params the run starts from: a frozen copy of train.init_from's
checkpoint (under that run's model config), never checkpointed. The step it was read at is
recorded, and a resumed run reads the reference again at that step, so it is the same tree.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from llmjax.config import Config, ConfigError, ModelConfig, load_config
from llmjax.data import Tokenizer, load_tokenizer
from llmjax.data.instruct import ChatTemplate
from llmjax.data.preference import PreferenceData, PreferenceDataConfig, read_record
from llmjax.finetune.sft import sft_config, start_template
from llmjax.objectives.dpo import REFERENCE, sequence_log_probs
from llmjax.objectives.reward import both_sides
from llmjax.runs import RunDir
from llmjax.runs.chat_template import run_template
from llmjax.runs.init_from import open_source, read_params
from llmjax.runs.shapes import weights_target
from llmjax.train.fit import FitResult, fit
from llmjax.train.frozen import Frozen
from llmjax.train.parallel import PARALLELISM

COMMANDS = ("reward", "dpo")


def preference_config(
    objective: str,
    *,
    init_from: str | Path | None = None,
    resume: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> Config:
    """The config of a `reward` or `dpo` run: a new one from `init_from` (its config with that
    objective; a reward model gets a value head), or the saved config of the run `resume`
    continues; then `overrides`."""
    if objective not in COMMANDS:
        raise ConfigError(f"objective {objective!r} is not one of {', '.join(COMMANDS)}")
    head = ["model.value_head=true"] if objective == "reward" and resume is None else []
    cfg = sft_config(
        init_from=init_from, resume=resume, overrides=[*head, *overrides], objective=objective
    )
    if cfg.train.objective != objective:
        raise ConfigError(
            f"{resume or init_from} trains train.objective={cfg.train.objective}, not "
            f"{objective}; resume it with the command that started it"
        )
    return cfg


def open_preference(
    cfg: Config,
    config: PreferenceDataConfig | None = None,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    template: str | ChatTemplate | None = None,
) -> PreferenceData:
    """The pairs of a preference run: for a new run, `config`'s pairs under train.init_from's
    tokenizer and `template` (simple, hf, a path or a ChatTemplate; default: the source's
    recorded one, else simple); resuming, the data the run in `out` recorded, checked to be
    unchanged."""
    if not resume:
        if config is None:
            raise ConfigError(
                "a new preference run needs its pairs: pass --data FILE (JSONL of "
                '{"prompt", "chosen", "rejected"}) or --data builtin'
            )
        tokenizer, template = start_template(cfg, template)
        return PreferenceData.build(config, tokenizer, template, cfg.seq_len)
    if out is None:
        raise ConfigError("resuming a preference run needs its directory (--out DIR)")
    if template is not None:
        raise ConfigError(
            f"a resumed run keeps the chat template it was trained with (recorded in {out}); "
            f"drop --template"
        )
    run = RunDir.open(out)
    record = read_record(run.path)
    if config is not None and config.absolute() != record.data:
        raise ConfigError(
            f"{out} was started with other preference data settings ({record.data}); a resumed "
            f"run uses those: drop the data options"
        )
    recorded = run_template(run.path)
    if recorded is None:
        raise ConfigError(f"{out} records no chat template; start it again")
    data = PreferenceData.build(record.data, load_tokenizer(run.tokenizer), recorded, cfg.seq_len)
    changed = [
        f"{record.data.files()[k]} ({k})"
        for k, v in record.fingerprints.items()
        if data.fingerprints.get(k) != v
    ]
    if changed:
        raise ConfigError(
            f"{', '.join(changed)} changed since {out} started, so its batches would not be the "
            f"ones it trained on; restore the file, or start a new run on the new data"
        )
    return _with(
        data,
        reference_step=record.reference_step,
        reference=record.reference,
        cached_reference=record.cached_reference,
    )


def _with(data: PreferenceData, **changes: Any) -> PreferenceData:
    return dataclasses.replace(data, **changes)


def _files(data: PreferenceData) -> dict[str, str]:
    from llmjax.data.preference import PREFERENCE_FILE
    from llmjax.runs.chat_template import template_files

    return {PREFERENCE_FILE: data.record().text(), **template_files(data.template)}


def fit_reward(cfg: Config, out: str | Path | None, data: PreferenceData, **options: Any):
    """`fit` of a reward model (objective `reward`) on `data`; evaluation reports held-out
    accuracy. `options` are fit's (resume, overwrite, progress, stop_after, hooks, ...)."""
    _check_objective(cfg, "reward")
    return fit(
        cfg,
        out,
        source=data.source(cfg.data.batch_size, cfg.train.seed),
        val=lambda: data.val_batches(cfg.data.batch_size, cfg.train.eval_batches),
        tokenizer=data.tokenizer,
        files=_files(data),
        **options,
    )


def fit_dpo(
    cfg: Config,
    out: str | Path | None,
    data: PreferenceData,
    *,
    resume: bool = False,
    reference: str | Path | None = None,
    cache_reference: bool | None = None,
    **options: Any,
) -> FitResult:
    """`fit` with objective `dpo` (DPO or IPO, as cfg.preference says) on `data`, against the
    reference policy: the newest params of `reference` (a run directory; default:
    train.init_from), or when resuming, the run and step the run recorded.
    `cache_reference`: compute the reference's log-probs of every pair once, before training,
    and feed them in the batches instead of running the reference each step (None: as the
    resumed run recorded; off for a new run)."""
    _check_objective(cfg, "dpo")
    if not cfg.train.init_from:
        raise ConfigError("a dpo run needs its reference policy: start it from a run (--init-from)")
    step = None
    if resume:
        if reference is not None:
            recorded = data.reference or "its train.init_from"
            raise ConfigError(
                f"a resumed run keeps the reference it recorded ({recorded}); drop --reference"
            )
        if data.reference_step is None:
            raise ConfigError(f"{out} records no reference step; start it again with `llmjax dpo`")
        step, reference = data.reference_step, data.reference
        if cache_reference is not None and cache_reference != data.cached_reference:
            raise ConfigError(
                f"{out} was trained with cache_reference={data.cached_reference}; a resumed run "
                f"keeps it (its steps would differ in the last bits otherwise): drop the option"
            )
        cache_reference = data.cached_reference
    elif reference is not None:
        reference = str(Path(reference).absolute())
    frozen_ref, step = reference_policy(cfg, step, tokenizer=data.tokenizer, run=reference)
    cache_reference = bool(cache_reference)
    data = _with(data, reference_step=step, reference=reference, cached_reference=cache_reference)
    frozen = {REFERENCE: frozen_ref}
    if cache_reference:
        data = data.with_reference(
            *(
                reference_logps(frozen_ref, data, cfg.data.batch_size, split=split)
                for split in ("train", "val")
            )
        )
        frozen = {}
    return fit(
        cfg,
        out,
        source=data.source(cfg.data.batch_size, cfg.train.seed),
        val=lambda: data.val_batches(cfg.data.batch_size, cfg.train.eval_batches),
        tokenizer=data.tokenizer,
        files=_files(data),
        frozen=frozen,
        resume=resume,
        **options,
    )


def _check_objective(cfg: Config, objective: str) -> None:
    if cfg.train.objective != objective:
        raise ConfigError(
            f"fit_{objective} trains train.objective={objective}, and the config says "
            f"{cfg.train.objective}; build it with preference_config({objective!r}, ...)"
        )


def reference_policy(
    cfg: Config,
    step: int | None = None,
    *,
    tokenizer: Tokenizer | None = None,
    run: str | Path | None = None,
) -> tuple[Frozen, int]:
    """(the reference, the step read): the params of `run` (default: train.init_from) at
    `step` (default: its newest) as a Frozen tree under that run's model config, checked to
    share `tokenizer`."""
    source = open_source(run or cfg.train.init_from)
    if tokenizer is not None:
        check_same_tokenizer(source.run.path, tokenizer, what="the reference policy")
    params, _, step = read_params(source.run, source.config, step)
    # The run's parallel mode may pad the vocabulary (a mesh's tensor axis must divide it): the
    # reference gets the same padding, zero rows whose logits the model masks.
    mode = PARALLELISM.get(cfg.parallel.kind, field="parallel.mode")
    model = mode.adapt_config(dataclasses.replace(cfg, model=source.config.model)).model
    if model != source.config.model:
        params = jax.tree.map(_pad_to, params, weights_target(model)["params"])
    return Frozen(params, model=model), int(step)


def _pad_to(x: Any, want: jax.ShapeDtypeStruct) -> np.ndarray:
    x = np.asarray(jax.device_get(x))
    return np.pad(x, [(0, n - m) for m, n in zip(x.shape, want.shape, strict=True)])


@functools.partial(jax.jit, static_argnums=0)
def _pair_log_probs(model: Any, params: Any, batch: dict) -> jax.Array:
    logits = model.apply({"params": params}, both_sides(batch, "inputs")).logits
    lp_2B = sequence_log_probs(logits, both_sides(batch, "targets"), both_sides(batch, "mask"))
    return lp_2B.reshape(2, -1).T


def reference_logps(
    reference: Frozen | Any,
    data: PreferenceData,
    batch_size: int,
    *,
    model: ModelConfig | None = None,
    split: str = "train",
) -> np.ndarray:
    """The reference's sequence log-prob sums of every pair of `split` ("train" or "val"):
    float32 [N, 2] (chosen, rejected), for `PreferenceData.with_reference`. `reference`: a
    Frozen tree with its model config, or params of `model`."""
    from llmjax.models import build_model

    if isinstance(reference, Frozen):
        params, model = reference.params, reference.model or model
    else:
        params = reference
    if model is None:
        raise ValueError("reference_logps needs the reference's ModelConfig (model=...)")
    module = build_model(model)
    n = len(data.train if split == "train" else data.val)
    out = [
        np.asarray(_pair_log_probs(module, params, batch))
        for batch in data.val_batches(batch_size, split=split)
    ]
    return np.concatenate(out)[:n].astype(np.float32)


def _tokenizer_of(run: Any) -> tuple[Tokenizer, str, int | None]:
    """(tokenizer, name, vocabulary size of its model) of a run directory, a LoadedRun or a
    Tokenizer."""
    from llmjax.runs import LoadedRun

    if isinstance(run, Tokenizer):
        return run, "the given tokenizer", None
    if isinstance(run, LoadedRun):
        return run.tokenizer, str(run.run.path), run.config.model.vocab_size
    rundir = RunDir.open(run)
    vocab = load_config(rundir.config).model.vocab_size
    return load_tokenizer(rundir.tokenizer), str(rundir.path), vocab


def check_same_tokenizer(reward_run: Any, policy_run: Any, *, what: str = "the reward model"):
    """Raises ConfigError unless `reward_run` and `policy_run` (run directories, LoadedRuns or
    Tokenizers) share one tokenizer: a reward model (or reference) reads the policy's token
    ids, so another vocabulary would score other text."""
    reward_tok, reward_name, reward_vocab = _tokenizer_of(reward_run)
    policy_tok, policy_name, policy_vocab = _tokenizer_of(policy_run)
    vocabs = {v for v in (reward_vocab, policy_vocab) if v is not None}
    if reward_tok != policy_tok or len(vocabs) > 1:
        raise ConfigError(
            f"{what} {reward_name} has another tokenizer ({reward_tok!r}, vocabulary "
            f"{reward_vocab or reward_tok.vocab_size}) than the policy {policy_name} "
            f"({policy_tok!r}, vocabulary {policy_vocab or policy_tok.vocab_size}), so it would "
            f"read other tokens; train it from a run with the policy's tokenizer"
        )
