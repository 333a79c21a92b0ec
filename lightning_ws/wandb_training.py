"""What a training run's data module computed before training, logged to W&B beside the run's metrics.

:class:`DataReportCallback` (added to every ``lightning-ws fit``) logs, once at the start of training and on rank 0:

* weak supervision (a data module with ``label_model_report``, :class:`~lightning_ws.datamodules.
  PseudoLabelDataModule` in ``configs/ws_youtube.yaml``, or ``label_report``, the program-labelling configs'
  ``ProgramLabelDataModule``, whose LF table lists the human LFs and the generated programs): ``labelmodel/report`` (the
  label model, coverage, rows kept, class balance and its source, pseudolabel accuracy vs gold...) as a key/value table
  and in the run summary, and ``labelmodel/lf_analysis``, the LF table (polarity, coverage, overlaps, conflicts,
  empirical accuracy, dependency cluster);
* Weaver distillation (a data module with ``weaver_scores``, ``configs/weaver_distill.yaml``): ``weaver/selection``
  (the teacher's select@1, first-candidate and oracle pass@N accuracy on every split) and ``weaver/accuracy_vs_n``
  (select@1 of the teacher's scores when only the first N candidates of each validation problem exist) with a line plot.

Without a W&B logger nothing is logged. The tables are the same ones ``lightning-ws labelmodel --wandb`` and
``lightning-ws weaver select --wandb`` log (:mod:`lightning_ws.wandb_report`).
"""

from __future__ import annotations

import json
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["DataReportCallback", "data_report_tables"]


def _cell(v: Any) -> Any:
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    return json.dumps(v, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


def _label_report(datamodule: Any) -> dict[str, Any]:
    """``label_model_report`` (PseudoLabelDataModule) or ``label_report`` (ProgramLabelDataModule), else ``{}``."""
    for attr in ("label_model_report", "label_report"):
        report = getattr(datamodule, attr, None)
        if isinstance(report, dict) and report:
            return report
    return {}


def data_report_tables(datamodule: Any) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """``{key: (columns, rows)}`` of the tables :class:`DataReportCallback` logs for ``datamodule`` (may be empty)."""
    import numpy as np

    tables: dict[str, tuple[list[str], list[list[Any]]]] = {}
    report = _label_report(datamodule)
    if report:
        tables["labelmodel/report"] = (["key", "value"], [[k, str(_cell(v))] for k, v in report.items()])
    lf = getattr(datamodule, "lf_analysis", None)
    if lf:
        cols = list(lf[0])
        tables["labelmodel/lf_analysis"] = (cols, [[_cell(r.get(c)) for c in cols] for r in lf])
    datasets = getattr(datamodule, "datasets", None)
    if getattr(datamodule, "weaver_scores", None) is not None and isinstance(datasets, dict) and datasets:
        from lightning_ws.wandb_report import accuracy_vs_n

        rows = []
        for split, ds in datasets.items():
            correct = np.asarray(ds.correct, dtype=bool)
            pick = np.asarray(ds.targets).argmax(1)
            rows.append([split, len(correct), float(correct[np.arange(len(pick)), pick].mean()),
                         float(correct[:, 0].mean()), float(correct.any(1).mean())])
        tables["weaver/selection"] = (["split", "problems", "teacher_select_at_1", "first_candidate",
                                       "oracle_pass_at_n"], rows)
        ds = datasets.get("val") or next(iter(datasets.values()))
        curve = accuracy_vs_n(ds.targets, ds.correct)
        tables["weaver/accuracy_vs_n"] = (list(curve[0]), [list(r.values()) for r in curve])
    return tables


class DataReportCallback(pl.Callback):
    """Log the data module's pre-training reports to W&B (see the module docstring)."""

    def __init__(self) -> None:
        self.logged: list[str] = []

    @rank_zero_only
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from lightning.pytorch.loggers import WandbLogger

        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers or trainer.datamodule is None or self.logged:
            return
        tables = data_report_tables(trainer.datamodule)
        if not tables:
            return
        import wandb

        run = loggers[0].experiment
        log: dict[str, Any] = {}
        for key, (cols, rows) in tables.items():
            log[key] = wandb.Table(columns=cols, data=rows)
        if "weaver/accuracy_vs_n" in log:
            log["weaver/accuracy_vs_n_plot"] = wandb.plot.line(log["weaver/accuracy_vs_n"], "N", "weaver_select_at_1",
                                                               title="Weaver select@1 vs candidates per problem")
        run.log(log)
        for key, value in _label_report(trainer.datamodule).items():
            if isinstance(value, (int, float, str)):
                run.summary[f"labelmodel/{key}"] = value
        self.logged = sorted(log)
