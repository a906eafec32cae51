"""PreferenceData: a run's preference pairs, encoded under its tokenizer and chat template,
split into training and held-out pairs, as a batch source and evaluation batches.

The held-out split of a single file (or of the built-in pairs) is a seeded draw of
`val_fraction` of its pairs (PreferenceDataConfig.data_seed, at least one); the rest train,
in order. Training batches come from PreferenceBatches (a pure function of (train.seed,
step)); the evaluation batches hold every held-out pair once, the last batch filled with
empty rows (mask 0), which the objectives do not count.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from llmjax.data.instruct import ChatTemplate
from llmjax.data.preference.builtin import builtin_pairs
from llmjax.data.preference.config import PreferenceDataConfig, PreferenceRecord
from llmjax.data.preference.encode import EncodedPair, PairStats, encode_pairs, pair_rows
from llmjax.data.preference.records import PreferencePair, load_pairs
from llmjax.data.preference.source import PreferenceBatches
from llmjax.data.sources import HostBatch
from llmjax.data.tokenizers import Tokenizer
from llmjax.errors import ChatTemplateError, InstructDataError


def _existing(path: str, option: str) -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        what = "is a directory" if file.is_dir() else "does not exist"
        raise InstructDataError(
            f'{option} {path} {what}; pass a JSONL (or Parquet) file of {{"prompt", "chosen", '
            f'"rejected"}} records'
            + (", or builtin for generated pairs" if option == "--data" else "")
        )
    return file


def load_preference_pairs(
    config: PreferenceDataConfig,
) -> tuple[list[PreferencePair], list[PreferencePair], int]:
    """(training pairs, held-out pairs, identical pairs skipped) of `config`."""
    skipped = 0
    if config.builtin:
        pairs = builtin_pairs(
            config.data_seed, config.builtin_pairs, temperature=config.rater_temperature
        )
    else:
        pairs, skipped = load_pairs(_existing(config.data, "--data"))
    if config.val_data is not None:
        val, more = load_pairs(_existing(config.val_data, "--val-data"))
        return pairs, val, skipped + more
    train, val = config.held_out(pairs, "usable pair", "pairs")
    return train, val, skipped


def _encode(pairs, what, tokenizer, template, seq_len) -> tuple[list[EncodedPair], PairStats]:
    try:
        return encode_pairs(pairs, tokenizer, seq_len, template=template)
    except ChatTemplateError as e:
        raise ChatTemplateError(f"{what}: {e}") from None
    except InstructDataError as e:
        raise InstructDataError(f"{what}: {e}") from None


@dataclass(frozen=True, eq=False)
class PreferenceData:
    """Encoded training and held-out pairs of a PreferenceDataConfig."""

    config: PreferenceDataConfig
    tokenizer: Tokenizer
    template: ChatTemplate
    seq_len: int
    train: list[EncodedPair]
    val: list[EncodedPair]
    train_stats: PairStats
    val_stats: PairStats
    fingerprints: dict[str, str] = field(default_factory=dict)
    # The reference policy's (chosen, rejected) sequence log-probs of every pair [N, 2]: a
    # cache DPO reads instead of running the reference (None: run it).
    train_ref_logps: np.ndarray | None = None
    val_ref_logps: np.ndarray | None = None
    reference_step: int | None = None
    reference: str | None = None  # the reference's run (None: train.init_from)
    cached_reference: bool = False  # DPO trains on cached reference log-probs

    @classmethod
    def build(
        cls,
        config: PreferenceDataConfig,
        tokenizer: Tokenizer,
        template: ChatTemplate,
        seq_len: int,
    ) -> PreferenceData:
        """Reads, splits and encodes the pairs (each side truncated to `seq_len + 1` tokens)."""
        config = config.absolute()
        train_pairs, val_pairs, skipped = load_preference_pairs(config)
        where = "the built-in pairs" if config.builtin else config.data
        val_where = config.val_data or f"the held-out part of {where}"
        train, train_stats = _encode(train_pairs, where, tokenizer, template, seq_len)
        val, val_stats = _encode(val_pairs, val_where, tokenizer, template, seq_len)
        train_stats.identical_skipped = skipped
        prints = config.fingerprints()
        return cls(config, tokenizer, template, seq_len, train, val, train_stats, val_stats, prints)

    @property
    def pad_id(self) -> int:
        return 0 if self.tokenizer.pad_id is None else self.tokenizer.pad_id

    def with_reference(
        self, train_ref_logps: np.ndarray, val_ref_logps: np.ndarray
    ) -> PreferenceData:
        """The data with the reference's log-probs of every pair (see `reference_logps`)."""
        for name, have, pairs in (
            ("train", train_ref_logps, self.train),
            ("val", val_ref_logps, self.val),
        ):
            if np.shape(have) != (len(pairs), 2):
                raise ValueError(
                    f"{name} reference log-probs have shape {np.shape(have)}, not "
                    f"({len(pairs)}, 2): one (chosen, rejected) pair of sums per pair"
                )
        return replace(
            self,
            train_ref_logps=np.asarray(train_ref_logps, np.float32),
            val_ref_logps=np.asarray(val_ref_logps, np.float32),
        )

    def source(self, batch_size: int, seed: int) -> PreferenceBatches:
        """The training batches: a pure function of (seed, step)."""
        return PreferenceBatches(
            self.train, batch_size, self.seq_len, seed, self.pad_id, self.train_ref_logps
        )

    def val_batches(
        self, batch_size: int, max_batches: int | None = None, *, split: str = "val"
    ) -> list[HostBatch]:
        """Every held-out pair once (at most `max_batches` batches), the last batch padded
        with empty rows. `split="train"`: the training pairs in order, likewise."""
        encoded, refs = (
            (self.val, self.val_ref_logps) if split == "val" else (self.train, self.train_ref_logps)
        )
        count = -(-len(encoded) // batch_size)
        if max_batches is not None:
            count = min(count, max_batches)
        batches = []
        for b in range(count):
            idx = np.arange(b * batch_size, min((b + 1) * batch_size, len(encoded)))
            part = pair_rows(encoded, idx, self.seq_len, pad_id=self.pad_id, ref_logps=refs)
            missing = batch_size - len(idx)
            if missing:
                part = {
                    k: np.concatenate([v, np.full((missing, *v.shape[1:]), self._fill(k), v.dtype)])
                    for k, v in part.items()
                }
            batches.append(part)
        return batches

    def _fill(self, name: str) -> float:
        return self.pad_id if name.endswith(("inputs", "targets")) else 0

    def summary(self) -> dict[str, dict[str, int]]:
        """PairStats of both splits."""
        return {"train": self.train_stats.as_dict(), "val": self.val_stats.as_dict()}

    def record(self) -> PreferenceRecord:
        return PreferenceRecord(
            self.config,
            self.fingerprints,
            self.reference_step,
            self.reference,
            self.cached_reference,
        )


def describe(summary: dict[str, dict[str, int]]) -> str:
    """One line about what reading and encoding the pairs did, for the command line."""
    parts = [
        f"{split} {s['pairs']} pairs ({s['truncated']} truncated, {s['dropped_pairs']} dropped)"
        for split, s in summary.items()
    ]
    skipped = summary["train"].get("identical_skipped", 0)
    tail = f"; {skipped} identical pairs skipped" if skipped else ""
    return "; ".join(parts) + tail
