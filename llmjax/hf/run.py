"""Converting a Hugging Face checkpoint directory to an llmjax run directory, and back.

A converted run holds config.json, tokenizer.json and an orbax checkpoint at step 0 with the
step, params and model state, but no optimizer state: `load_run` reads only those, so
`llmjax sample` and `llmjax eval` work on it, and a float32 AdamW state would triple the bytes
written for no use. A chat model's template (chat_template.jinja, or the "chat_template" of
tokenizer_config.json) comes along as the run's chat template, for `llmjax chat` and
`llmjax sft`, and its EOS ids (generation_config.json or config.json) as the run's
generation_config.json, so generation stops where transformers' does.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from llmjax.config import save_config
from llmjax.errors import ChatTemplateError
from llmjax.hf.export import export_hf
from llmjax.hf.family import HFError
from llmjax.hf.load import load_hf, load_tokenizer_file
from llmjax.hf.outdir import check_new, fresh_directory
from llmjax.hf.peft import export_peft
from llmjax.models.lora import split_adapters, without_lora
from llmjax.runs import RunDir, load_run, save_weights
from llmjax.runs.chat_template import has_hf_template, run_template, save_template
from llmjax.runs.generation import generation_config_text

log = logging.getLogger(__name__)


def convert_from_hf(
    hf_dir: str | Path,
    out: str | Path,
    *,
    dtype: str = "float32",
    tokenizer: str | Path | None = None,
) -> Path:
    """Writes a new llmjax run directory `out` from a HF checkpoint directory.

    `tokenizer` is a tokenizer.json to use when `hf_dir` has none (a run needs one).
    """
    check_new(out)
    loaded = load_hf(hf_dir, dtype=dtype)
    tok = loaded.tokenizer
    if tokenizer is not None:
        tok = load_tokenizer_file(tokenizer, loaded.config.model.vocab_size)
    if tok is None:
        raise HFError(
            f"{hf_dir} has no tokenizer.json, and a run needs one to turn text into ids; pass "
            f"--tokenizer FILE (the model's HF tokenizer.json)"
        )
    run_tokenizer = Path(out).absolute() / "tokenizer.json"
    cfg = dataclasses.replace(
        loaded.config, data=dataclasses.replace(loaded.config.data, tokenizer=str(run_tokenizer))
    )
    with fresh_directory(out) as tmp:
        run = RunDir(tmp)
        run.claim()
        save_config(cfg, run.config)
        tok.save(tmp)
        if loaded.eos_ids:
            run.generation_config.write_text(generation_config_text(loaded.eos_ids))
        _keep_chat_template(Path(hf_dir), tmp)
        save_weights(run, 0, loaded.params)
    return Path(out)


def _keep_chat_template(hf_dir: Path, run_path: Path) -> None:
    """Records the HF directory's chat template in the run; one that llmjax refuses (unsafe,
    or not Jinja) is left out with a warning: the weights convert all the same."""
    from llmjax.data.instruct import HFChatTemplate

    if not has_hf_template(hf_dir):
        return
    try:
        save_template(run_path, HFChatTemplate.from_pretrained(hf_dir))
    except ChatTemplateError as e:
        log.warning("the chat template of %s is not kept: %s", hf_dir, e)


def convert_to_hf(
    run_dir: str | Path,
    out: str | Path,
    *,
    model_type: str | None = None,
    dtype: str | None = None,
    adapter: bool = False,
) -> Path:
    """Writes a new HF checkpoint directory `out` from an llmjax run's newest checkpoint.

    A LoRA run is written with its adapters merged into the weights; with `adapter`, `out`
    holds the base weights and `out/adapter/` the adapters in PEFT's format (load them with
    `peft.PeftModel.from_pretrained(model, "out/adapter")`). The chat template a fine-tuned
    run records goes into tokenizer_config.json (`tokenizer.apply_chat_template` then renders
    conversations as the run was trained on them).
    """
    check_new(out)
    loaded = load_run(run_dir)
    model = loaded.config.model
    if adapter and not model.lora.rank:
        raise HFError(
            f"{run_dir} has no LoRA adapters (model.lora.rank=0), so there is no adapter to "
            f"export; drop --adapter"
        )
    chat_template = _jinja_of(run_template(loaded.run.path, loaded.tokenizer))
    if not adapter:
        return export_hf(
            loaded.config,
            loaded.params,
            out,
            tokenizer=loaded.tokenizer,
            model_type=model_type,
            dtype=dtype,
            chat_template=chat_template,
            eos_ids=loaded.eos_ids,
        )
    base, _ = split_adapters(loaded.params)
    base_model = without_lora(model)
    export_hf(
        base_model,
        base,
        out,
        tokenizer=loaded.tokenizer,
        model_type=model_type,
        dtype=dtype,
        chat_template=chat_template,
        eos_ids=loaded.eos_ids,
    )
    export_peft(
        model,
        loaded.params,
        Path(out) / "adapter",
        model_type=model_type,
        base_model=str(Path(out).absolute()),
        dtype=dtype,
    )
    return Path(out)


def _jinja_of(template) -> str | None:
    """The Jinja source of a run's chat template, for tokenizer_config.json (None: no template
    recorded)."""
    from llmjax.data.instruct import HFChatTemplate, SimpleTemplate

    if isinstance(template, HFChatTemplate):
        return template.source
    if isinstance(template, SimpleTemplate):
        return SimpleTemplate.JINJA
    return None
