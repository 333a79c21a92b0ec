"""torchmetrics for verifier-based selection (Weaver, arXiv 2506.18203): Select@1, Pass@k, Majority@k, AUROC, tie rate.

:class:`torchmetrics.Metric` classes with sum / cat states that reduce exactly under DDP, over the plain-torch
functional forms of :mod:`lightning_ws.weaver.scoring` (re-exported here). Inputs are per-problem tensors: ``correct``
``(P, N)`` bool, ``selected`` ``(P,)`` long, ``scores`` ``(P, N)`` float, ``answer_ids`` ``(P, N)`` long (per-problem
answer codes, ``-1`` = no answer; see :meth:`lightning_ws.weaver.VerificationData.answer_ids`).
:class:`FlatSelectionAccuracy` computes Select@1 from flat per-candidate batches (the distilled cross-encoder's
validation metric) and :class:`ScoreAUROC` is torchmetrics' ``BinaryAUROC`` on flattened candidates.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.classification import BinaryAUROC
from torchmetrics.utilities import dim_zero_cat

from lightning_ws.errors import ConfigError, DataError
from lightning_ws.weaver.distill import flat_selection_accuracy
from lightning_ws.weaver.scoring import (
    _correct,
    _majority_hits,
    _pass_at_k_per_problem,
    majority_at_k,
    pass_at_k,
    score_auroc,
    selection_accuracy,
    top_tie_rate,
)

__all__ = [
    "selection_accuracy",
    "pass_at_k",
    "majority_at_k",
    "score_auroc",
    "top_tie_rate",
    "SelectionAccuracy",
    "FlatSelectionAccuracy",
    "PassAtK",
    "MajorityAtK",
    "ScoreAUROC",
    "TieRate",
]


class SelectionAccuracy(Metric):
    """Select@1 over problems (Weaver, arXiv 2506.18203): ``update(selected (P,), correct (P, N))``."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("hits", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, selected: torch.Tensor, correct: torch.Tensor) -> None:
        """Add a batch of problems."""
        c = _correct(correct)
        self.hits += selection_accuracy(selected, c).to(self.hits.device) * c.shape[0]
        self.total += c.shape[0]

    def compute(self) -> torch.Tensor:
        """Mean accuracy (NaN before any update: never mistaken for a real score)."""
        return self.hits / self.total if self.total > 0 else torch.tensor(float("nan"), dtype=torch.float64)


class FlatSelectionAccuracy(Metric):
    """Select@1 from flat per-candidate ``(problem, score, correct)`` triples (arXiv 2506.18203).

    Concatenation states, so under DDP every rank computes the same value from all ranks' candidates (a problem's
    candidates may even be split across ranks). Per problem, the argmax-score candidate is selected (first on ties).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("problem", default=[], dist_reduce_fx="cat")
        self.add_state("score", default=[], dist_reduce_fx="cat")
        self.add_state("correct", default=[], dist_reduce_fx="cat")

    def update(self, problem: torch.Tensor, score: torch.Tensor, correct: torch.Tensor) -> None:
        """Add a batch of candidates."""
        self.problem.append(problem.detach().long())
        self.score.append(score.detach().float())
        self.correct.append(correct.detach().long())

    def compute(self) -> torch.Tensor:
        """Fraction of problems whose selected candidate is correct."""
        p, s, c = dim_zero_cat(self.problem), dim_zero_cat(self.score), dim_zero_cat(self.correct)
        # A problem seen twice (DDP padding repeats samples) only duplicates its candidates: it still counts once.
        return torch.tensor(flat_selection_accuracy(p.cpu(), s.cpu(), c.cpu()), device=s.device)


class PassAtK(Metric):
    """Unbiased Pass@k (Chen et al., arXiv 2107.03374) over problems: ``update(correct (P, N))``.

    Args:
        k: number of draws, ``1 <= k <= N`` (checked at update time against each batch's ``N``).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, k: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be an integer >= 1, got {k!r}.")
        self.k = k
        self.add_state("total_pass", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, correct: torch.Tensor) -> None:
        """Add a batch of problems."""
        c = _correct(correct)
        self.total_pass += _pass_at_k_per_problem(c, self.k).sum().to(self.total_pass.device)
        self.total += c.shape[0]

    def compute(self) -> torch.Tensor:
        """Mean Pass@k (NaN before any update)."""
        return self.total_pass / self.total if self.total > 0 else torch.tensor(float("nan"), dtype=torch.float64)


class MajorityAtK(Metric):
    """Majority@k over problems: ``update(answer_ids (P, N), correct (P, N))`` (first ``k`` candidates; None = N)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, k: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ConfigError(f"k must be None or an integer >= 1, got {k!r}.")
        self.k = k
        self.add_state("hits", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, answer_ids: torch.Tensor, correct: torch.Tensor) -> None:
        """Add a batch of problems."""
        c = _correct(correct)
        k = c.shape[1] if self.k is None else self.k
        self.hits += _majority_hits(answer_ids, c, k).double().sum().to(self.hits.device)
        self.total += c.shape[0]

    def compute(self) -> torch.Tensor:
        """Mean Majority@k (NaN before any update)."""
        return self.hits / self.total if self.total > 0 else torch.tensor(float("nan"), dtype=torch.float64)


class ScoreAUROC(BinaryAUROC):
    """Pooled AUROC of candidate scores for correctness (a NeurIPS-review request for Weaver): torchmetrics'
    ``BinaryAUROC`` (exact, ``thresholds=None``: every score is kept, so memory grows with the candidates) with
    ``update(scores, correct)`` taking any matching shapes, bool or 0/1 labels, and NaN scores dropped.

    ``compute`` returns NaN when empty or when only one class was seen (the AUROC is undefined there).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(thresholds=None, **kwargs)

    def update(self, scores: torch.Tensor, correct: torch.Tensor) -> None:  # type: ignore[override]
        """Add candidate scores and their correctness."""
        s = torch.as_tensor(scores).double().reshape(-1)
        y = torch.as_tensor(correct).reshape(-1)
        if s.numel() != y.numel():
            raise DataError(f"scores ({s.numel()}) and correct ({y.numel()}) differ in size.")
        ok = ~torch.isnan(s)
        super().update(s[ok], y[ok].long())

    def compute(self) -> torch.Tensor:
        """AUROC (NaN when empty or single-class)."""
        if not self.target:
            return torch.tensor(float("nan"), dtype=torch.float64)
        y = dim_zero_cat(self.target)
        if y.numel() == 0 or bool((y == y[0]).all()):
            return torch.tensor(float("nan"), dtype=torch.float64)
        return super().compute().double()


class TieRate(Metric):
    """Fraction of problems whose top score is tied (spec §12.3): ``update(scores (P, N))``."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, tol: float = 1e-9, **kwargs) -> None:
        super().__init__(**kwargs)
        if not tol >= 0:
            raise ConfigError(f"tol must be >= 0, got {tol}.")
        self.tol = float(tol)
        self.add_state("ties", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor) -> None:
        """Add a batch of problems."""
        s = torch.as_tensor(scores)
        if s.ndim != 2:
            raise DataError(f"scores must have shape (P, N); got {tuple(s.shape)}.")
        self.ties += top_tie_rate(s, self.tol).to(self.ties.device) * s.shape[0]
        self.total += s.shape[0]

    def compute(self) -> torch.Tensor:
        """Tie rate (NaN before any update)."""
        return self.ties / self.total if self.total > 0 else torch.tensor(float("nan"), dtype=torch.float64)
