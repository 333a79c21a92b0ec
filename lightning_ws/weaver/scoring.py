"""Selection metrics of Weaver (arXiv 2506.18203) as plain torch functions: Select@1, Pass@k, Majority@k, AUROC, tie
rate. Lightning-free and torchmetrics-free (the Lightning-free core and :mod:`lightning_ws.weaver.report` use them);
:mod:`lightning_ws.metrics.weaver` wraps them in :class:`torchmetrics.Metric` classes for training loops.

Inputs are per-problem tensors: ``correct`` ``(P, N)`` bool, ``selected`` ``(P,)`` long, ``scores`` ``(P, N)`` float,
``answer_ids`` ``(P, N)`` long (per-problem answer codes, ``-1`` = no answer; see
:meth:`lightning_ws.weaver.VerificationData.answer_ids`).
"""

from __future__ import annotations

import torch

from lightning_ws.errors import ConfigError, DataError

__all__ = ["selection_accuracy", "pass_at_k", "majority_at_k", "score_auroc", "top_tie_rate", "top_answer_tie_rate"]


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
    _, inv, counts = torch.unique_consecutive(ss, return_inverse=True, return_counts=True)
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


def top_answer_tie_rate(scores: torch.Tensor, answer_ids: torch.Tensor, tol: float = 1e-9) -> torch.Tensor:
    """Fraction of problems whose top score is shared by candidates with *different* answers.

    :func:`top_tie_rate` also counts candidates that share one extracted answer, which an answer-level scorer
    (Weaver's default label model, majority vote) scores alike by design; picking any of them gives the same
    answer. This rate counts only the ties a selector actually has to break. A candidate without an answer
    (``answer_ids < 0``) counts as an answer of its own.
    """
    s = torch.as_tensor(scores).double()
    ids = torch.as_tensor(answer_ids).long()
    if s.shape != ids.shape:
        raise DataError(f"scores {tuple(s.shape)} and answer_ids {tuple(ids.shape)} must have the same shape.")
    s = torch.where(torch.isnan(s), torch.full_like(s, -float("inf")), s)
    top = s >= s.max(1, keepdim=True).values - tol
    n = s.shape[1]
    # a distinct code per answer; each unanswered candidate its own code past the answers' range
    code = torch.where(ids >= 0, ids, n + torch.arange(n).expand_as(ids))
    lo = torch.where(top, code, torch.full_like(code, 2 * n)).min(1).values  # codes lie in [0, 2n)
    hi = torch.where(top, code, torch.full_like(code, -1)).max(1).values
    return (hi > lo).double().mean()
