"""Per-sample record of Grad-Mimic weights and scores, keyed by the sample id (plain torch/numpy, no Lightning)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_ws.errors import DataError

__all__ = ["ScoreLog"]

_FIELDS = ("idx", "weight", "score", "batch_size", "epoch", "step")
_DTYPES = {"idx": torch.long, "weight": torch.float32, "score": torch.float32, "batch_size": torch.long,
           "epoch": torch.long, "step": torch.long}


class ScoreLog:
    """Append-only log of ``(idx, weight, score, batch_size, epoch, step)`` rows, one per sample per micro-batch.

    ``weight`` is the post-softmax batch weight ``w`` (sums to 1 over the batch the softmax ran over, of size
    ``batch_size``); ``relative weight = batch_size * w`` (1 = uniform). The state is a dict of plain 1-D tensors
    (safe for ``torch.load(weights_only=True)``).

    :meth:`append` is on the training step's path, so it only keeps references: the batch's ``idx``/``weight``/
    ``score`` tensors (on whatever device they live; no copy, no device sync) and the three integers of the batch.
    Every ``flush_every`` batches the pending ones become one CPU chunk per column (one concatenation and one
    device-to-host copy per ``flush_every`` batches, so a long run does not hold one small device tensor per step);
    :meth:`tensors` concatenates the chunks once and caches the result. The appended tensors must not be modified in
    place afterwards (the callback passes fresh tensors).

    Args:
        flush_every: number of pending batches after which they are consolidated (>= 1).
    """

    def __init__(self, flush_every: int = 256) -> None:
        if isinstance(flush_every, bool) or not isinstance(flush_every, int) or flush_every < 1:
            raise DataError(f"flush_every must be an integer >= 1, got {flush_every!r}.")
        self.flush_every = flush_every
        self._done: dict[str, list[Tensor]] = {k: [] for k in _FIELDS}
        self._pending: tuple[list[Tensor], list[Tensor], list[Tensor], list[tuple[int, int, int, int]]] = \
            ([], [], [], [])
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def append(self, idx: Tensor, weight: Tensor, score: Tensor, *, batch_size: int, epoch: int, step: int) -> None:
        """Add one batch's rows (all tensors ``(B,)``); keeps references until the next consolidation."""
        n = idx.numel()
        if weight.numel() != n or score.numel() != n:
            raise DataError(f"record sizes differ: idx {n}, weight {weight.numel()}, score {score.numel()}.")
        pi, pw, ps, meta = self._pending
        pi.append(idx.detach() if idx.requires_grad else idx)
        pw.append(weight.detach() if weight.requires_grad else weight)
        ps.append(score.detach() if score.requires_grad else score)
        meta.append((n, int(batch_size), int(epoch), int(step)))
        self._len += n
        if len(meta) >= self.flush_every:
            self._flush()

    def _flush(self) -> None:
        pi, pw, ps, meta = self._pending
        if not meta:
            return
        cols = np.asarray(meta, dtype=np.int64)  # (batches, 4): n, batch_size, epoch, step
        new = {"idx": _cat_cpu(pi, torch.long), "weight": _cat_cpu(pw, torch.float32),
               "score": _cat_cpu(ps, torch.float32)}
        for j, k in ((1, "batch_size"), (2, "epoch"), (3, "step")):
            new[k] = torch.from_numpy(np.repeat(cols[:, j], cols[:, 0]))
        for k in _FIELDS:
            self._done[k].append(new[k])
        self._pending = ([], [], [], [])

    def tensors(self) -> dict[str, Tensor]:
        """All rows as 1-D CPU tensors (``idx``, ``weight``, ``score``, ``batch_size``, ``epoch``, ``step``)."""
        self._flush()
        for k in _FIELDS:  # compact the chunks (the result is cached until the next append)
            chunks = self._done[k]
            if len(chunks) != 1:
                self._done[k] = [torch.cat(chunks) if chunks else torch.zeros(0, dtype=_DTYPES[k])]
        return {k: self._done[k][0] for k in _FIELDS}

    def state_dict(self) -> dict[str, Any]:
        """Plain-tensor state (a copy)."""
        return {k: v.clone() for k, v in self.tensors().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` output."""
        missing = [k for k in _FIELDS if k not in state]
        if missing:
            raise DataError(f"score-log state lacks {missing}.")
        cols = {k: torch.as_tensor(state[k]).reshape(-1) for k in _FIELDS}
        n = {k: v.numel() for k, v in cols.items()}
        if len(set(n.values())) != 1:
            raise DataError(f"score-log state has fields of different lengths: {n}.")
        self._done = {k: [v.to("cpu", _DTYPES[k]).clone()] for k, v in cols.items()}
        self._pending = ([], [], [], [])
        self._len = n["idx"]

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


def _cat_cpu(chunks: list[Tensor], dtype: torch.dtype) -> Tensor:
    """Concatenate 1-D views of ``chunks`` (one device) and move the result to CPU as ``dtype``."""
    flat = [c if c.dim() == 1 else c.reshape(-1) for c in chunks]
    devices = {c.device for c in flat}
    if len(devices) > 1:
        flat = [c.cpu() for c in flat]
    return torch.cat(flat).to("cpu", dtype)
