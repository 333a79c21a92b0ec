"""LightningDataModules of lightning_ws.

Classes are imported on first use (``from lightning_ws.datamodules import TextClassificationDataModule``), so importing this package is cheap
and one method's optional dependencies never break another's.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "TextClassificationDataModule": "lightning_ws.datamodules.text",
    "TokenizedTextDataset": "lightning_ws.datamodules.text",
    "EpochSeededRandomSampler": "lightning_ws.datamodules.text",
    "ResumableDataLoader": "lightning_ws.datamodules.resumable",
    "PseudoLabelDataModule": "lightning_ws.datamodules.weak_supervision",
    "LokiDigitsDataModule": "lightning_ws.datamodules.loki",
    "NoisyImageDataModule": "lightning_ws.datamodules.gradmimic",
    "MixtureDataModule": "lightning_ws.datamodules.rnb",
    "TensorMixtureDataModule": "lightning_ws.datamodules.rnb",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lightning_ws.datamodules' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
