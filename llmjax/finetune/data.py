"""SFTData: a fine-tuning run's conversations, encoded under its tokenizer and chat template,
split into training and held-out conversations, as a batch source and evaluation batches.

The held-out split of a single file is a seeded draw of `val_fraction` of its conversations
(SFTConfig.data_seed, at least one); the rest train, in file order. Training batches come from
InstructBatches (a pure function of (train.seed, step), so a resumed run is exact); the
evaluation batches are every held-out conversation once, in rows laid out as in training, the
last batch filled with empty rows (mask 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from llmjax.data import Tokenizer
from llmjax.data.instruct import (
    ChatTemplate,
    Conversation,
    Encoded,
    EncodeStats,
    InstructBatches,
    encode_all,
    load_jsonl,
    make_rows,
    make_tasks,
    row_stats,
)
from llmjax.data.sources import HostBatch
from llmjax.errors import ChatTemplateError, InstructDataError
from llmjax.finetune.config import SFT_FILE, SFTConfig, record_text
from llmjax.runs.chat_template import template_files


def load_conversations(config: SFTConfig) -> tuple[list[Conversation], list[Conversation]]:
    """(training, held-out) conversations of `config`."""
    if config.builtin:
        examples = make_tasks(config.data_seed, config.builtin_examples, "train")
        conversations = [e.conversation() for e in examples]
    else:
        conversations = load_jsonl(_existing(config.data, "--data"))
    if config.val_data is not None:
        return conversations, load_jsonl(_existing(config.val_data, "--val-data"))
    return config.held_out(conversations, "conversation", "conversations")


def _existing(path: str, option: str) -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        what = "is a directory" if file.is_dir() else "does not exist"
        raise InstructDataError(
            f"{option} {path} {what}; pass a JSONL file of conversations (one "
            f'{{"prompt": ..., "response": ...}} or {{"messages": [...]}} object per line, or a '
            "Parquet file of those columns)"
            + (", or builtin for the generated tasks" if option == "--data" else "")
        )
    return file


def _encode(
    conversations: list[Conversation],
    what: str,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    seq_len: int,
    train_on: str,
) -> tuple[list[Encoded], EncodeStats]:
    try:
        return encode_all(conversations, tokenizer, seq_len, template=template, train_on=train_on)
    except ChatTemplateError as e:
        raise ChatTemplateError(f"{what}: {e}") from None
    except InstructDataError as e:
        raise InstructDataError(f"{what}: {e}") from None


@dataclass(frozen=True, eq=False)
class SFTData:
    """Encoded training and held-out conversations of an SFTConfig."""

    config: SFTConfig
    tokenizer: Tokenizer
    template: ChatTemplate
    seq_len: int
    train: list[Encoded]
    val: list[Encoded]
    train_stats: EncodeStats
    val_stats: EncodeStats
    fingerprints: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(
        cls, config: SFTConfig, tokenizer: Tokenizer, template: ChatTemplate, seq_len: int
    ) -> SFTData:
        """Reads, splits and encodes the conversations (truncated to `seq_len + 1` tokens)."""
        config = config.absolute()
        train_conversations, val_conversations = load_conversations(config)
        where = "the built-in tasks" if config.builtin else config.data
        val_where = config.val_data or f"the held-out part of {where}"
        options = (tokenizer, template, seq_len, config.train_on)
        train, train_stats = _encode(train_conversations, where, *options)
        val, val_stats = _encode(val_conversations, val_where, *options)
        prints = config.fingerprints()
        return cls(config, tokenizer, template, seq_len, train, val, train_stats, val_stats, prints)

    @property
    def pad_id(self) -> int:
        return 0 if self.tokenizer.pad_id is None else self.tokenizer.pad_id

    def source(self, batch_size: int, seed: int) -> InstructBatches:
        """The training batches: a pure function of (seed, step)."""
        return InstructBatches(
            self.train,
            batch_size=batch_size,
            seq_len=self.seq_len,
            seed=seed,
            packed=self.config.packing,
            pad_id=self.pad_id,
        )

    @cached_property
    def _val_rows(self) -> dict[str, np.ndarray]:
        rows, _ = make_rows(self.val, self.seq_len, packed=self.config.packing, pad_id=self.pad_id)
        return rows

    def val_batches(self, batch_size: int, max_batches: int | None = None) -> list[HostBatch]:
        """Every held-out conversation once (at most `max_batches` batches of rows)."""
        rows = self._val_rows
        n = len(rows["inputs"])
        count = -(-n // batch_size)
        if max_batches is not None:
            count = min(count, max_batches)
        batches = []
        for b in range(count):
            part = {k: v[b * batch_size : (b + 1) * batch_size] for k, v in rows.items()}
            missing = batch_size - len(part["inputs"])
            if missing:
                part = {
                    k: np.concatenate([v, np.full((missing, *v.shape[1:]), self._fill(k), v.dtype)])
                    for k, v in part.items()
                }
            batches.append(part)
        return batches

    def _fill(self, name: str) -> int:
        return self.pad_id if name in ("inputs", "targets") else 0

    def summary(self, batch_size: int = 1, seed: int = 0) -> dict[str, dict[str, float]]:
        """EncodeStats of both splits, with the rows they fill and the share of real tokens in
        them (packing's effect; training rows: the first epoch's)."""
        train_rows = self.source(batch_size, seed).stats()
        return {
            "train": {**self.train_stats.as_dict(), **train_rows},
            "val": {**self.val_stats.as_dict(), **row_stats(self._val_rows)},
        }

    def run_files(self) -> dict[str, str]:
        """The run files that let `llmjax chat` and `--resume` use this data's template and
        rebuild its batches: sft.json and the chat template."""
        return {
            SFT_FILE: record_text(self.config, self.fingerprints),
            **template_files(self.template),
        }


def describe(summary: dict[str, dict[str, float]], packing: bool) -> str:
    """One line about what encoding and packing did, for the command line."""
    parts = []
    for split in ("train", "val"):
        s = summary[split]
        parts.append(
            f"{split} {s['conversations']} conversations ({s['truncated']} truncated, "
            f"{s['dropped_conversations']} dropped) in {s['rows']} rows, "
            f"{100 * s['real_token_share']:.1f}% of their tokens real"
        )
    layout = "packed" if packing else "one conversation per row"
    return f"{'; '.join(parts)} ({layout})"
