"""Errors shared by every layer of the package; they carry messages meant for users."""


class ConfigError(ValueError):
    """A config value is invalid; the message says which one and how to fix it."""


class BatchError(ValueError):
    """A batch lacks what the objective needs, or has the wrong shape; the message says which."""


class InstructDataError(ValueError):
    """An instruction-data file is malformed; the message names the file, line and field."""


class ChatTemplateError(ValueError):
    """A chat template is unsafe, fails to render, or cannot mark response spans."""
