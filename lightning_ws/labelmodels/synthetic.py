"""Synthetic label matrices with known parameters (for tests, benchmarks and sanity checks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lightning_ws.errors import ConfigError

__all__ = ["SyntheticLabelMatrix", "make_synthetic_label_matrix"]


@dataclass(frozen=True)
class SyntheticLabelMatrix:
    """A generated label matrix and its ground truth.

    Attributes:
        L: ``(n, m)`` label matrix (``-1`` = abstain), dtype ``int8`` (compact at scale).
        y: ``(n,)`` true labels.
        accuracies: ``(m,)`` true ``P(lambda_j = Y | lambda_j votes)``.
        coverage: ``(m,)`` true voting probabilities (independent of ``Y``).
        class_balance: ``(k,)`` true ``P(Y)``.
    """

    L: np.ndarray
    y: np.ndarray
    accuracies: np.ndarray
    coverage: np.ndarray
    class_balance: np.ndarray


def make_synthetic_label_matrix(n: int, accuracies: Any, coverage: Any, class_balance: Any, *, seed: int = 0,
                                chunk_rows: int = 200_000) -> SyntheticLabelMatrix:
    """Draw ``L`` from conditionally independent one-coin LFs.

    Each LF ``j`` votes with probability ``coverage[j]`` (independently of ``Y``); when it votes it says the true
    class with probability ``accuracies[j]`` and otherwise a uniformly random other class. ``Y ~ class_balance``.
    Uses its own ``np.random.default_rng(seed)``; rows are generated in chunks so ``n = 10^6, m = 100`` stays
    within ~100 MB of temporaries.
    """
    acc = np.asarray(accuracies, dtype=np.float64).reshape(-1)
    cov = np.asarray(coverage, dtype=np.float64).reshape(-1)
    p = np.asarray(class_balance, dtype=np.float64).reshape(-1)
    if acc.shape != cov.shape:
        raise ConfigError(f"accuracies ({acc.shape[0]}) and coverage ({cov.shape[0]}) must have one entry per LF.")
    if p.size < 2 or abs(p.sum() - 1) > 1e-9 or (p < 0).any():
        raise ConfigError(f"class_balance must be >= 2 probabilities summing to 1, got {p.tolist()}.")
    if not (np.all((acc >= 0) & (acc <= 1)) and np.all((cov >= 0) & (cov <= 1))):
        raise ConfigError("accuracies and coverage must lie in [0, 1].")
    k, m = p.size, acc.size
    rng = np.random.default_rng(seed)
    y = rng.choice(k, size=n, p=p).astype(np.int64)
    L = np.empty((n, m), dtype=np.int8)
    for start in range(0, n, chunk_rows):
        sl = slice(start, min(n, start + chunk_rows))
        r = sl.stop - sl.start
        yb = y[sl][:, None]
        right = rng.random((r, m)) < acc[None, :]
        other = (yb + rng.integers(1, k, size=(r, m))) % k
        votes = np.where(right, yb, other)
        fires = rng.random((r, m)) < cov[None, :]
        L[sl] = np.where(fires, votes, -1)
    return SyntheticLabelMatrix(L=L, y=y, accuracies=acc, coverage=cov, class_balance=p)
