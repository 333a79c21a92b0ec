"""Log a distillation teacher's metric beside the student's, on the same validation/test problems.

:class:`TeacherBaselineCallback` asks the datamodule for the teacher's score on the split being evaluated
(``datamodule.weaver_selection_accuracy(split)`` for :class:`~lightning_ws.datamodules.weaver.WeaverDistillDataModule`:
select@1 of the Weaver scores the student regresses) and logs it as ``<stage>/teacher_<name>`` next to the student's
``<stage>/<name>``, so W&B charts and the end-of-run summary show how much of the teacher the student recovered
(Weaver, arXiv 2506.18203, reports the distilled cross-encoder against the full ensemble).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

__all__ = ["TeacherBaselineCallback"]


class TeacherBaselineCallback(pl.Callback):
    """Log ``<stage>/teacher_<metric>`` from ``datamodule.<method>(split)`` at the end of validation and test.

    Args:
        method: the datamodule's method returning the teacher's metric for a split name.
        metric: the student's metric name it compares to (logged as ``teacher_<metric>``).
        splits: stage -> the datamodule's split name.
    """

    def __init__(self, method: str = "weaver_selection_accuracy", metric: str = "select_acc",
                 splits: dict[str, str] | None = None) -> None:
        self.method = method
        self.metric = metric
        self.splits = dict(splits or {"val": "val", "test": "test"})

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        dm: Any = trainer.datamodule
        fn = getattr(dm, self.method, None)
        split = self.splits.get(stage)
        if fn is None or split is None or split not in getattr(dm, "datasets", {split: None}):
            return
        pl_module.log(f"{stage}/teacher_{self.metric}", float(fn(split)), sync_dist=False)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:  # noqa: D102
        if not trainer.sanity_checking:
            self._log(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:  # noqa: D102
        self._log(trainer, pl_module, "test")
