"""Supervised fine-tuning on instruction data: a run from another run's params trained with the
`sft` objective on conversations (a JSONL file or the built-in tasks), recording its chat
template for `llmjax chat`.

    cfg = sft_config(init_from="runs/base", overrides=["train.steps=200"])
    data = open_sft(cfg, SFTConfig(data="chats.jsonl", val_fraction=0.1))
    print(describe(data.summary(), data.config.packing))
    result = fit_sft(cfg, "runs/chat", data)
"""

from llmjax.finetune.config import BUILTIN, SFT_FILE, SFTConfig, read_record
from llmjax.finetune.data import SFTData, describe, load_conversations
from llmjax.finetune.sft import fit_sft, open_sft, sft_config

__all__ = [
    "BUILTIN",
    "SFT_FILE",
    "SFTConfig",
    "SFTData",
    "describe",
    "fit_sft",
    "load_conversations",
    "open_sft",
    "read_record",
    "sft_config",
]
