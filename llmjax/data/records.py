"""Records: JSON-like objects read one at a time from JSONL or Parquet files, or from a Hugging
Face dataset (a directory written by `save_to_disk`, or a hub dataset already in the local
cache, named `hf:NAME` or `hf:NAME:CONFIG`; never downloaded).

Parquet needs `pyarrow` and datasets need `datasets`, the optional extras `parquet` and
`datasets` (`pip install 'llmjax[parquet]'`). A Parquet row is a record of its columns, a null
column left out of it: a table has every column in every row, and a null is how a row lacks one.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from llmjax.errors import DataError, summarize

HF_PREFIX = "hf:"
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
# The optional package each reader imports, and the extra that installs it.
EXTRAS = {"pyarrow": "parquet", "datasets": "datasets"}
_BATCH_ROWS = 1024


def require(module: str, what: str) -> ModuleType:
    """Imports `module` (or a submodule, "pyarrow.parquet"), or says which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        extra = EXTRAS[package]
        raise DataError(
            f"{what} needs the optional package {package!r}, which is not installed; install "
            f"it with pip install 'llmjax[{extra}]' (or pip install {package})"
        ) from None


def is_hub_name(path: str | os.PathLike | None) -> bool:
    return isinstance(path, str) and path.startswith(HF_PREFIX)


def is_dataset_dir(path: Path) -> bool:
    """Whether `path` holds what `save_to_disk` writes: a Dataset (state.json and
    dataset_info.json) or a DatasetDict (dataset_dict.json)."""
    return path.is_dir() and (
        (path / "dataset_dict.json").is_file()
        or ((path / "state.json").is_file() and (path / "dataset_info.json").is_file())
    )


def record_files(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """`path` if it is a file, else the files under the directory `path` with one of
    `suffixes` (hidden ones left out), in sorted relative-path order."""
    if not path.is_dir():
        return [path]
    return sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.name.lower().endswith(suffixes)
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )


# ----------------------------------------------------------------------------- whole records


def read_records(
    path: str | os.PathLike, error: type[ValueError] = DataError
) -> Iterator[tuple[str, Any]]:
    """(where, record) for each record of a JSONL or Parquet file, in file order; `where`
    names the file and the line (JSONL, blank lines skipped) or row (Parquet), from 1.

    Raises:
        `error`: a JSONL line that is not JSON.
        DataError: a file that is not Parquet, or pyarrow missing to read one.
    """
    path = Path(path).expanduser()
    if path.name.lower().endswith(PARQUET_SUFFIXES):
        yield from _parquet_records(path)
        return
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            yield where, _json_line(line, where, error)


