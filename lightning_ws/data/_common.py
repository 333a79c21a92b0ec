"""What every shipped-data loader shares: the abstain value, the data folder, the shipped WRENCH names."""

from __future__ import annotations

from pathlib import Path

from lightning_ws.errors import DataFileNotFoundError

__all__ = ["ABSTAIN", "DATA_DIR", "SHIPPED_WRENCH"]

#: Label-matrix entry meaning "this labeling function abstains".
ABSTAIN: int = -1

#: Folder that holds the shipped data files.
DATA_DIR: Path = Path(__file__).resolve().parent

#: Names of the WRENCH data sets shipped with the package.
SHIPPED_WRENCH = ("youtube", "sms", "trec")


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataFileNotFoundError(
            f"{what} not found: {path}. Pass the folder that holds it (for WRENCH data: train.json, valid.json, "
            f"test.json and label.json), or use a shipped data set by name ({', '.join(SHIPPED_WRENCH)})."
        )
    return path
