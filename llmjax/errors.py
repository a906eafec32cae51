"""Errors shared by every layer of the package; they carry messages meant for users."""


class ConfigError(ValueError):
    """A config value is invalid; the message says which one and how to fix it."""
