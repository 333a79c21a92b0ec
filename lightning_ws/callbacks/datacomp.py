"""Prediction writer for the DataComp filter-signal pass: one signal cache per shard, written by the rank that read
the shard (see :mod:`lightning_ws.datacomp.signals`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter

from lightning_ws.contracts import UID
from lightning_ws.datacomp.signals import RowBuffer

__all__ = ["SignalCacheWriter"]


class SignalCacheWriter(BasePredictionWriter):
    """Collect :class:`~lightning_ws.modules.FilterSignalModule` outputs by shard and write
    ``<cache_dir>/<shard>.signals.safetensors`` at the end of ``predict`` (every rank writes the shards it read;
    nothing is gathered, so it scales to many GPUs / nodes).

    Args:
        cache_dir: output folder.
    """

    def __init__(self, cache_dir: str) -> None:
        super().__init__(write_interval="batch")
        self.cache_dir = Path(cache_dir)
        self._buf = RowBuffer(self.cache_dir)
        self.written: list[Path] = []

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int) -> None:
        self._buf.add(prediction[UID], prediction["url"], prediction["signals"])

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.written = self._buf.flush()
