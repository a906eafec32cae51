"""Errors shared by every layer of the package; they carry messages meant for users."""


class ConfigError(ValueError):
    """A config value is invalid; the message says which one and how to fix it."""


class BatchError(ValueError):
    """A batch lacks what the objective needs, or has the wrong shape; the message says which."""


class InstructDataError(ValueError):
    """An instruction-data file is malformed; the message names the file, line and field."""


class DataError(ValueError):
    """A data input cannot be read as asked (a field it lacks, a format it is not, a package it
    needs); the message names the input, what it has, and the fix."""


class ChatTemplateError(ValueError):
    """A chat template is unsafe, fails to render, or cannot mark response spans."""


def summarize(error: BaseException, limit: int = 300) -> str:
    """An exception in one line: its type and the first line of its message, cut to `limit`
    characters (libraries such as orbax and tensorstore put pages of detail after it)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else "(no message)"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(error).__name__}: {text}"
