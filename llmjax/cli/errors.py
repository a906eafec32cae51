"""What the command line says when a command fails: one line naming the file or value and the
fix, never a traceback (LLMJAX_DEBUG=1 shows it). Each translation is a plain function of the
exception, so it is tested without running out of memory or filling a disk."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llmjax.errors import ConfigError, summarize

DEBUG_ENV = "LLMJAX_DEBUG"
DEBUG_HINT = f"run with {DEBUG_ENV}=1 for the traceback"


def debug() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def unexpected_message(error: BaseException) -> str:
    """One line for an exception no check anticipated: its type and the first line of its
    message (libraries such as orbax put pages of detail after it)."""
    return f"{summarize(error)} ({DEBUG_HINT})"


# ----------------------------------------------------------------------------- out of memory


class OutOfMemory(RuntimeError):
    """A program did not fit in device (or host) memory; the message names the shapes and how
    to make them fit."""


def is_out_of_memory(error: BaseException) -> bool:
    """XLA's RESOURCE_EXHAUSTED / "Out of memory" (raised as jax's JaxRuntimeError, called
    XlaRuntimeError before jax 0.4.36), or Python's MemoryError."""
    if isinstance(error, MemoryError):
        return True
    import jax

    runtime_errors = tuple(
        cls
        for cls in (getattr(jax.errors, "JaxRuntimeError", None), _xla_runtime_error())
        if isinstance(cls, type)
    )
    if not isinstance(error, runtime_errors):
        return False
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def _xla_runtime_error() -> type | None:
    try:
        from jax.errors import XlaRuntimeError  # older jax
    except ImportError:
        return None
    return XlaRuntimeError


def _gib(n_bytes: float) -> str:
    if n_bytes >= 2**30:
        return f"{n_bytes / 2**30:.1f} GiB"
    return f"{n_bytes / 2**20:.1f} MiB"


def memory_asked(text: str) -> str | None:
    """How much memory XLA says it wanted, in words, from its error message; None if it does
    not say. CPU: "allocating N bytes"; GPU: "allocate N bytes" or "1.2GiB (1288490188B)"; TPU
    compiles: "Used 20.5G of 15.48G hbm"."""
    used = re.search(r"Used ([\d.]+[KMGT]?) of ([\d.]+[KMGT]?) (\w+)", text)
    if used:
        return f"{used.group(1)}B of {used.group(3)} memory, of {used.group(2)}B available"
    for pattern in (r"allocat\w* (\d+) bytes", r"\((\d+)B\)", r"(\d+) bytes"):
        found = re.search(pattern, text)
        if found:
            return f"an allocation of {_gib(int(found.group(1)))}"
    return None


def out_of_memory_message(
    error: BaseException, facts: Mapping[str, Any], fixes: Sequence[str]
) -> str:
    """`error` in one line: what ran out, the shapes that asked for it, and what to change."""
    asked = memory_asked(str(error))
    where = "host memory (MemoryError)" if isinstance(error, MemoryError) else "device memory"
    message = f"out of {where}"
    if asked:
        message += f": XLA asked for {asked}"
    parts = [f"a model of {v}" if k == "model" else f"{k}={v}" for k, v in facts.items()]
    if parts:
        message += " with " + ", ".join(parts)
    return message + ". To fit: " + "; or ".join(fixes)


GENERAL_FIXES = (
    "a smaller batch (data.batch_size), train.grad_accum to split it into micro-batches, "
    "model.remat=full, or a smaller model"
)


def _model_size(model) -> str:
    text = f"{model.n_layers} layers x d_model {model.d_model}"
    try:
        from llmjax.scaling import param_counts

        n = param_counts(model).total
    except Exception:  # noqa: BLE001  (a size to print, never a reason to fail)
        return text
    size = f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"
    return f"{text} ({size} params)"


def _more_micro_batches(batch_size: int, grad_accum: int) -> int | None:
    """The next train.grad_accum above `grad_accum` that divides the batch evenly."""
    return next(
        (k for k in range(2 * grad_accum, batch_size + 1, grad_accum) if batch_size % k == 0),
        None,
    )


