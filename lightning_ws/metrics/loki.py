"""torchmetrics for Loki (arXiv 2307.12226): expected squared distance, full-space top-1, seen/unseen breakdown.

All three take predictions and targets as *full-space positions* (``LabelMetric.index(ids)``) and keep only sum
states with ``dist_reduce_fx="sum"``, so they are exact under DDP.  The squared-distance matrix is a non-persistent
buffer ``(N, N)`` (fine up to ~20k classes; for bigger spaces compute ``d^2(ŷ, y)`` with
``LabelMetric.pair_distances`` and average it yourself).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

from lightning_ws.errors import ConfigError, DataError

__all__ = ["ExpectedSquaredDistance", "FullSpaceAccuracy", "SeenUnseenBreakdown", "expected_squared_distance"]


def _check_sq(sq_dist: torch.Tensor) -> torch.Tensor:
    sq = torch.as_tensor(sq_dist).detach()
    if sq.ndim != 2 or sq.shape[0] != sq.shape[1]:
        raise DataError(f"sq_dist must be a square (N, N) matrix of squared distances; got {tuple(sq.shape)}.")
    if not torch.isfinite(sq).all() or (sq < 0).any():
        raise DataError("sq_dist must be finite and non-negative.")
    return sq.to(torch.float64 if sq.dtype == torch.float64 else torch.float32)


def _check_pair(preds: torch.Tensor, target: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    preds = torch.as_tensor(preds).reshape(-1).long()
    target = torch.as_tensor(target).reshape(-1).long()
    if preds.shape != target.shape:
        raise DataError(f"preds and target must have the same length; got {preds.numel()} and {target.numel()}.")
    for name, t in (("preds", preds), ("target", target)):
        if t.numel() and (t.min() < 0 or t.max() >= n):
            raise DataError(f"{name} must be full-space positions in [0, {n}); got {int(t.min())}..{int(t.max())}.")
    return preds, target


def expected_squared_distance(preds: torch.Tensor, target: torch.Tensor, sq_dist: torch.Tensor) -> torch.Tensor:
    """``mean_j d^2(ŷ_j, y_j)`` (the paper's evaluation metric, arXiv 2307.12226); lower is better.

    Raises:
        DataError: empty input, mismatched shapes or positions outside ``[0, N)``.
    """
    sq = _check_sq(sq_dist)
    preds, target = _check_pair(preds, target, sq.shape[0])
    if preds.numel() == 0:
        raise DataError("expected_squared_distance got no samples.")
    return sq.to(preds.device)[preds, target].mean()


class ExpectedSquaredDistance(Metric):
    """Expected squared label distance ``E[d^2(ŷ, y)]`` over a full label space (Loki, arXiv 2307.12226).

    Always report it next to top-1 accuracy (:class:`FullSpaceAccuracy`): Loki optimises this risk, not 0-1
    accuracy.  States ``sum_sq``/``count`` reduce by sum under DDP.  With no samples ``compute()`` returns NaN
    (the paper leaves this open; NaN cannot be mistaken for a perfect score).

    Args:
        sq_dist: ``(N, N)`` squared distances (e.g. ``metric.distance_rows(squared=True)``).
    """

    higher_is_better = False
    is_differentiable = False
    full_state_update = False

    def __init__(self, sq_dist: torch.Tensor, **kwargs) -> None:
        super().__init__(**kwargs)
        self.register_buffer("sq_dist", _check_sq(sq_dist), persistent=False)
        self.add_state("sum_sq", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predicted and true full-space positions."""
        preds, target = _check_pair(preds, target, self.sq_dist.shape[0])
        dev = self.sq_dist.device
        self.sum_sq += self.sq_dist[preds.to(dev), target.to(dev)].double().sum()
        self.count += preds.numel()

    def compute(self) -> torch.Tensor:
        """Mean squared distance (NaN if no sample was seen)."""
        if int(self.count) == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return self.sum_sq / self.count


class FullSpaceAccuracy(Metric):
    """Top-1 accuracy over the full label space, unobserved classes included (Loki, arXiv 2307.12226).

    Args:
        num_classes: ``N``, used to validate positions.
    """

    higher_is_better = True
    is_differentiable = False
    full_state_update = False

    def __init__(self, num_classes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1; got {num_classes}.")
        self.num_classes = int(num_classes)
        self.add_state("correct", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add predicted and true positions."""
        preds, target = _check_pair(preds, target, self.num_classes)
        self.correct += (preds == target).sum().to(self.correct.device)
        self.count += preds.numel()

    def compute(self) -> torch.Tensor:
        """Fraction correct (NaN if no sample)."""
        if int(self.count) == 0:
            return torch.tensor(float("nan"))
        return self.correct.double() / self.count


class SeenUnseenBreakdown(Metric):
    """Accuracy and ``E[d^2]`` split by whether the *true* class was observed in training (arXiv 2307.12226).

    ``compute()`` returns a dict with ``seen/acc``, ``seen/esd``, ``unseen/acc``, ``unseen/esd`` and
    ``pred_unseen_frac`` (the fraction of predictions that are unobserved classes; argmax always gives 0).  A
    group with no samples reports NaN.

    Args:
        sq_dist: ``(N, N)`` squared distances.
        observed: positions of the observed classes.
    """

    is_differentiable = False
    full_state_update = False

    def __init__(self, sq_dist: torch.Tensor, observed: Sequence[int] | torch.Tensor, **kwargs) -> None:
        super().__init__(**kwargs)
        sq = _check_sq(sq_dist)
        obs = torch.as_tensor(observed, dtype=torch.long).reshape(-1)
        if obs.numel() == 0 or obs.min() < 0 or obs.max() >= sq.shape[0]:
            raise ConfigError(f"observed must be non-empty positions in [0, {sq.shape[0]}).")
        mask = torch.zeros(sq.shape[0], dtype=torch.bool)
        mask[obs] = True
        self.register_buffer("sq_dist", sq, persistent=False)
        self.register_buffer("seen_mask", mask, persistent=False)
        for name in ("correct", "count"):
            self.add_state(name, torch.zeros(2, dtype=torch.long), dist_reduce_fx="sum")  # [seen, unseen]
        self.add_state("sum_sq", torch.zeros(2, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pred_unseen", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add predicted and true positions."""
        preds, target = _check_pair(preds, target, self.sq_dist.shape[0])
        dev = self.sq_dist.device
        preds, target = preds.to(dev), target.to(dev)
        group = (~self.seen_mask[target]).long()  # 0 seen, 1 unseen
        self.correct += torch.bincount(group, weights=(preds == target).double(), minlength=2).round().long()
        self.count += torch.bincount(group, minlength=2)
        self.sum_sq += torch.bincount(group, weights=self.sq_dist[preds, target].double(), minlength=2)
        self.pred_unseen += (~self.seen_mask[preds]).sum()

    def compute(self) -> dict[str, torch.Tensor]:
        """The breakdown dict (see the class docstring)."""
        cnt = self.count.double()
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=cnt.device)
        out = {}
        for g, name in enumerate(("seen", "unseen")):
            out[f"{name}/acc"] = self.correct[g].double() / cnt[g] if cnt[g] > 0 else nan
            out[f"{name}/esd"] = self.sum_sq[g] / cnt[g] if cnt[g] > 0 else nan
        total = cnt.sum()
        out["pred_unseen_frac"] = self.pred_unseen.double() / total if total > 0 else nan
        return out
