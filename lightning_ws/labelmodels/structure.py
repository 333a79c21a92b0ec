"""Dependency structure of labeling functions from the label matrix alone: sparse + low-rank inverse covariance.

Varma, Sala, He, Ratner & Ré, *Learning Dependency Structures for Weak Supervision Models* (ICML 2019,
arXiv 1903.05844). If the LF outputs ``lambda`` and the latent label ``Y`` form a graphical model, the inverse of the
covariance of the *observed* outputs splits into a sparse part and a low-rank part:

    ``Sigma_O^{-1} = K_O - z z^T``

where ``K_O`` (a block of the inverse of the joint covariance of ``(lambda, Y)``) is zero between two LFs that are
conditionally independent given ``Y`` and the other LFs, and ``z z^T`` (rank ``k - 1`` for ``k`` classes) is what
marginalising ``Y`` out adds. Estimating ``K_O`` is a robust-PCA problem: from the sample covariance, find
``R = S - Lr`` with ``S`` sparse (off-diagonal support = the dependency edges) and ``Lr`` positive semidefinite of low
rank. Like the paper we fit ``R`` with the quadratic loss ``1/2 tr(R C R C) - tr(R)`` (its minimiser is ``C^{-1}``,
and it needs no inverse of a possibly singular sample covariance) plus ``alpha ||S||_1`` (off-diagonal entries of
different LFs) ``+ beta ||Lr||_*``; unlike the reference code, which hands the problem to a generic conic solver
(CVXPY/SCS), we solve it with accelerated proximal gradient (FISTA, Beck & Teboulle 2009): soft-thresholding for
``S``, eigenvalue soft-thresholding onto the PSD cone for ``Lr``. Everything is numpy on a ``d x d`` matrix.

Extensions (defaults the paper leaves open, stated here):

* encoding: the paper treats binary LFs as ``{-1, 0, +1}``. We use one indicator column per (LF, class it ever
  votes), which is the same model for binary LFs and extends it to multi-class and single-class LFs (the latent
  part then has rank up to ``k - 1``); entries inside one LF's block are neither penalised nor reported;
* scale: the covariance is standardised to a correlation matrix and shrunk by ``1e-3`` toward the identity (exactly
  duplicated LFs make it singular);
* penalties: ``alpha = sparsity / sqrt(n)`` per entry (the noise level of the entries of an inverse correlation
  estimated from ``n`` rows), ``beta = rank_penalty * sqrt(d / n)`` (Chandrasekaran, Parrilo & Willsky 2012 scale
  ``lambda_n ~ sqrt(d / n)``); defaults ``sparsity = 6``, ``rank_penalty = 1`` chosen on planted-dependency synthetic
  matrices (``benchmarks/bench_labelmodels.py`` prints the recovery table), never on a real data set;
* rank: the latent part is also capped at the rank the model implies, ``k - 1`` (``rank=-1``, the default; ``None``
  leaves only the nuclear norm). Without the cap (an ad hoc check when the cap was added) the nuclear-norm
  relaxation alone either kept a rank of 15-40 or, penalised harder, left the latent class's own correlation
  (same-class single-class LFs) in the sparse part: 47-54 false edges on 30 independent single-class LFs, none with
  the cap;
* edges: the partial correlations ``-S_ab / sqrt(S_aa S_bb)`` of the sparse part; an LF pair's score is the
  largest magnitude over its blocks, and the pair is an edge when it reaches ``threshold`` (default 0.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lightning_ws.errors import ConfigError
from lightning_ws.labelmodels.matrix import _row_chunks, edge_components, gram_float32

__all__ = ["StructureEstimate", "learn_structure_rpca", "structure_recovery"]


@dataclass
class StructureEstimate:
    """What :func:`learn_structure_rpca` found.

    Attributes:
        edges: LF pairs ``(i, j)``, ``i < j``, judged dependent, strongest first.
        scores: ``(m, m)`` symmetric LF-pair score (largest |partial correlation| of the sparse part over the pair's
            indicator columns; 0 on the diagonal).
        rank: rank of the low-rank (latent-label) part.
        n_iter: proximal-gradient iterations.
        converged: whether the relative change fell below ``tol``.
        columns: ``(d, 2)`` the (LF, class) of each indicator column.
    """

    edges: list[tuple[int, int]]
    scores: np.ndarray
    rank: int
    n_iter: int
    converged: bool
    columns: np.ndarray = field(repr=False)

    def components(self, m: int) -> list[list[int]]:
        """Connected components of the edge graph over ``m`` LFs (singletons included), sorted by first LF."""
        return edge_components(m, self.edges)


def _indicator_covariance(L: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Covariance of the (LF, class) vote indicators that ever fire, and the ``(d, 2)`` column map."""
    n, m = L.shape
    seen = np.zeros((m, k), dtype=bool)
    for sl in _row_chunks(n, m):
        block = L[sl]
        for c in range(k):
            seen[:, c] |= (block == c).any(axis=0)
    cols = np.argwhere(seen)  # (d, 2): (lf, class), sorted by lf then class
    d = cols.shape[0]
    G = np.zeros((d, d))
    s = np.zeros(d)
    for sl in _row_chunks(n, max(d, 1), elems=8_000_000):
        X = (L[sl][:, cols[:, 0]] == cols[:, 1][None, :]).astype(np.float32)
        G += gram_float32(X)
        s += X.sum(axis=0)
    mean = s / n
    return G / n - np.outer(mean, mean), cols


