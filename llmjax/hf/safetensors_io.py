"""Reading and writing checkpoint weights as safetensors only (single file or sharded index).

Pickle-based weights (`pytorch_model.bin`, `.pt`, `.pth`, `.ckpt`) are refused: unpickling a
file can run arbitrary code, and safetensors holds the same tensors without that risk.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from llmjax.hf.family import HFError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

TO_SAFETENSORS = (
    "convert it once, on a machine where you trust the file, with transformers: "
    "AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(OUT, safe_serialization=True)"
)


class SafetensorsCheckpoint:
    """The tensors of a HF checkpoint directory, read lazily by name; use as a context manager."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.weight_map = _weight_map(self.directory)
        self._stack = ExitStack()
        self._files: dict[str, Any] = {}

    def __enter__(self) -> SafetensorsCheckpoint:
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def names(self) -> set[str]:
        return set(self.weight_map)

    def file_of(self, name: str) -> Path:
        return self.directory / self.weight_map[name]

    def _open(self, name: str) -> Any:
        file = self.weight_map[name]
        if file not in self._files:
            handle = open_safetensors(self.directory / file)
            self._files[file] = self._stack.enter_context(handle)
        return self._files[file]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._open(name).get_slice(name).get_shape())

    def read(self, name: str) -> np.ndarray:
        try:
            return self._open(name).get_tensor(name)
        except SafetensorError as e:
            raise HFError(_damaged(self.file_of(name), e, f"tensor {name!r}")) from e


def _damaged(path: Path, error: Exception, what: str = "its header") -> str:
    return (
        f"{path} is not a readable safetensors file ({what}: {error}); it is truncated or "
        f"damaged: download or copy it again"
    )


def open_safetensors(path: Path) -> Any:
    """safe_open(path), with a damaged or truncated file reported by name."""
    try:
        return safe_open(str(path), framework="numpy")
    except SafetensorError as e:
        raise HFError(_damaged(path, e)) from e


def _weight_map(directory: Path) -> dict[str, str]:
    """tensor name -> file (relative to `directory`) for a single or sharded checkpoint."""
    if not directory.is_dir():
        raise HFError(f"{directory} is not a directory; pass a Hugging Face checkpoint directory")
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise HFError(f"{index} is not a safetensors index (no weight_map): {e}") from e
        missing = sorted({f for f in weight_map.values() if not (directory / f).is_file()})
        if missing:
            raise HFError(f"{index} lists shard(s) that are not in {directory}: {missing}")
        return dict(weight_map)
    single = directory / SINGLE_FILE
    if single.is_file():
        with open_safetensors(single) as f:
            return {name: SINGLE_FILE for name in f.keys()}  # noqa: SIM118 (not a dict)
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise HFError(
            f"{directory} holds only PyTorch pickle weights ({', '.join(pickles)}); llmjax "
            f"reads safetensors only, because loading a pickle can run arbitrary code. To use "
            f"this checkpoint, {TO_SAFETENSORS}"
        )
    present = sorted(p.name for p in directory.iterdir())
    raise HFError(
        f"{directory} has neither {SINGLE_FILE} nor {INDEX_FILE} (it contains: "
        f"{', '.join(present) or 'nothing'}); pass a directory written by save_pretrained"
    )


def write_safetensors(tensors: dict[str, np.ndarray], directory: Path) -> Path:
    """Writes `directory/model.safetensors`; the "pt" format tag is what transformers expects."""
    path = directory / SINGLE_FILE
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), {"format": "pt"})
    return path
