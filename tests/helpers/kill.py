"""A callback that kills its own process with SIGKILL (a crash, not a clean stop), for kill-and-resume tests."""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning.pytorch as pl


class KillAtStep(pl.Callback):
    """SIGKILL the process when the batch after optimizer step ``step`` starts (after step ``step``'s checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = int(step)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class CrashAtStep(pl.Callback):
    """Raise ``RuntimeError`` when the batch after optimizer step ``step`` starts (an in-process crash)."""

    def __init__(self, step: int) -> None:
        self.step = int(step)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")
