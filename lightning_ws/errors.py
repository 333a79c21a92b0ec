"""Exceptions raised by lightning_ws.

Every error we raise for bad user input derives from :class:`LightningWSError`, so that the CLI can print it as one
paragraph (what is wrong and how to fix it) instead of a traceback.
"""

from __future__ import annotations


class LightningWSError(Exception):
    """Base class of user-facing errors: the message says what is wrong and how to fix it."""


class DataError(LightningWSError, ValueError):
    """Input data is missing, malformed, or inconsistent."""


class DataFileNotFoundError(LightningWSError, FileNotFoundError):
    """A data file that a loader or datamodule needs does not exist."""


class ConfigError(LightningWSError, ValueError):
    """An argument or configuration value is invalid."""
