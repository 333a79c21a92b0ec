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


def check_choice(name: str, value: object, choices: object) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices``.

    ``choices`` is the ``Literal[...]`` type of the argument (optionally ``Literal[...] | None``), so the annotation
    that LightningCLI validates is also the one source of the check for Python callers. A tuple also works.
    """
    from typing import Literal, Union, get_args, get_origin

    def flat(t: object) -> list[object]:
        if get_origin(t) is Literal:
            return list(get_args(t))
        if get_origin(t) is Union or type(t).__name__ == "UnionType":
            return [v for a in get_args(t) for v in flat(a)]
        if t is type(None):
            return [None]
        return list(t) if isinstance(t, (tuple, list, set, frozenset)) else [t]

    allowed = flat(choices)
    if value not in allowed:
        shown = ", ".join("null" if a is None else repr(a) for a in allowed)
        raise ConfigError(f"{name} must be one of {shown}; got {value!r}.")
