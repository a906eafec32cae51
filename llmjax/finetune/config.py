"""SFTConfig: where a supervised fine-tuning run's conversations come from and how they become
rows. A run keeps it in RUN/sft.json (with fingerprints of its files), so `--resume` rebuilds
exactly the batches it trained on."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmjax.config.checks import check, check_choice
from llmjax.data.instruct import TRAIN_ON
from llmjax.data.recorded import BUILTIN, DataFiles
from llmjax.errors import ConfigError

SFT_FILE = "sft.json"


@dataclass(frozen=True)
class SFTConfig(DataFiles):
    """The instruction data of a fine-tuning run."""

    # A JSONL file of {"prompt", "response"[, "system"]} or {"messages": [...]} records, or
    # "builtin": `builtin_examples` generated tasks of the "train" split.
    data: str
    # A JSONL file to evaluate on; None: hold out `val_fraction` of `data`.
    val_data: str | None = None
    val_fraction: float = 0.1
    train_on: str = "responses"  # responses: the replies' tokens; all: every token
    packing: bool = True  # several conversations per row (False: one per row)
    builtin_examples: int = 2000
    # Seeds the built-in tasks and the held-out split (not train.seed, which orders the
    # batches: another batch order keeps the same validation conversations).
    data_seed: int = 0

    def __post_init__(self):
        check(
            isinstance(self.data, str) and bool(self.data),
            f"sft data (--data) must be a JSONL file or {BUILTIN!r}, got {self.data!r}",
        )
        check(
            isinstance(self.val_fraction, float | int) and 0.0 < self.val_fraction < 1.0,
            f"sft val_fraction (--val-fraction) must be in (0, 1), e.g. 0.1, got "
            f"{self.val_fraction!r}",
        )
        check_choice("sft train_on (--train-on)", self.train_on, TRAIN_ON)
        check(
            isinstance(self.builtin_examples, int) and self.builtin_examples >= 2,
            f"sft builtin_examples (--builtin-examples) must be an integer >= 2, got "
            f"{self.builtin_examples!r}",
        )
        check(
            isinstance(self.data_seed, int) and self.data_seed >= 0,
            f"sft data_seed (--data-seed) must be an integer >= 0, got {self.data_seed!r}",
        )


def record_text(config: SFTConfig, fingerprints: dict[str, str]) -> str:
    """The text of RUN/sft.json."""
    record = {"sft": dataclasses.asdict(config), "fingerprints": fingerprints}
    return json.dumps(record, indent=1) + "\n"


def read_record(run_path: str | os.PathLike) -> tuple[SFTConfig, dict[str, str]]:
    """(config, file fingerprints) of the sft run in `run_path`."""
    path = Path(run_path) / SFT_FILE
    if not path.is_file():
        raise ConfigError(
            f"{run_path} has no {SFT_FILE}, so it is not a run `llmjax sft` started; resume it "
            f"with `llmjax train --resume --out {run_path}`, or start it again with `llmjax sft`"
        )
    try:
        record: Any = json.loads(path.read_text(encoding="utf-8"))
        fields = {f.name for f in dataclasses.fields(SFTConfig)}
        settings = record["sft"]
        unknown = set(settings) - fields
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)}")
        return SFTConfig(**settings), dict(record.get("fingerprints") or {})
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} is damaged ({e}); restore it from a copy") from None