def learn_structure_rpca(L: Any, num_classes: int | None = None, *, sparsity: float = 6.0, rank_penalty: float = 1.0,
                         threshold: float = 0.1, rank: int | None = -1, max_iter: int = 1000, tol: float = 1e-5,
                         max_rows: int = 200_000, seed: int = 0) -> StructureEstimate:
    """Learn the LF dependency graph with the sparse + low-rank decomposition of Varma et al. 2019 (arXiv 1903.05844).

    See the module docstring for the model, the solver and the defaults.

    Args:
        L: ``n x m`` label matrix (``-1`` = abstain).
        num_classes: ``k`` (inferred as ``max(L) + 1`` when ``None``).
        sparsity: ``alpha * sqrt(n)``, the l1 weight on the sparse part (larger: fewer edges).
        rank_penalty: ``beta / sqrt(d / n)``, the nuclear-norm weight on the low-rank part.
        rank: cap on the rank of the low-rank part; ``-1`` = ``k - 1`` (the latent label's rank), ``None`` = no cap.
        threshold: smallest |partial correlation| that makes an edge.
        max_iter: FISTA iteration cap.
        tol: stop when the relative change of ``(S, Lr)`` falls below it.
        max_rows: rows (a seeded random subset) used for the covariance (default 200,000).
        seed: seed of that subset.

    Returns:
        a :class:`StructureEstimate`.
    """
    from lightning_ws.labelmodels.matrix import validate_label_matrix

    L = validate_label_matrix(L, num_classes)
    k = num_classes if num_classes is not None else max(int(L.max()) + 1, 2)
    for nm, v in (("sparsity", sparsity), ("rank_penalty", rank_penalty), ("tol", tol)):
        if not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
            raise ConfigError(f"{nm} must be a positive number, got {v!r}.")
    if not 0 <= threshold < 1:
        raise ConfigError(f"threshold must lie in [0, 1), got {threshold!r}.")
    n, m = L.shape
    if rank is not None and rank < 0:
        rank = k - 1
    if n > max_rows:
        L = L[np.sort(np.random.default_rng([seed, 1903]).choice(n, max_rows, replace=False))]
        n = max_rows
    Sig, cols = _indicator_covariance(L, k)
    d = Sig.shape[0]
    sd = np.sqrt(np.maximum(np.diag(Sig), 0.0))
    ok = sd > 1e-12  # a column that fires on every row (or never) carries no covariance: leave it out
    C = np.eye(d)
    idx = np.flatnonzero(ok)
    C[np.ix_(idx, idx)] = Sig[np.ix_(idx, idx)] / np.outer(sd[idx], sd[idx])
    C = (1 - 1e-3) * C + 1e-3 * np.eye(d)
    lf = cols[:, 0]
    pen = (lf[:, None] != lf[None, :]).astype(np.float64)  # off-block entries are penalised (and reported)
    alpha = sparsity / np.sqrt(n)
    beta = rank_penalty * np.sqrt(d / n)
    step = 1.0 / (2.0 * float(np.linalg.eigvalsh(C)[-1]) ** 2)
    S = np.diag(1.0 / np.diag(C))  # start: the diagonal part, no low-rank part
    Lr = np.zeros((d, d))
    S_y, L_y = S.copy(), Lr.copy()
    t_k = 1.0
    converged, it = False, 0
    for it in range(1, max_iter + 1):
        G = C @ (S_y - L_y) @ C - np.eye(d)  # gradient of 1/2 tr(R C R C) - tr(R) at R = S - Lr
        G = 0.5 * (G + G.T)
        A = S_y - step * G
        S_new = np.where(pen > 0, np.sign(A) * np.maximum(np.abs(A) - step * alpha, 0.0), A)
        w, V = np.linalg.eigh(L_y + step * G)
        w = np.maximum(w - step * beta, 0.0)
        if rank is not None:
            w[: max(d - rank, 0)] = 0.0  # eigh sorts ascending: keep the top `rank`
        L_new = (V * w) @ V.T
        t_next = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t_k * t_k))
        mom = (t_k - 1.0) / t_next
        dS, dL = S_new - S, L_new - Lr
        change = np.sqrt(float((dS * dS).sum() + (dL * dL).sum()))
        scale = max(np.sqrt(float((S_new * S_new).sum() + (L_new * L_new).sum())), 1e-12)
        S_y, L_y = S_new + mom * dS, L_new + mom * dL
        S, Lr, t_k = S_new, L_new, t_next
        if change <= tol * scale:
            converged = True
            break
    diag = np.maximum(np.diag(S), 1e-12)
    pc = np.abs(S) / np.sqrt(np.outer(diag, diag)) * pen
    pc[~ok, :] = 0.0
    pc[:, ~ok] = 0.0
    scores = np.zeros((m, m))
    np.maximum.at(scores, (lf[:, None].repeat(d, 1), lf[None, :].repeat(d, 0)), pc)
    scores = np.maximum(scores, scores.T)
    np.fill_diagonal(scores, 0.0)
    ii, jj = np.nonzero(np.triu(scores >= max(threshold, 1e-12), 1))
    order = np.argsort(-scores[ii, jj], kind="stable")
    edges = [(int(ii[o]), int(jj[o])) for o in order]
    lr_rank = int((np.linalg.eigvalsh(Lr) > 1e-8 * max(1.0, float(np.abs(Lr).max()))).sum())
    return StructureEstimate(edges=edges, scores=scores, rank=lr_rank, n_iter=it, converged=converged, columns=cols)


def structure_recovery(found: Any, planted: Any) -> dict[str, float]:
    """Precision and recall of found LF-pair edges against planted ones (unordered pairs).

    ``planted`` may be a list of pairs or a list of clusters (every pair inside a cluster counts as an edge); so may
    ``found``.
    """
    def pairs(x: Any) -> set[tuple[int, int]]:
        out: set[tuple[int, int]] = set()
        for g in x:
            g = [int(v) for v in g]
            out |= {(min(a, b), max(a, b)) for ai, a in enumerate(g) for b in g[ai + 1:]}
        return out

    f, p = pairs(found), pairs(planted)
    tp = len(f & p)
    return {"precision": tp / len(f) if f else float("nan"), "recall": tp / len(p) if p else float("nan"),
            "found": len(f), "planted": len(p)}
