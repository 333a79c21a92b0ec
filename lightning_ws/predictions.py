"""Write what ``predict`` returns to the run folder: one row per example with its id, probabilities and prediction.

:class:`PredictionsWriter` (added to every ``lightning-ws predict``) collects each batch's ``predict_step`` output and
the batch's ``idx`` and writes, atomically, ``predictions.jsonl`` (one JSON object per example: ``id``, ``pred``,
``probs`` and any other per-example value the module returned, e.g. Weaver's ``score``/``problem``) and
``predictions.safetensors`` (the same columns as tensors) into the run folder. An existing file is never overwritten
(``predictions-1.jsonl``...). Module outputs understood: a dict of per-example tensors (``probs``, ``pred``, ``idx``...)
or a tensor (class ids if integer, else scores/logits).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_ws.contracts import IDX
from lightning_ws.io import atomic_write_text, save_tensors

__all__ = ["PredictionsWriter", "collect_predictions", "write_predictions"]


def _as_columns(output: Any, batch: Any) -> dict[str, torch.Tensor]:
    if isinstance(output, torch.Tensor):
        cols = {"pred" if not output.is_floating_point() else ("probs" if output.dim() == 2 else "score"): output}
    elif isinstance(output, dict):
        cols = {k: v for k, v in output.items() if isinstance(v, torch.Tensor) and v.dim() >= 1}
    else:
        cols = {}
    if IDX not in cols and isinstance(batch, dict) and isinstance(batch.get(IDX), torch.Tensor):
        cols[IDX] = batch[IDX]
    if "pred" not in cols and "probs" in cols and cols["probs"].dim() == 2:
        cols["pred"] = cols["probs"].argmax(-1)
    n = max((len(v) for v in cols.values()), default=0)
    return {k: v.detach().cpu() for k, v in cols.items() if len(v) == n}


def collect_predictions(outputs: list[tuple[Any, Any]]) -> dict[str, torch.Tensor]:
    """Concatenate per-batch ``(output, batch)`` pairs into columns (keys present in every batch)."""
    parts = [_as_columns(o, b) for o, b in outputs]
    if not parts:
        return {}
    keys = [k for k in parts[0] if all(k in p for p in parts)]
    return {k: torch.cat([p[k] for p in parts]) for k in keys}


def _unique(folder: Path, stem: str, suffix: str) -> Path:
    target, n = folder / f"{stem}{suffix}", 1
    while target.exists():
        target, n = folder / f"{stem}-{n}{suffix}", n + 1
    return target


def write_predictions(columns: dict[str, torch.Tensor], folder: str | Path) -> tuple[Path, Path]:
    """Write ``predictions.jsonl`` and ``predictions.safetensors`` (never overwriting); return both paths."""
    folder = Path(folder)
    jsonl = _unique(folder, "predictions", ".jsonl")
    tensors = jsonl.with_suffix(".safetensors")
    cols = dict(columns)
    ids = cols.pop(IDX, None)
    n = len(next(iter(columns.values()))) if columns else 0
    lines = []
    for i in range(n):
        row: dict[str, Any] = {"id": int(ids[i]) if ids is not None else i}
        for key, value in cols.items():
            v = value[i]
            row[key] = v.tolist() if v.dim() else (v.item() if not v.is_floating_point() else float(v))
        lines.append(json.dumps(row))
    atomic_write_text(jsonl, "\n".join(lines) + ("\n" if lines else ""))
    save_tensors(tensors, {("id" if k == "idx" else k): v.contiguous() for k, v in columns.items()},
                 metadata={"rows": str(n), "format": "lightning_ws.predictions/v1"})
    return jsonl, tensors


class PredictionsWriter(pl.Callback):
    """Collect ``predict`` outputs and write them to ``folder`` (or the trainer's run folder) at the end.

    Args:
        folder: output folder; ``None`` = the run folder (``run_dir`` set by ``lightning-ws``, else the logger's).
    """

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = None if folder is None else Path(folder)
        self._outputs: list[tuple[Any, Any]] = []
        self.written: tuple[Path, Path] | None = None
        self.rows = 0

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:  # noqa: D102
        self._outputs = []

    def on_predict_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:  # noqa: D102
        keep = {IDX: batch[IDX]} if isinstance(batch, dict) and IDX in batch else None
        self._outputs.append((outputs, keep))

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:  # noqa: D102
        columns = collect_predictions(self._outputs)
        self._outputs = []
        if trainer.world_size > 1:
            gathered = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, columns)
            columns = {k: torch.cat([g[k] for g in gathered]) for k in columns}
        if not trainer.is_global_zero or not columns:
            return
        folder = self.folder
        if folder is None:
            from lightning_ws.loggers import run_directory

            folder = run_directory(trainer.logger, trainer.default_root_dir)
        self.rows = len(next(iter(columns.values())))
        self.written = write_predictions(columns, folder)
