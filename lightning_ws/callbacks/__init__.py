"""Lightning callbacks of lightning_ws.

Classes are imported on first use (``from lightning_ws.callbacks import GradMimicCallback``), so importing this package is cheap
and one method's optional dependencies never break another's.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "GradMimicCallback": "lightning_ws.callbacks.gradmimic",
    "reduce_per_sample_loss": "lightning_ws.callbacks.gradmimic",
    "RnBCallback": "lightning_ws.callbacks.rnb",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lightning_ws.callbacks' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
