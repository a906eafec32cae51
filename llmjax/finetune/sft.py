"""Supervised fine-tuning runs: a new run from another run's params on instruction data, or
the resumption of one, through `llmjax.fit` with the `sft` objective.

    cfg = sft_config(init_from="runs/base", overrides=["train.steps=200"])
    data = open_sft(cfg, SFTConfig(data="chats.jsonl"))       # tokenizer and template chosen
    result = fit_sft(cfg, "runs/chat", data)                  # = fit(cfg, out, source=..., ...)

A new run takes the tokenizer of train.init_from and, unless told otherwise, its chat template:
the one it recorded (a run fine-tuned before, or converted from Hugging Face with one), else
llmjax's simple template. The run records its template and its SFTConfig, so that `llmjax chat`
renders conversations as training did and a resumed run rebuilds the same batches.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmjax.config import Config, ConfigError, apply_overrides
from llmjax.data import Tokenizer, build_tokenizer, load_tokenizer
from llmjax.data.instruct import ChatTemplate, SimpleTemplate
from llmjax.finetune.config import SFTConfig, read_record
from llmjax.finetune.data import SFTData
from llmjax.runs import RunDir, start_config
from llmjax.runs.chat_template import choose_template, run_template
from llmjax.train.fit import FitResult, fit

log = logging.getLogger(__name__)


def sft_config(
    *,
    init_from: str | Path | None = None,
    resume: str | Path | None = None,
    overrides: Sequence[str] = (),
    objective: str = "sft",
) -> Config:
    """The config of an sft run: a new one from `init_from` (its config, with the sft objective
    and a schedule of its own), or the saved config of the run `resume` continues; then
    `overrides` (section.field=value). `objective`: the objective a new run trains (the
    fine-tuning commands on other data, such as `llmjax dpo`, start their runs the same way)."""
    if resume is not None:
        return apply_overrides(start_config(resume=resume, init_from=init_from), list(overrides))
    if init_from is None:
        raise ConfigError(
            f"{objective} fine-tunes a trained run: pass --init-from RUN (a run of `llmjax "
            f"train`, or one `llmjax convert` made from a Hugging Face checkpoint)"
        )
    cfg = start_config(init_from=init_from)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, objective=objective))
    cfg = apply_overrides(cfg, list(overrides))
    if cfg.optim.warmup_steps >= cfg.train.steps:
        log.warning(
            "optim.warmup_steps=%d is not below train.steps=%d: the lr never reaches its peak; "
            "pass e.g. --set optim.warmup_steps=%d",
            cfg.optim.warmup_steps,
            cfg.train.steps,
            max(0, cfg.train.steps // 10),
        )
    return cfg


def open_sft(
    cfg: Config,
    config: SFTConfig | None = None,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    template: str | ChatTemplate | None = None,
) -> SFTData:
    """The data of an sft run: for a new run, `config`'s conversations under train.init_from's
    tokenizer and `template` (a ChatTemplate, or a spec: simple, hf or a path; default: the
    source's recorded template, else simple); resuming, the data the run in `out` recorded,
    checked to be unchanged."""
    if resume:
        return _resumed(cfg, config, out, template)
    if config is None:
        raise ConfigError("a new sft run needs its data: pass an SFTConfig (--data FILE)")
    tokenizer, template = start_template(cfg, template)
    return SFTData.build(config, tokenizer, template, cfg.seq_len)


def start_template(
    cfg: Config, template: str | ChatTemplate | None = None
) -> tuple[Tokenizer, ChatTemplate]:
    """The tokenizer and chat template of a new fine-tuning run: train.init_from's tokenizer,
    and `template` (a ChatTemplate, or a spec: simple, hf or a path; default: the source's
    recorded template, else simple)."""
    tokenizer = _tokenizer(cfg)
    source = cfg.train.init_from or None
    if isinstance(template, str):
        if source is None and template == "hf":
            raise ConfigError("--template hf reads train.init_from's template; this run has none")
        template = choose_template(template, source or ".", tokenizer)
    elif template is None:
        template = (run_template(source, tokenizer) if source else None) or SimpleTemplate()
    return tokenizer, template


def _tokenizer(cfg: Config) -> Tokenizer:
    if cfg.train.init_from:
        return load_tokenizer(RunDir(Path(cfg.train.init_from)).tokenizer)
    return build_tokenizer(cfg.data.tokenizer, b"")


def _resumed(
    cfg: Config, config: SFTConfig | None, out: str | Path | None, template: Any
) -> SFTData:
    if out is None:
        raise ConfigError("resuming an sft run needs its directory (--out DIR)")
    if template is not None:
        raise ConfigError(
            f"a resumed run keeps the chat template it was trained with (recorded in {out}); "
            f"drop --template"
        )
    run = RunDir.open(out)
    recorded, fingerprints = read_record(run.path)
    if config is not None and config.absolute() != recorded:
        raise ConfigError(
            f"{out} was started with other instruction data settings ({recorded}); a resumed "
            f"run uses those: drop the data options"
        )
    template = run_template(run.path)
    if template is None:
        raise ConfigError(f"{out} records no chat template; start it again with `llmjax sft`")
    data = SFTData.build(recorded, load_tokenizer(run.tokenizer), template, cfg.seq_len)
    changed = [
        f"{recorded.files()[k]} ({k})"
        for k, v in fingerprints.items()
        if data.fingerprints.get(k) != v
    ]
    if changed:
        raise ConfigError(
            f"{', '.join(changed)} changed since {out} started, so its batches would not be the "
            f"ones it trained on; restore the file, or start a new run on the new data"
        )
    return data


def fit_sft(cfg: Config, out: str | Path | None, data: SFTData, **options: Any) -> FitResult:
    """`fit` on `data`: its batch source, its held-out conversations for evaluation, its
    tokenizer, and (in a new run directory) its template and SFTConfig. `options` are fit's
    (resume, overwrite, progress, stop_after, hooks, ...)."""
    return fit(
        cfg,
        out,
        source=data.source(cfg.data.batch_size, cfg.train.seed),
        val=lambda: data.val_batches(cfg.data.batch_size, cfg.train.eval_batches),
        tokenizer=data.tokenizer,
        files=data.run_files(),
        **options,
    )
