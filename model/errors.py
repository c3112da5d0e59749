"""Errors the engine raises for bad user input.

``ConfigError`` carries a one-line message meant for the user; the CLI prints it
on stderr and exits with code 2 (no traceback). Anything else is a bug or an
environment failure and is allowed to surface as one.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad user input: a flag value, a data file, a config file."""


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used: unreadable, foreign, or of another shape."""
