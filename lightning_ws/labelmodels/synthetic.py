"""Synthetic label matrices with known parameters (for tests, benchmarks and sanity checks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lightning_ws.errors import ConfigError

__all__ = [
    "REGIMES",
    "RegimeLabelMatrix",
    "SyntheticLabelMatrix",
    "make_regime_label_matrix",
    "make_shared_abstain_label_matrix",
    "make_synthetic_label_matrix",
    "make_uninformative_lf_label_matrix",
]


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


@dataclass(frozen=True)
class RegimeLabelMatrix:
    """A label matrix drawn by :func:`make_regime_label_matrix`, with its ground truth and recipe.

    Attributes:
        L: ``(n, m)`` int8 label matrix (``-1`` = abstain).
        y: ``(n,)`` true labels.
        class_balance: ``(k,)`` true ``P(Y)``.
        accuracies: ``(m,)`` target ``P(lambda_j = Y | lambda_j votes)`` of each LF's own (non-copied) votes.
        coverage: ``(m,)`` target voting rates.
        lf_class: ``(m,)`` the class a single-class LF votes, ``-1`` for multi-class LFs.
        clusters: lists of LF indices that copy a common leader (size-1 lists for independent LFs).
        config: the arguments that produced it.
    """

    L: np.ndarray
    y: np.ndarray
    class_balance: np.ndarray
    accuracies: np.ndarray
    coverage: np.ndarray
    lf_class: np.ndarray
    clusters: list[list[int]]
    config: dict[str, Any]


def make_shared_abstain_label_matrix(n: int = 4000, m: int = 6, z0: float = 0.3, z1: float = 0.6, *, seed: int = 0
                                     ) -> tuple[np.ndarray, np.ndarray]:
    """Binary LFs that vote both classes and abstain together on the rows they find unclear (issue 16, session 44).

    ``Y = 1`` (a spam-like minority) with probability 0.15. One latent "unclear" flag per row, shared by every LF, is
    set with probability ``z0`` on class-0 rows and ``z1`` on class-1 rows. Each of the ``m`` LFs abstains on an
    unclear row with a probability drawn from U(0.5, 0.8) (U(0.02, 0.15) on a clear row) and, where it votes, is
    right with a probability drawn from U(0.70, 0.85) (U(0.93, 0.99) on a clear row). Given the class, the abstains
    are dependent through the flag: LLM-written programs that abstain when unsure look like this. ``z0 = z1 = 0`` is
    the control (abstains independent given the class). ``benchmarks/diag_shared_abstains.py`` draws from it.

    Returns ``(L, y)``: the ``(n, m)`` int64 label matrix (``-1`` = abstain) and the gold labels. All randomness
    comes from ``np.random.default_rng([44, seed, m, int(100 * z0), int(100 * z1)])``.
    """
    if n < 1 or m < 1:
        raise ConfigError(f"need n >= 1 and m >= 1; got n={n}, m={m}.")
    if not (0.0 <= z0 <= 1.0 and 0.0 <= z1 <= 1.0):
        raise ConfigError(f"z0 and z1 are probabilities in [0, 1]; got z0={z0}, z1={z1}.")
    rng = np.random.default_rng([44, seed, m, int(100 * z0), int(100 * z1)])
    y = (rng.random(n) < 0.15).astype(np.int64)
    unclear = rng.random(n) < np.where(y == 1, z1, z0)
    L = -np.ones((n, m), dtype=np.int64)
    for j in range(m):
        abstain = rng.random(n) < np.where(unclear, rng.uniform(0.5, 0.8), rng.uniform(0.02, 0.15))
        right = rng.random(n) < np.where(unclear, rng.uniform(0.70, 0.85), rng.uniform(0.93, 0.99))
        L[:, j] = np.where(abstain, -1, np.where(right, y, 1 - y))
    return L, y


_UNINFORMATIVE_KINDS = ("constant", "near", "skew")


def make_uninformative_lf_label_matrix(n: int = 400, k: int = 2, m: int = 3, *, extra: str = "constant",
                                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``m`` informative LFs beside one whose votes do not depend on the class (issue 16, sessions 37 and 43-44).

    Column 0 is the uninformative LF (``extra``): ``"constant"`` votes class 1 on every row (a catch-all default, a
    buggy program); ``"near"`` votes class 1 on a random 95 % of the rows and abstains on the rest; ``"skew"`` votes
    class 1 on a random 90 % and class 0 on the rest. Columns ``1..m`` are LFs with a precision drawn from
    U(0.6, 0.9) and a coverage from U(0.1, 0.5), wrong votes uniform over the other classes; the classes are uniform
    over ``0..k-1``. ``benchmarks/diag_constant_lf.py`` draws from it.

    Returns ``(L, y)`` with ``2 n`` rows: ``n`` to fit on and ``n`` fresh rows of the same draw after them, an int64
    label matrix ``(2 n, m + 1)`` (``-1`` = abstain) and the gold labels. All randomness comes from
    ``np.random.default_rng([37, seed, k, m])`` (the kinds share one stream: they differ only in column 0).
    """
    if n < 1 or m < 1 or k < 2:
        raise ConfigError(f"need n >= 1, m >= 1 and k >= 2; got n={n}, m={m}, k={k}.")
    if extra not in _UNINFORMATIVE_KINDS:
        raise ConfigError(f"extra must be one of {_UNINFORMATIVE_KINDS}; got {extra!r}.")
    rng = np.random.default_rng([37, seed, k, m])
    y = rng.integers(0, k, 2 * n)
    L = -np.ones((2 * n, m + 1), dtype=np.int64)
    u = rng.random(2 * n)
    L[:, 0] = {"constant": np.ones(2 * n, dtype=np.int64), "near": np.where(u < 0.95, 1, -1),
               "skew": np.where(u < 0.9, 1, 0)}[extra]
    for j in range(1, m + 1):
        fire = rng.random(2 * n) < rng.uniform(0.1, 0.5)
        right = rng.random(2 * n) < rng.uniform(0.6, 0.9)
        wrong = (y + rng.integers(1, k, 2 * n)) % k
        L[fire, j] = np.where(right, y, wrong)[fire]
    return L, y


