"""In-memory rows of named tensors: the one map-style dataset behind the tensor data modules (Loki, R&B)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.utils.data import Dataset

from lightning_ws.errors import DataError

__all__ = ["TensorDictDataset"]


class TensorDictDataset(Dataset):
    """Rows of named tensors: ``item = {key: tensor[i]}`` (keys from :mod:`lightning_ws.contracts`).

    Args:
        fields: ``{key: (n, ...) tensor}``, all of the same length ``n`` (at least one field).

    Raises:
        DataError: no fields, or fields of different lengths.
    """

    def __init__(self, fields: Mapping[str, torch.Tensor]) -> None:
        lengths = {k: len(v) for k, v in fields.items()}
        if not lengths:
            raise DataError("a TensorDictDataset needs at least one field.")
        if len(set(lengths.values())) != 1:
            raise DataError(f"fields have different lengths: {lengths}.")
        self.fields = dict(fields)

    def __len__(self) -> int:
        return len(next(iter(self.fields.values())))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.fields.items()}