def _json_line(line: bytes, where: str, error: type[ValueError] = DataError) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise error(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise error(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _parquet_file(path: Path) -> Any:
    pq = require("pyarrow.parquet", f"reading the Parquet file {path}")
    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid (a ValueError) or OSError
        raise DataError(
            f"{path} is not a Parquet file ({summarize(e)}); pass a .parquet file, or a "
            f".jsonl file for JSON lines"
        ) from None


def _parquet_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    row = 0
    for batch in _parquet_file(path).iter_batches(batch_size=_BATCH_ROWS):
        for record in batch.to_pylist():
            row += 1
            yield f"{path}, row {row}", {k: v for k, v in record.items() if v is not None}


# ----------------------------------------------------------------------------- text fields


def _fix(text_field: str, fields: list[str]) -> str:
    example = next((f for f in fields if f != text_field), None)
    hint = f", e.g. --set data.text_field={example}" if example else ""
    return f"set data.text_field to the field that holds the text{hint}"


def _has_no_field(where: str, text_field: str, fields: list[str]) -> DataError:
    listed = ", ".join(map(repr, fields)) or "none"
    return DataError(
        f"{where} has no field {text_field!r} (its fields: {listed}); {_fix(text_field, fields)}"
    )


def _checked_text(value: Any, where: str, text_field: str) -> str | None:
    """A record's text: a string, or None for a null (skipped and counted by the caller)."""
    if value is None or isinstance(value, str):
        return value
    raise DataError(
        f"{where}: field {text_field!r} is a {type(value).__name__}, not text; set "
        "data.text_field to a field of strings"
    )


def jsonl_texts(files: list[Path], text_field: str) -> Iterator[str | None]:
    """The `text_field` of every record of JSONL `files`, in order (None for a null)."""
    for path in files:
        with path.open("rb") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path}, line {number}"
                record = _json_line(line, where)
                if not isinstance(record, dict):
                    raise DataError(
                        f"{where}: expected a JSON object with a {text_field!r} field, got a "
                        f"{type(record).__name__}"
                    )
                if text_field not in record:
                    raise _has_no_field(where, text_field, list(record))
                yield _checked_text(record[text_field], where, text_field)


def check_parquet(files: list[Path], text_field: str) -> None:
    """Each Parquet file has a string column `text_field` (its schema is read, not its rows)."""
    pa = require("pyarrow", "reading Parquet files")
    for path in files:
        schema = _parquet_file(path).schema_arrow
        if text_field not in schema.names:
            raise _has_no_field(f"the Parquet file {path}", text_field, schema.names)
        kind = schema.field(text_field).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise DataError(
                f"the Parquet file {path}: column {text_field!r} holds {kind}, not text; set "
                "data.text_field to a column of strings"
            )


def parquet_texts(files: list[Path], text_field: str) -> Iterator[str | None]:
    """The `text_field` column of Parquet `files` (checked by check_parquet), a batch of rows
    at a time."""
    for path in files:
        for batch in _parquet_file(path).iter_batches(batch_size=_BATCH_ROWS, columns=[text_field]):
            yield from batch.column(0).to_pylist()


# ----------------------------------------------------------------------------- datasets


@contextlib.contextmanager
def _offline(datasets: ModuleType) -> Iterator[None]:
    """No network inside: a hub name is looked up in the local cache only."""
    hub = importlib.import_module("huggingface_hub.constants")
    saved = (datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE = saved


def open_dataset(path: str | os.PathLike, split: str, streaming: bool) -> tuple[Any, list[Path]]:
    """The `split` of a saved dataset directory or of a cached hub dataset (`hf:NAME[:CONFIG]`):
    a `datasets.Dataset`, or with `streaming` a hub dataset's `IterableDataset`; and the Arrow
    files its rows come from (none for a hub dataset streamed from its downloaded files)."""
    datasets = require("datasets", f"reading the dataset {path}")
    if is_hub_name(path):
        name, _, config = str(path).removeprefix(HF_PREFIX).partition(":")
        try:
            with _offline(datasets):
                loaded = datasets.load_dataset(
                    name, config or None, split=split, streaming=streaming
                )
        except Exception as e:  # datasets raises ValueError, ConnectionError, FileNotFound...
            raise DataError(
                f"the hub dataset {name!r}{f' (config {config!r})' if config else ''}, split "
                f"{split!r}, is not in the local datasets cache ({summarize(e)}); llmjax reads "
                "hub datasets offline: download it once with datasets.load_dataset, or pass a "
                "directory written by save_to_disk"
            ) from None
        return loaded, dataset_files(loaded)
    directory = Path(path).expanduser()
    if not is_dataset_dir(directory):
        what = "does not exist" if not directory.exists() else "is not a dataset directory"
        raise DataError(
            f"{directory} {what}: a dataset saved with Dataset.save_to_disk holds state.json and "
            "dataset_info.json (a DatasetDict: dataset_dict.json); pass such a directory, "
            "hf:NAME for a cached hub dataset, or data.format=text for a folder of text files"
        )
    try:
        loaded = datasets.load_from_disk(str(directory))
    except Exception as e:
        raise DataError(f"cannot read the dataset directory {directory}: {summarize(e)}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(
                f"the dataset {directory} has no split {split!r} (its splits: "
                f"{', '.join(map(repr, loaded))}); set data.dataset_split to one of them"
            )
        loaded = loaded[split]
    # A saved dataset is memory-mapped Arrow, read a batch of rows at a time either way: with
    # `streaming` too (to_iterable_dataset would only add the cost of importing torch).
    return loaded, dataset_files(loaded)


def check_dataset(dataset: Any, text_field: str, where: str) -> None:
    """A Dataset or IterableDataset has a string column `text_field`."""
    fields = list(dataset.column_names or dataset.features or [])
    if text_field not in fields:
        raise _has_no_field(where, text_field, fields)
    feature = (dataset.features or {}).get(text_field)
    if getattr(feature, "dtype", "string") not in ("string", "large_string"):
        raise DataError(
            f"{where}: column {text_field!r} holds {feature}, not text; set data.text_field to "
            "a column of strings"
        )


def dataset_texts(dataset: Any, text_field: str) -> Iterator[str | None]:
    """The `text_field` column of a Dataset or IterableDataset (checked by check_dataset), a
    batch of rows at a time."""
    for batch in dataset.select_columns([text_field]).iter(batch_size=_BATCH_ROWS):
        yield from batch[text_field]


def dataset_files(dataset: Any) -> list[Path]:
    """The Arrow files a (non-streaming) Dataset reads; empty for one held in memory."""
    return [Path(f["filename"]) for f in getattr(dataset, "cache_files", None) or []]
