"""torchmetrics for verifier-based selection (Weaver, arXiv 2506.18203): Select@1, Pass@k, Majority@k, AUROC, tie rate.

Functional forms (plain torch) plus :class:`torchmetrics.Metric` classes with sum / cat states that reduce exactly
under DDP. Inputs are per-problem tensors: ``correct`` ``(P, N)`` bool, ``selected`` ``(P,)`` long, ``scores``
``(P, N)`` float, ``answer_ids`` ``(P, N)`` long (per-problem answer codes, ``-1`` = no answer; see
:meth:`lightning_ws.weaver.VerificationData.answer_ids`).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_ws.errors import ConfigError, DataError

__all__ = [
    "selection_accuracy",
    "pass_at_k",
    "majority_at_k",
    "score_auroc",
    "top_tie_rate",
    "SelectionAccuracy",
    "PassAtK",
    "MajorityAtK",
    "ScoreAUROC",
    "TieRate",
]


def _correct(correct: torch.Tensor) -> torch.Tensor:
    c = torch.as_tensor(correct)
    if c.ndim != 2:
        raise DataError(f"correct must have shape (P, N); got {tuple(c.shape)}.")
    return c.bool()


def selection_accuracy(selected: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """Select@1 (the paper's ``Select_Acc``): mean over problems of ``correct[p, selected[p]]``.

    A problem without any correct candidate counts as 0 (as in the reference).
    """
    c = _correct(correct)
    s = torch.as_tensor(selected).long().reshape(-1)
    if s.numel() != c.shape[0]:
        raise DataError(f"selected has {s.numel()} entries for {c.shape[0]} problems.")
    if s.numel() and (s.min() < 0 or s.max() >= c.shape[1]):
        raise DataError(f"selected indices must lie in [0, {c.shape[1]}).")
    return c[torch.arange(c.shape[0], device=c.device), s.to(c.device)].double().mean()


def _pass_at_k_per_problem(c: torch.Tensor, k: int) -> torch.Tensor:
    n = c.shape[1]
    if not 1 <= k <= n:
        raise ConfigError(f"k must lie in [1, N={n}], got {k}.")
    nc = c.sum(1).double()
    # 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n-c+1}^{n} (1 - k / i)  (Chen et al., arXiv 2107.03374)
    i = torch.arange(1, n + 1, dtype=torch.float64, device=c.device)
    factors = torch.clamp(1.0 - k / i, min=0.0)  # (n,)
    use = i[None, :] > (n - nc)[:, None]  # i in (n - c, n]
    fail = torch.where(use, factors[None, :], torch.ones_like(factors)[None, :]).prod(1)
    return 1.0 - fail


def pass_at_k(correct: torch.Tensor, k: int) -> torch.Tensor:
    """Unbiased Pass@k (Chen et al., arXiv 2107.03374) averaged over problems: ``1 - C(n-c, k) / C(n, k)``."""
    return _pass_at_k_per_problem(_correct(correct), int(k)).mean()


def _majority_hits(answer_ids: torch.Tensor, c: torch.Tensor, k: int) -> torch.Tensor:
    ids = torch.as_tensor(answer_ids).long()
    if ids.shape != c.shape:
        raise DataError(f"answer_ids must have the shape of correct {tuple(c.shape)}; got {tuple(ids.shape)}.")
    if not 1 <= k <= c.shape[1]:
        raise ConfigError(f"k must lie in [1, N={c.shape[1]}], got {k}.")
    a = ids[:, :k]
    eq = (a[:, :, None] == a[:, None, :]) & (a[:, :, None] >= 0)
    counts = eq.sum(2)  # (P, k) votes for each candidate's answer (0 for no answer)
    top = counts.max(1, keepdim=True).values
    # the earliest candidate whose answer has the top count (= earliest-appearing top answer)
    pos = torch.arange(k, device=a.device)[None, :].expand_as(a)
    first = torch.where(counts == top, pos, torch.full_like(pos, k)).min(1).values
    hit = c[:, :k].gather(1, first.clamp(max=k - 1)[:, None])[:, 0]
    return hit & (top[:, 0] > 0)


def majority_at_k(answer_ids: torch.Tensor, correct: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """Majority@k: the most frequent answer among the first ``k`` candidates is correct (reference one-sample rule).

    Equal counts go to the answer that appears first; candidates without an answer do not vote; a problem with no
    answer among the first ``k`` counts as 0. ``k`` defaults to ``N``.
    """
    c = _correct(correct)
    return _majority_hits(answer_ids, c, c.shape[1] if k is None else int(k)).double().mean()


def score_auroc(scores: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """Pooled AUROC of per-candidate scores for correctness (Mann-Whitney, ties count 1/2); NaN scores are dropped.

    Returns NaN when only one class is present (the AUROC is undefined there).
    """
    s = torch.as_tensor(scores).double().reshape(-1)
    y = torch.as_tensor(correct).bool().reshape(-1)
    if s.numel() != y.numel():
        raise DataError(f"scores ({s.numel()}) and correct ({y.numel()}) differ in size.")
    ok = ~torch.isnan(s)
    s, y = s[ok], y[ok]
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        return torch.tensor(float("nan"), dtype=torch.float64)
    order = torch.argsort(s)
    ss = s[order]
    ranks = torch.empty_like(ss)
    # average ranks over ties
    uniq, inv, counts = torch.unique_consecutive(ss, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg = ends - (counts.double() - 1) / 2.0
    ranks = avg[inv]
    r = torch.empty_like(ranks)
    r[order] = ranks
    return (r[y].sum() - npos * (npos + 1) / 2.0) / (npos * nneg)


def top_tie_rate(scores: torch.Tensor, tol: float = 1e-9) -> torch.Tensor:
    """Fraction of problems whose top score is shared by at least two candidates (spec §12.3)."""
    s = torch.as_tensor(scores).double()
    s = torch.where(torch.isnan(s), torch.full_like(s, -float("inf")), s)
    return ((s >= s.max(1, keepdim=True).values - tol).sum(1) > 1).double().mean()


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


class ScoreAUROC(Metric):
    """Pooled AUROC of candidate scores for correctness (a NeurIPS-review request for Weaver): ``update(scores, correct)``.

    Keeps every score (cat states), so memory grows with the number of candidates.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, correct: torch.Tensor) -> None:
        """Add candidate scores and their correctness (any matching shapes)."""
        s = torch.as_tensor(scores).double().reshape(-1)
        y = torch.as_tensor(correct).bool().reshape(-1)
        if s.numel() != y.numel():
            raise DataError(f"scores ({s.numel()}) and correct ({y.numel()}) differ in size.")
        self.scores.append(s)
        self.labels.append(y)

    def compute(self) -> torch.Tensor:
        """AUROC (NaN when empty or single-class)."""
        if not self.scores:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return score_auroc(dim_zero_cat(self.scores), dim_zero_cat(self.labels))


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
