"""PreferenceDataConfig: where a preference run's pairs come from. A run keeps it in
RUN/preference.json (with fingerprints of its files, and the step of the run its reference
policy was read from), so that `--resume` rebuilds exactly the batches it trained on."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmjax.config.checks import check
from llmjax.data.recorded import BUILTIN, DataFiles  # builtin: pairs rated by a gold reward
from llmjax.errors import ConfigError

PREFERENCE_FILE = "preference.json"


@dataclass(frozen=True)
class PreferenceDataConfig(DataFiles):
    """The preference pairs of a reward-model or DPO run."""

    # A JSONL file of {"prompt", "chosen", "rejected"} records, or "builtin": `builtin_pairs`
    # generated pairs labelled by the gold reward's noisy raters.
    data: str
    # A JSONL file to evaluate on; None: hold out `val_fraction` of `data`.
    val_data: str | None = None
    val_fraction: float = 0.1
    builtin_pairs: int = 2000
    rater_temperature: float = 0.25  # builtin: Bradley-Terry rater noise (lower: surer)
    # Seeds the built-in pairs and the held-out split (train.seed orders the batches).
    data_seed: int = 0

    def __post_init__(self):
        check(
            isinstance(self.data, str) and bool(self.data),
            f"preference data (--data) must be a JSONL file or {BUILTIN!r}, got {self.data!r}",
        )
        check(
            isinstance(self.val_fraction, float | int) and 0.0 < self.val_fraction < 1.0,
            f"--val-fraction must be in (0, 1), e.g. 0.1, got {self.val_fraction!r}",
        )
        check(
            isinstance(self.builtin_pairs, int) and self.builtin_pairs >= 2,
            f"--builtin-pairs must be an integer >= 2, got {self.builtin_pairs!r}",
        )
        check(
            isinstance(self.rater_temperature, float | int) and self.rater_temperature > 0,
            f"--rater-temperature must be > 0 (e.g. 0.25), got {self.rater_temperature!r}",
        )
        check(
            isinstance(self.data_seed, int) and self.data_seed >= 0,
            f"--data-seed must be an integer >= 0, got {self.data_seed!r}",
        )


@dataclass(frozen=True)
class PreferenceRecord:
    """What RUN/preference.json holds."""

    data: PreferenceDataConfig
    fingerprints: dict[str, str]
    # The step a DPO run's reference was read at (None: no reference), and the run it was read
    # from (None: train.init_from).
    reference_step: int | None = None
    reference: str | None = None
    cached_reference: bool = False  # DPO read the reference's log-probs from a cache

    def text(self) -> str:
        record = {
            "preference_data": dataclasses.asdict(self.data),
            "fingerprints": self.fingerprints,
            "reference_step": self.reference_step,
            "reference": self.reference,
            "cached_reference": self.cached_reference,
        }
        return json.dumps(record, indent=1) + "\n"


def read_record(run_path: str | os.PathLike) -> PreferenceRecord:
    """The PreferenceRecord of the preference run in `run_path`."""
    path = Path(run_path) / PREFERENCE_FILE
    if not path.is_file():
        raise ConfigError(
            f"{run_path} has no {PREFERENCE_FILE}, so it is not a run `llmjax reward` or "
            f"`llmjax dpo` started; start it again with one of them"
        )
    try:
        record: Any = json.loads(path.read_text(encoding="utf-8"))
        fields = {f.name for f in dataclasses.fields(PreferenceDataConfig)}
        settings = record["preference_data"]
        unknown = set(settings) - fields
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)}")
        step = record.get("reference_step")
        return PreferenceRecord(
            PreferenceDataConfig(**settings),
            dict(record.get("fingerprints") or {}),
            None if step is None else int(step),
            record.get("reference"),
            bool(record.get("cached_reference", False)),
        )
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} is damaged ({e}); restore it from a copy") from None
