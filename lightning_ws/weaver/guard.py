"""Label-free *within-problem* view weighting and the selection guard of :class:`~lightning_ws.weaver.Weaver`.

Selection compares candidates of one problem, so what matters is how well a score ranks candidates *within* a
problem, not its pooled AUROC (the answer-frequency pseudo-verifier has a pooled AUROC near 0.9 on hard sets mostly
because easy problems have both high agreement and many correct candidates). This module therefore works on scores
standardised within each problem (``NaN`` -> 0 = the problem's mean) and estimates, without labels, each view's
correlation ``rho_k`` with correctness by the triplet identity of FlyingSquid (Fu et al., arXiv 2002.11955) applied to
these centred scores: for conditionally independent views ``C_ij = rho_i rho_j``, so
``rho_k = median over pairs (i, j) of sqrt(C_ki C_kj / C_ij)``.

For any linear combination ``w`` of the views the estimated correlation with correctness is
``w . rho / sqrt(w' C w)`` (:func:`combination_quality`), computable from the observed ``C`` alone. The guard scores
its candidate selectors (the weighted combination ``C^-1 rho``, the equal-weight pooled mean of the verifier
sources, answer-level majority vote) with this criterion and keeps a more complex selector only when it beats the
simpler ones by ``margin``. With fewer than three views (one pooled judge + majority vote) the ``rho`` are not
identifiable from the scores; the guard then weighs the two standardised views equally and says so in its report.
Lightning-free (numpy).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lightning_ws.errors import DataError

__all__ = [
    "answer_share",
    "combination_quality",
    "describe",
    "optimal_weights",
    "standardize_within_problem",
    "triplet_rho",
    "within_problem_correlation",
]


def answer_share(answer_ids: np.ndarray) -> np.ndarray:
    """``(P, N)`` fraction of the problem's candidates that share each candidate's answer (0 without an answer)."""
    ids = np.asarray(answer_ids)
    same = (ids[:, :, None] == ids[:, None, :]) & (ids[:, :, None] >= 0)
    return same.sum(axis=2) / ids.shape[1]


def standardize_within_problem(x: np.ndarray) -> np.ndarray:
    """``(P, N, K)``: each view centred and scaled within each problem; ``NaN`` and constant rows -> 0."""
    s = np.asarray(x, dtype=np.float64)
    if s.ndim != 3:
        raise DataError(f"views must have shape (P, N, K); got {s.shape}.")
    with np.errstate(all="ignore"):
        mu = np.nanmean(s, axis=1, keepdims=True)
        sd = np.nanstd(s, axis=1, keepdims=True)
        z = (s - mu) / sd
    return np.where(np.isfinite(z), z, 0.0)


def within_problem_correlation(z: np.ndarray) -> np.ndarray:
    """``(K, K)`` correlation of within-problem standardised views (pooled over all candidates)."""
    f = np.asarray(z, dtype=np.float64).reshape(-1, z.shape[2])
    g = f.T @ f
    d = np.sqrt(np.clip(np.diag(g), 1e-12, None))
    c = g / d[:, None] / d[None, :]
    np.fill_diagonal(c, 1.0)
    return c


def triplet_rho(C: np.ndarray, *, min_corr: float = 0.02, cap: float = 0.98) -> tuple[np.ndarray, bool]:
    """Label-free ``rho_k`` from a ``(K, K)`` correlation matrix by the triplet identity (median over pairs).

    Only pairs ``(i, j)`` with ``C_ij >= min_corr`` and ``C_ki, C_kj > 0`` are used. Returns ``(rho, identified)``;
    with fewer than 3 views (or no usable pair) ``rho_k = sqrt(max(C_kj, 0))`` averaged over the other views and
    ``identified`` is False.
    """
    C = np.asarray(C, dtype=np.float64)
    K = C.shape[0]
    rho = np.zeros(K)
    identified = K >= 3
    for k in range(K):
        est = []
        others = [i for i in range(K) if i != k]
        for a in range(len(others)):
            for b in range(a + 1, len(others)):
                i, j = others[a], others[b]
                if C[i, j] >= min_corr and C[k, i] > 0 and C[k, j] > 0:
                    est.append(np.sqrt(C[k, i] * C[k, j] / C[i, j]))
        if est:
            rho[k] = float(np.median(est))
        else:
            identified = identified and all(C[k, i] <= 0 for i in others)
            rho[k] = float(np.mean([np.sqrt(max(C[k, i], 0.0)) for i in others])) if others else 0.0
    return np.clip(rho, 0.0, cap), identified


def combination_quality(w: np.ndarray, rho: np.ndarray, C: np.ndarray) -> float:
    """Estimated correlation with correctness of the combination ``w . z``: ``w . rho / sqrt(w' C w)``."""
    w = np.asarray(w, dtype=np.float64)
    den = float(w @ C @ w)
    return float(w @ rho / np.sqrt(den)) if den > 1e-12 else 0.0


def optimal_weights(rho: np.ndarray, C: np.ndarray, ridge: float = 0.05) -> np.ndarray:
    """``(C + ridge I)^-1 rho`` with negative weights set to 0 (views are oriented: higher = more likely correct)."""
    K = len(rho)
    w = np.linalg.solve(C + ridge * np.eye(K), rho)
    w = np.clip(w, 0.0, None)
    return w / w.sum() if w.sum() > 0 else np.full(K, 1.0 / K)


def describe(names: list[str], rho: np.ndarray, w: np.ndarray) -> dict[str, Any]:
    """``{name: {"rho": ..., "weight": ...}}`` for reports."""
    return {n: {"rho": float(r), "weight": float(x)} for n, r, x in zip(names, rho, w)}
