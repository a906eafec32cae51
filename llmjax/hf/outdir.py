"""A new output directory that appears whole or not at all, and never replaces an existing one."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from llmjax.hf.family import HFError


def check_new(out: str | Path) -> Path:
    """`out` as a Path; raises if anything exists there (llmjax never overwrites it)."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise HFError(
            f"output directory {out} already exists; llmjax never overwrites it. Choose "
            f"another --out, or move it away yourself"
        )
    return out


@contextmanager
def fresh_directory(out: str | Path) -> Iterator[Path]:
    """Yields a private sibling directory to fill; on success it is renamed to `out`.

    A failure midway removes the partial directory (which only this call wrote), so a retry
    is not refused by a half-written `out`.
    """
    out = check_new(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    tmp.mkdir()
    try:
        yield tmp
        check_new(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
