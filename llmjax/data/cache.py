"""Cache directory resolution and crash-safe file writes."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

CACHE_ENV_VAR = "LLMJAX_CACHE_DIR"


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Returns `cache_dir`, else $LLMJAX_CACHE_DIR, else ~/.cache/llmjax (not created)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from_env = os.environ.get(CACHE_ENV_VAR)
    if from_env:
        return Path(from_env).expanduser()
    return Path.home() / ".cache" / "llmjax"


def _temp_path(path: Path) -> Path:
    # The suffix keeps temp files from ever matching a final cache name, so a file left behind by
    # a killed process is never mistaken for a finished one.
    return path.with_name(f"{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def _write_temp(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def atomic_replace(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Writes `path` via `write(file)`: readers see the old file or the whole new one."""
    tmp = _write_temp(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_new_file(path: Path, data: bytes) -> None:
    """Creates `path` with `data` atomically; same content is a no-op, different content raises.

    Raises:
        FileExistsError: `path` exists and holds different bytes.
    """
    if path.exists():
        _check_same(path, data)
        return
    tmp = _write_temp(path, lambda f: f.write(data))
    try:
        # A hard link publishes the file only if the name is still free, so a concurrent writer's
        # different file is never clobbered.
        os.link(tmp, path)
    except FileExistsError:
        _check_same(path, data)
    except OSError:
        # Some filesystems have no hard links; fall back to a check-then-replace.
        if path.exists():
            _check_same(path, data)
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _check_same(path: Path, data: bytes) -> None:
    if path.read_bytes() != data:
        raise FileExistsError(
            f"{path} already exists with different content; refusing to overwrite it. "
            "Choose another directory or remove the file."
        )
