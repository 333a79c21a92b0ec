"""Grad-Mimic's per-sample outputs on disk and in W&B, written at the end of every epoch (arXiv 2501.06708).

:func:`write_epoch_outputs` turns the callback's score log into, under ``<run folder>/gradmimic/``:

* ``epoch-<e>.safetensors``: per sample (index = the training row id ``idx``): ``seen`` (bool: the sample was in at
  least one training batch so far), ``mean_relative_weight`` and ``last_relative_weight`` (``B * w``, 1 = uniform; NaN
  for unseen samples), ``mean_score`` (the mimic score, NaN unseen), ``keep_prob`` and ``keep`` (the
  :class:`~lightning_ws.gradmimic.filters.MimicScoreFilter` decision over the epochs so far; ``keep`` is ``-1`` for
  unseen samples, never counted as kept, and for every sample when the table carries no per-sample signal: then
  the JSON says ``reliable: false`` with the reasons and no quality), plus the raw log columns (``log_idx``,
  ``log_weight``, ``log_score``, ``log_epoch``, ``log_step``);
* ``epoch-<e>.json``: the summary: samples seen/unseen, the quality estimate over the *seen* samples (fraction kept),
  the mean relative weight, the filter settings, the file names; ``latest.json`` is a copy of the newest one;

and logs ``gradmimic/quality_seen``, ``gradmimic/samples_seen``, ``gradmimic/samples_unseen`` and a
``gradmimic/samples`` table (idx, seen, mean/last relative weight, keep, keep_prob, and ``noisy`` when the datamodule
knows which labels it corrupted) to a W&B logger. Unseen samples are reported as unseen: an offline filter that let
them abstain would count them as kept and inflate the quality estimate.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["write_epoch_outputs", "summarize"]

#: Above this many samples the W&B table is logged only at the last epoch.
TABLE_EVERY_EPOCH_MAX = 5000


def summarize(table: np.ndarray, binarizer: str = "threshold", aggregator: str = "majority",
              threshold: float = 1.0) -> dict[str, Any]:
    """Per-sample arrays and the seen-only quality estimate from a ``(rounds, N)`` relative-weight table."""
    from lightning_ws.gradmimic.filters import MimicScoreFilter

    n = table.shape[1]
    seen = ~np.isnan(table).all(axis=0)
    keep = np.full(n, -1, dtype=np.int8)
    keep_prob = np.full(n, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(table, axis=0) if table.shape[0] else np.full(n, np.nan)
    last = np.full(n, np.nan)
    for row in table:
        last = np.where(np.isnan(row), last, row)
    quality = math.nan
    reliable, reasons = True, []
    if seen.any():
        # A table without per-sample signal (flat weights, unstable rankings) is recorded as unreliable, with the
        # reason, instead of stopping the run: the callback already warned or refused during training.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = MimicScoreFilter(binarizer, aggregator, threshold=threshold,
                                      on_no_signal="warn").fit(table[:, seen])
        reliable, reasons = bool(result.reliable), list(result.reasons)
        if reliable:
            keep[seen] = result.keep_mask.astype(np.int8)
            keep_prob[seen] = result.keep_prob
            quality = float(result.keep_mask.mean())
    return {"seen": seen, "keep": keep, "keep_prob": keep_prob, "mean_relative_weight": mean,
            "last_relative_weight": last, "quality_seen": quality, "samples_seen": int(seen.sum()),
            "samples_unseen": int((~seen).sum()), "reliable": reliable, "reasons": reasons}


def write_epoch_outputs(callback: Any, trainer: Any, wandb_loggers: Sequence[Any] = ()) -> Path | None:
    """Write this epoch's outputs (rank 0) and log them to the given W&B loggers (the caller, in the Lightning layer,
    picks them out of ``trainer.loggers``); return the JSON path (``None`` if nothing to write)."""
    if not trainer.is_global_zero or trainer.sanity_checking or not len(callback.score_log):
        return None
    from lightning_ws.io import save_json, save_tensors
    from lightning_ws.loggers import run_directory

    log = callback.score_log.tensors()
    dm = trainer.datamodule
    n = int(getattr(dm, "num_train", 0) or 0) or int(log["idx"].max()) + 1
    rel = callback.score_log.table(value="relative_weight", by="epoch", num_samples=n)
    scores = callback.score_log.table(value="score", by="epoch", num_samples=n)
    s = summarize(rel)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_score = np.nanmean(scores, axis=0) if scores.shape[0] else np.full(n, np.nan)
    epoch = int(trainer.current_epoch)
    folder = run_directory(trainer.logger, trainer.default_root_dir) / "gradmimic"
    tensors = {"seen": torch.from_numpy(s["seen"]), "keep": torch.from_numpy(s["keep"]),
               "keep_prob": torch.from_numpy(s["keep_prob"]).float(),
               "mean_relative_weight": torch.from_numpy(s["mean_relative_weight"]).float(),
               "last_relative_weight": torch.from_numpy(s["last_relative_weight"]).float(),
               "mean_score": torch.from_numpy(mean_score).float(),
               **{f"log_{k}": v for k, v in log.items()}}
    name = f"epoch-{epoch}"
    save_tensors(folder / f"{name}.safetensors", tensors, metadata={"epoch": str(epoch), "samples": str(n)})
    finite = s["mean_relative_weight"][s["seen"]]
    summary = {"epoch": epoch, "global_step": int(trainer.global_step), "samples": n,
               "samples_seen": s["samples_seen"], "samples_unseen": s["samples_unseen"],
               "quality_seen": None if math.isnan(s["quality_seen"]) else s["quality_seen"],
               "kept_seen": int((s["keep"] == 1).sum()),
               "reliable": s["reliable"], "unreliable_reasons": s["reasons"],
               "mean_relative_weight_seen": float(finite.mean()) if finite.size else None,
               "filter": {"binarizer": "threshold", "aggregator": "majority", "threshold": 1.0, "rounds": "epochs"},
               "callback": {k: _plain(getattr(callback, k, None)) for k in ("mimic_layer", "score", "tau", "mode")},
               "tensors": f"{name}.safetensors"}
    path = save_json(folder / f"{name}.json", summary)
    save_json(folder / "latest.json", summary)
    _log_wandb(trainer, list(wandb_loggers), s, n, dm)
    return path


def _log_wandb(trainer: Any, loggers: list[Any], s: dict[str, Any], n: int, dm: Any) -> None:
    if not loggers:
        return
    import wandb

    last_epoch = trainer.max_epochs is not None and trainer.current_epoch >= trainer.max_epochs - 1
    data: dict[str, Any] = {"gradmimic/samples_seen": s["samples_seen"], "gradmimic/samples_unseen": s["samples_unseen"],
                            "trainer/global_step": trainer.global_step}
    if not math.isnan(s["quality_seen"]):
        data["gradmimic/quality_seen"] = s["quality_seen"]
    if n <= TABLE_EVERY_EPOCH_MAX or last_epoch:
        noisy = getattr(dm, "noisy_mask", None)
        cols = ["idx", "seen", "mean_relative_weight", "last_relative_weight", "keep", "keep_prob"]
        cols += ["noisy"] if noisy is not None and len(noisy) == n else []
        rows = []
        for i in range(n):
            row = [i, bool(s["seen"][i]), _f(s["mean_relative_weight"][i]), _f(s["last_relative_weight"][i]),
                   int(s["keep"][i]), _f(s["keep_prob"][i])]
            if len(cols) == 7:
                row.append(bool(noisy[i]))
            rows.append(row)
        data["gradmimic/samples"] = wandb.Table(columns=cols, data=rows)
    for lg in loggers:
        lg.experiment.log(data)


def _plain(v: Any) -> Any:
    """JSON-safe setting: non-finite floats as strings (``tau: inf``)."""
    return str(v) if isinstance(v, float) and not math.isfinite(v) else v


def _f(x: float) -> float | None:
    return None if x != x else float(x)