def train_memory(cfg) -> tuple[dict[str, Any], list[str]]:
    """The facts and fixes of a training run that ran out of memory."""
    batch, accum = cfg.data.batch_size, cfg.train.grad_accum
    facts = {
        "data.batch_size": batch,
        "seq_len": cfg.seq_len,
        "train.grad_accum": accum,
        "model.remat": cfg.model.remat,
        "model": _model_size(cfg.model),
    }
    fixes = [f"lower data.batch_size (--set data.batch_size={max(1, batch // 4)})"]
    more = _more_micro_batches(batch, accum)
    if more is not None:
        fixes.append(
            f"split each batch into more micro-batches (--grad-accum {more}: "
            f"{batch // more} sequences at a time instead of {batch // accum})"
        )
    if cfg.model.remat != "full":
        fixes.append("recompute activations in the backward pass (--set model.remat=full)")
    fixes.append("shorten data.seq_len or use a smaller model (model.d_model, model.n_layers)")
    return facts, fixes


def eval_memory(cfg, batch_size: int) -> tuple[dict[str, Any], list[str]]:
    facts = {"batch_size": batch_size, "seq_len": cfg.seq_len, "model": _model_size(cfg.model)}
    return facts, [f"evaluate smaller batches (--batch-size {max(1, batch_size // 4)})"]


def sample_memory(
    cfg, *, rows: int, length: int, num_beams: int, use_cache: bool
) -> tuple[dict[str, Any], list[str]]:
    facts = {
        "rows": rows,
        "num_beams": num_beams,
        "sequence length": length,
        "model": _model_size(cfg.model),
    }
    fixes = ["fewer prompts or --num-samples", "a smaller --max-new-tokens"]
    if num_beams > 1:
        fixes.insert(0, "fewer --num-beams")
    if not use_cache:
        fixes.append("drop --no-cache")
    return facts, fixes


@contextmanager
def explain_out_of_memory(
    describe: Callable[[], tuple[Mapping[str, Any], Sequence[str]]],
) -> Iterator[None]:
    """Turns an out-of-memory error inside the block into an OutOfMemory whose message has the
    facts and fixes `describe()` gives (called only then)."""
    try:
        yield
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        facts, fixes = describe()
        raise OutOfMemory(out_of_memory_message(e, facts, fixes)) from e


# ----------------------------------------------------------------------------- files


_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is used up",
    errno.ENOENT: "no such file or directory",
    errno.EISDIR: "it is a directory, where a file was expected",
    errno.ENAMETOOLONG: "the name is too long",
}


def _file_part(path: Path) -> Path | None:
    """The first prefix of `path` that is a file, not a directory (what makes mkdir fail)."""
    for parent in reversed([path, *path.parents]):
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def _option_for(path: Path, options: Mapping[str, str | None]) -> str | None:
    """The command line option whose path `path` is, or lies under (or above)."""
    for option, value in options.items():
        if not value:
            continue
        given = Path(value)
        if path == given or given in path.parents or path in given.parents:
            return option
    return None


def os_error_message(error: OSError, options: Mapping[str, str | None] = {}) -> str:  # noqa: B006
    """`error` in one line naming its path, the reason and the fix; `options` maps command line
    options to the paths they were given, so the message can name the option to change."""
    if error.strerror is None or error.filename is None:
        return str(error)  # llmjax's own message, which already says all that
    path = Path(os.fsdecode(error.filename))
    option = _option_for(path, options)
    other = f"choose another {option}" if option else "choose another path"
    code = error.errno
    if code == errno.ENOTDIR or (code == errno.EEXIST and _file_part(path) is not None):
        part = _file_part(path)
        where = f"{part} is a file, not a directory" if part else "a part of it is not a directory"
        return f"cannot use {path}: {where}; {other}"
    reason = _REASONS.get(code, error.strerror)
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = f"{other} (one you can write to), or fix the permissions"
    elif code in (errno.ENOSPC, errno.EDQUOT):
        fix = f"free some space, or {other} on another disk"
    elif code == errno.ENOENT:
        fix = f"check the path, or {other}"
    else:
        fix = other
    return f"cannot use {path}: {reason}; {fix}"


def check_writable_dir(path: str | os.PathLike, option: str) -> None:
    """A directory can be created (or written) at `path`: the nearest existing part of it is a
    writable directory. Raises a ConfigError naming `option` otherwise (before any work)."""
    path = Path(path)
    existing = next((p for p in [path, *path.parents] if p.exists()), None)
    if existing is None:
        return  # a relative path in a directory that vanished: the command will say
    if not existing.is_dir():
        raise ConfigError(
            f"{option} {path}: {existing} is a file, not a directory; choose another {option}"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == path else f"cannot be created in {existing}"
        raise ConfigError(
            f"{option} {path} {what} (permission denied); choose a directory you can write "
            f"to, or fix its permissions"
        )
