"""Per-sample record of Grad-Mimic weights and scores, keyed by the sample id (plain torch/numpy, no Lightning)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_ws.errors import DataError

__all__ = ["ScoreLog"]

_FIELDS = ("idx", "weight", "score", "batch_size", "epoch", "step")


class ScoreLog:
    """Append-only log of ``(idx, weight, score, batch_size, epoch, step)`` rows, one per sample per micro-batch.

    ``weight`` is the post-softmax batch weight ``w`` (sums to 1 over the batch the softmax ran over, of size
    ``batch_size``); ``relative weight = batch_size * w`` (1 = uniform). Stored as growing CPU tensors; the state is
    a dict of plain tensors and an int (safe for ``torch.load(weights_only=True)``).
    """

    def __init__(self) -> None:
        self._chunks: dict[str, list[Tensor]] = {k: [] for k in _FIELDS}
        self._cache: dict[str, Tensor] | None = None

    def __len__(self) -> int:
        return int(sum(c.numel() for c in self._chunks["idx"]))

    def append(self, idx: Tensor, weight: Tensor, score: Tensor, *, batch_size: int, epoch: int, step: int) -> None:
        """Add one batch's rows (all tensors ``(B,)``)."""
        n = idx.numel()
        if weight.numel() != n or score.numel() != n:
            raise DataError(f"record sizes differ: idx {n}, weight {weight.numel()}, score {score.numel()}.")
        row = {"idx": idx.detach().reshape(-1).long().cpu(), "weight": weight.detach().reshape(-1).float().cpu(),
               "score": score.detach().reshape(-1).float().cpu(),
               "batch_size": torch.full((n,), int(batch_size), dtype=torch.long),
               "epoch": torch.full((n,), int(epoch), dtype=torch.long),
               "step": torch.full((n,), int(step), dtype=torch.long)}
        for k in _FIELDS:
            self._chunks[k].append(row[k])
        self._cache = None

    def tensors(self) -> dict[str, Tensor]:
        """All rows as 1-D tensors (``idx``, ``weight``, ``score``, ``batch_size``, ``epoch``, ``step``)."""
        if self._cache is None:
            self._cache = {k: (torch.cat(v) if v else torch.zeros(0, dtype=torch.float32 if k in ("weight", "score")
                                                                   else torch.long)) for k, v in self._chunks.items()}
            for k in _FIELDS:  # compact the chunks
                self._chunks[k] = [self._cache[k]] if self._cache[k].numel() else []
        return self._cache

    def state_dict(self) -> dict[str, Any]:
        """Plain-tensor state (a copy)."""
        return {k: v.clone() for k, v in self.tensors().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` output."""
        missing = [k for k in _FIELDS if k not in state]
        if missing:
            raise DataError(f"score-log state lacks {missing}.")
        n = {k: torch.as_tensor(state[k]).numel() for k in _FIELDS}
        if len(set(n.values())) != 1:
            raise DataError(f"score-log state has fields of different lengths: {n}.")
        self._chunks = {k: [torch.as_tensor(state[k]).clone()] if n[k] else [] for k in _FIELDS}
        self._cache = None

    def table(self, *, value: str = "relative_weight", by: str = "epoch", num_samples: int | None = None) -> np.ndarray:
        """Dense ``(rounds, num_samples)`` table of the mean value per round and sample (NaN = not seen).

        Args:
            value: ``"relative_weight"`` (``batch_size * weight``), ``"weight"`` or ``"score"``.
            by: ``"epoch"`` or ``"step"``; rounds are the distinct epochs/steps present, in increasing order.
            num_samples: number of columns (default: ``max(idx) + 1``).
        """
        if value not in ("relative_weight", "weight", "score"):
            raise DataError(f"value must be 'relative_weight', 'weight' or 'score', got {value!r}.")
        if by not in ("epoch", "step"):
            raise DataError(f"by must be 'epoch' or 'step', got {by!r}.")
        t = self.tensors()
        idx = t["idx"].numpy()
        n = int(idx.max()) + 1 if num_samples is None and idx.size else int(num_samples or 0)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise DataError(f"sample ids span [{idx.min()}, {idx.max()}] but num_samples={n}.")
        vals = (t["weight"] * t["batch_size"].float()) if value == "relative_weight" else t[value]
        vals = vals.double().numpy()
        rounds, rpos = np.unique(t[by].numpy(), return_inverse=True)
        total = np.zeros((rounds.size, n))
        count = np.zeros((rounds.size, n))
        np.add.at(total, (rpos, idx), vals)
        np.add.at(count, (rpos, idx), 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / np.maximum(count, 1), np.nan)
