"""The project's own errors: every module raises these, none defines its own kind."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot work; raised before any engine starts."""