def make_regime_label_matrix(n: int = 5000, k: int = 2, m: int = 20, *, lf_type: str = "multi",
                             coverage: tuple[float, float] = (0.05, 0.5),
                             accuracy: tuple[float, float] = (0.55, 0.95), imbalance: float = 1.0,
                             cluster_frac: float = 0.0, cluster_size: int = 4, copy_prob: float = 0.9,
                             accuracy_scale: str = "absolute", seed: int = 0) -> RegimeLabelMatrix:
    """Draw a label matrix from one weak-supervision regime (the test matrix of the label models).

    * ``Y ~ p`` with ``p_c ∝ imbalance^(-c / (k - 1))`` (``imbalance = p_0 / p_{k-1}``; 1 = balanced).
    * ``lf_type="multi"``: LF ``j`` votes with probability ``cov_j`` independently of ``Y``; a vote is right with
      probability ``acc_j``, otherwise a uniformly random other class (the one-coin model).
    * ``lf_type="single"``: LF ``j`` only ever votes its class ``c_j`` (keyword LFs of multi-class WRENCH sets),
      assigned round-robin over the classes; it fires with ``P(fire | Y = c_j) = t_j`` and
      ``P(fire | Y != c_j) = f_j`` chosen so that ``P(fire) = cov_j`` and ``P(Y = c_j | fire) = acc_j`` (``t_j``
      capped at 1, which then lowers the coverage); ``lf_type="mixed"``: half of each.
    * ``cov_j ~ U(coverage)``, ``acc_j ~ U(accuracy)``.
    * ``accuracy_scale="absolute"`` (default) uses ``acc_j`` as it is. A single-class LF of a class whose share
      ``p_c`` exceeds ``acc_j`` then fires *more* often on the other classes than on its own (precision 0.7 for a
      class of 92 %): it is worse than chance, no label-free model can tell its class from the others', and with
      ``imbalance > 1`` part of the majority class's LFs are like that. ``"above_chance"`` reads ``acc_j`` as the
      share of the way from chance to certainty: precision ``p_c + acc_j (1 - p_c)`` for a single-class LF,
      accuracy ``1/k + acc_j (1 - 1/k)`` for a multi-class LF, so every LF is better than chance (the assumption
      of every label model here and of snorkel); ``accuracies`` holds the resulting precisions / accuracies.
    * Correlated clusters: a fraction ``cluster_frac`` of the LFs form clusters of ``cluster_size`` LFs; in a cluster
      every member but the leader copies the leader's output (vote or abstain) on each row with probability
      ``copy_prob`` and otherwise draws its own (keyword variants of one rule). Members share the leader's class.

    All randomness comes from ``np.random.default_rng(seed)``.
    """
    if lf_type not in ("multi", "single", "mixed"):
        raise ConfigError(f"lf_type must be 'multi', 'single' or 'mixed', got {lf_type!r}.")
    if k < 2 or m < 1 or n < 1:
        raise ConfigError(f"need k >= 2, m >= 1, n >= 1; got k={k}, m={m}, n={n}.")
    if not (0 < coverage[0] <= coverage[1] <= 1 and 0 < accuracy[0] <= accuracy[1] <= 1 and imbalance >= 1):
        raise ConfigError("coverage and accuracy must be (low, high) ranges in (0, 1] and imbalance >= 1.")
    if not (0 <= cluster_frac <= 1 and cluster_size >= 2 and 0 <= copy_prob <= 1):
        raise ConfigError("cluster_frac must lie in [0, 1], cluster_size >= 2 and copy_prob in [0, 1].")
    if accuracy_scale not in ("absolute", "above_chance"):
        raise ConfigError(f"accuracy_scale must be 'absolute' or 'above_chance', got {accuracy_scale!r}.")
    rng = np.random.default_rng(seed)
    p = imbalance ** (-np.arange(k) / (k - 1))
    p = p / p.sum()
    y = rng.choice(k, size=n, p=p).astype(np.int64)
    cov = rng.uniform(*coverage, size=m)
    acc = rng.uniform(*accuracy, size=m)
    single = np.zeros(m, dtype=bool)
    if lf_type == "single":
        single[:] = True
    elif lf_type == "mixed":
        single[rng.permutation(m)[: m // 2]] = True
    lf_class = np.full(m, -1, dtype=np.int64)
    lf_class[single] = np.arange(int(single.sum())) % k
    # clusters: consecutive blocks of LFs after a random permutation
    n_clustered = int(round(cluster_frac * m)) // cluster_size * cluster_size
    perm = rng.permutation(m)
    clusters = [perm[i:i + cluster_size].tolist() for i in range(0, n_clustered, cluster_size)]
    for cl in clusters:
        lf_class[cl] = lf_class[cl[0]]
        single[cl] = single[cl[0]]
    clusters += [[int(j)] for j in perm[n_clustered:]]
    clusters.sort(key=lambda g: min(g))
    if accuracy_scale == "above_chance":
        base = np.where(single, p[np.maximum(lf_class, 0)], 1.0 / k)
        acc = base + acc * (1.0 - base)
    L = np.empty((n, m), dtype=np.int8)
    for j in range(m):
        if single[j]:
            c = lf_class[j]
            t = min(1.0, acc[j] * cov[j] / p[c])
            f = min(1.0, (1 - acc[j]) * cov[j] / max(1 - p[c], 1e-12))
            fire = rng.random(n) < np.where(y == c, t, f)
            L[:, j] = np.where(fire, c, -1)
        else:
            right = rng.random(n) < acc[j]
            other = (y + rng.integers(1, k, size=n)) % k
            fire = rng.random(n) < cov[j]
            L[:, j] = np.where(fire, np.where(right, y, other), -1)
    for cl in clusters:
        leader = cl[0]
        for j in cl[1:]:
            copy = rng.random(n) < copy_prob
            L[copy, j] = L[copy, leader]
    # every LF votes at least once (label models refuse silent columns)
    for j in np.flatnonzero((L != -1).sum(axis=0) == 0):
        i = int(rng.integers(n))
        L[i, j] = y[i] if lf_class[j] < 0 else lf_class[j]
    config = {"n": n, "k": k, "m": m, "lf_type": lf_type, "coverage": list(coverage), "accuracy": list(accuracy),
              "imbalance": imbalance, "cluster_frac": cluster_frac, "cluster_size": cluster_size,
              "copy_prob": copy_prob, "accuracy_scale": accuracy_scale, "seed": seed}
    return RegimeLabelMatrix(L=L, y=y, class_balance=p, accuracies=acc, coverage=cov, lf_class=lf_class,
                             clusters=clusters, config=config)


#: The regime matrix of the tests and the benchmark: (name, keyword arguments of make_regime_label_matrix).
REGIMES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("binary multi-class LFs", dict(k=2, m=10, lf_type="multi", coverage=(0.1, 0.5))),
    ("binary skewed, low coverage", dict(k=2, m=60, lf_type="single", coverage=(0.005, 0.05), imbalance=6.0)),
    ("binary correlated clusters", dict(k=2, m=20, lf_type="multi", cluster_frac=0.6, cluster_size=4)),
    ("k=4 mixed LFs", dict(k=4, m=30, lf_type="mixed", coverage=(0.02, 0.3))),
    ("k=6 single-class LFs", dict(k=6, m=68, lf_type="single", coverage=(0.005, 0.1), imbalance=10.0)),
    ("k=6 single-class, clusters", dict(k=6, m=60, lf_type="single", coverage=(0.01, 0.1), cluster_frac=0.5,
                                        cluster_size=5)),
    ("k=10 multi-class, weak", dict(k=10, m=40, lf_type="multi", coverage=(0.05, 0.3), accuracy=(0.55, 0.75))),
    ("k=10 single-class, 200 LFs", dict(k=10, m=200, lf_type="single", coverage=(0.005, 0.03), imbalance=4.0)),
    ("k=3 high coverage, strong", dict(k=3, m=15, lf_type="multi", coverage=(0.3, 0.5), accuracy=(0.8, 0.95))),
    ("k=8 mixed, skewed clusters", dict(k=8, m=100, lf_type="mixed", coverage=(0.01, 0.2), imbalance=8.0,
                                        cluster_frac=0.4, cluster_size=3, copy_prob=0.8)),
)
