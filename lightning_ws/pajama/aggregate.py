"""From per-response program scores to pairwise verdicts (PAJAMA, arXiv 2506.10403; spec §9 and §12.3-12.5).

Shapes: ``scores`` is ``(n, 2, V)`` float (``[:, 0]`` response A, ``[:, 1]`` response B, ``NaN`` = the program failed
on that response); labels ``y`` are 0 (A preferred) / 1 (B preferred); votes use the label-model convention
(``1`` = B, ``0`` = A, ``-1`` = abstain).

* :class:`RobustNormalizer`: per-program bounds from the 1st / 99th percentile of *validation* scores (both responses
  pooled), then clip to ``[0, 1]``. A program whose bounds coincide is constant there: its differences are 0 and it
  never votes.
* :func:`pairwise_votes`: ``d = s_B - s_A``; ``|d| > t`` votes for the larger score, otherwise abstain. Because every
  program scores each response on its own, ``d(B, A) = -d(A, B)`` exactly, so the votes of a swapped pair are the
  mirror image (swap-symmetric by construction; exact ties abstain).
* :class:`ThresholdTuner`: one threshold per program, chosen on validation **under a minimum coverage**, maximising
  the Wilson lower bound of the covered accuracy (default) over a quantile grid of that program's ``|d|``. The
  reference maximises covered accuracy on a fixed grid ``0..0.14`` with ties to the larger ``t``, so most thresholds
  end at the grid edge and near-silent programs reach "100%" (spec §12.3); ``objective="covered_accuracy"`` with
  ``grid="reference"`` reproduces that rule for comparison.
* :func:`select_programs`: drop programs below ``min_accuracy`` (0.5, as the reference) or ``min_coverage``, rank
  by the objective (Wilson bound: a program that votes on 2 of 500 rows cannot rank first), choose ``k`` by the
  validation accuracy **on all rows** (abstain = 0.5) of the aggregate.
* :class:`PairwiseAggregator`: majority vote or any :mod:`lightning_ws.labelmodels` model, fitted **without labels**
  on an unlabeled pool augmented with its mirror image, and scored swap-symmetrically:
  ``p_B(A, B) = (p_B(L) + p_A(mirror L)) / 2``, so ``p_B(B, A) = 1 - p_B(A, B)`` holds exactly.
* :func:`pairwise_metrics`: accuracy on all rows (abstain and exact ties count 0.5; also reported as errors), on
  covered rows, and coverage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from lightning_ws.errors import ConfigError, DataError

__all__ = [
    "OBJECTIVES",
    "PairwiseAggregator",
    "RobustNormalizer",
    "Selection",
    "ThresholdFit",
    "ThresholdTuner",
    "mirror_votes",
    "pairwise_metrics",
    "pairwise_votes",
    "score_differences",
    "select_programs",
    "verdicts_from_proba",
    "wilson_lower_bound",
]

OBJECTIVES = ("wilson", "accuracy_x_coverage", "covered_accuracy")


def _check_scores(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 3 or s.shape[1] != 2:
        raise DataError(f"scores must have shape (n, 2, V) (response A and B per program), got {s.shape}.")
    return s


@dataclass
class RobustNormalizer:
    """Per-program robust min-max bounds (``q_low`` / ``q_high`` percentiles of validation scores, both responses).

    Args:
        q_low, q_high: percentiles (default 1 and 99, as the reference).
    """

    q_low: float = 1.0
    q_high: float = 99.0
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.q_low < self.q_high <= 100.0:
            raise ConfigError(f"need 0 <= q_low < q_high <= 100, got {self.q_low}, {self.q_high}.")

    def fit(self, scores: np.ndarray) -> RobustNormalizer:
        """Fit the bounds on ``(n, 2, V)`` validation scores (NaN ignored; an all-NaN program gets bounds 0, 0)."""
        s = _check_scores(scores)
        flat = s.reshape(-1, s.shape[2])
        lo = np.zeros(s.shape[2])
        hi = np.zeros(s.shape[2])
        for j in range(s.shape[2]):
            col = flat[:, j][np.isfinite(flat[:, j])]
            if col.size:
                lo[j], hi[j] = np.percentile(col, self.q_low), np.percentile(col, self.q_high)
        self.lo, self.hi = lo, hi
        return self

    def transform(self, scores: np.ndarray) -> np.ndarray:
        """Scores clipped into ``[0, 1]``; constant programs map to 0.5; NaN stays NaN."""
        if self.lo is None or self.hi is None:
            raise ConfigError("RobustNormalizer is not fitted; call fit(validation_scores) first.")
        s = _check_scores(scores)
        if s.shape[2] != len(self.lo):
            raise DataError(f"scores have {s.shape[2]} programs, the normalizer was fitted on {len(self.lo)}.")
        span = self.hi - self.lo
        safe = np.where(span > 0, span, 1.0)
        out = np.clip((s - self.lo) / safe, 0.0, 1.0)
        out = np.where(span > 0, out, 0.5)
        return np.where(np.isfinite(s), out, np.nan)

    def to_dict(self) -> dict[str, Any]:
        return {"q_low": self.q_low, "q_high": self.q_high, "lo": None if self.lo is None else self.lo.tolist(),
                "hi": None if self.hi is None else self.hi.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RobustNormalizer:
        return cls(float(d["q_low"]), float(d["q_high"]), None if d.get("lo") is None else np.asarray(d["lo"]),
                   None if d.get("hi") is None else np.asarray(d["hi"]))


def score_differences(norm_scores: np.ndarray) -> np.ndarray:
    """``(n, V)`` differences ``s_B - s_A`` (``NaN`` where either score is missing)."""
    s = _check_scores(norm_scores)
    return s[:, 1, :] - s[:, 0, :]


def pairwise_votes(d: np.ndarray, thresholds: np.ndarray | float) -> np.ndarray:
    """``(n, V)`` int64 votes: 1 (B) where ``d > t``, 0 (A) where ``d < -t``, else -1 (abstain; also NaN)."""
    d = np.asarray(d, dtype=np.float64)
    t = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), d.shape[1:])
    with np.errstate(invalid="ignore"):
        out = np.where(d > t, 1, np.where(d < -t, 0, -1))
    return out.astype(np.int64)


def mirror_votes(L: np.ndarray) -> np.ndarray:
    """The votes of the swapped pairs: 0 <-> 1, abstain stays."""
    L = np.asarray(L)
    return np.where(L < 0, L, 1 - L)


def wilson_lower_bound(correct: float, n: float, z: float = 1.96) -> float:
    """Lower end of the Wilson score interval of a binomial proportion (0 when ``n == 0``)."""
    if n <= 0:
        return 0.0
    p = correct / n
    den = 1 + z * z / n
    centre = p + z * z / (2 * n)
    rad = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - rad) / den


@dataclass
class ThresholdFit:
    """Per-program thresholds and their validation statistics (``feasible``: reached the minimum coverage)."""

    thresholds: np.ndarray
    accuracy: np.ndarray
    coverage: np.ndarray
    objective: np.ndarray
    feasible: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)

    def rows(self, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """One dict per program (for reports)."""
        out = []
        for j in range(len(self.thresholds)):
            out.append({"program": names[j] if names else j, "threshold": float(self.thresholds[j]),
                        "val_accuracy": float(self.accuracy[j]), "val_coverage": float(self.coverage[j]),
                        "objective": float(self.objective[j]), "feasible": bool(self.feasible[j])})
        return out


def _objective(kind: str, correct: float, covered: float, n: int, z: float) -> float:
    if covered == 0:
        return -1.0
    acc = correct / covered
    if kind == "wilson":
        return wilson_lower_bound(correct, covered, z)
    if kind == "accuracy_x_coverage":
        return acc * covered / n
    return acc


@dataclass
class ThresholdTuner:
    """Coverage-aware per-program thresholds (spec §12.3).

    Args:
        objective: ``"wilson"`` (Wilson lower bound of covered accuracy; default), ``"accuracy_x_coverage"``, or
            ``"covered_accuracy"`` (the reference's objective).
        min_coverage: a threshold must leave at least this share of validation rows voted (default 0.2).
        grid: ``"quantile"`` (thresholds at ``n_grid`` quantiles of the program's nonzero ``|d|``, plus 0; default)
            or ``"reference"`` (``0, 0.01, ..., 0.14``; the reference's grid).
        n_grid: quantile grid size.
        prefer: tie break between thresholds with equal objective: ``"coverage"`` (smaller ``t``; default) or
            ``"larger"`` (larger ``t``, the reference's rule).
        z: Wilson's ``z`` (1.96).
    """

    objective: Literal["wilson", "accuracy_x_coverage", "covered_accuracy"] = "wilson"
    min_coverage: float = 0.2
    grid: Literal["quantile", "reference"] = "quantile"
    n_grid: int = 40
    prefer: Literal["coverage", "larger"] = "coverage"
    z: float = 1.96

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}.")
        if not 0.0 <= self.min_coverage <= 1.0:
            raise ConfigError(f"min_coverage must be in [0, 1], got {self.min_coverage}.")
        if self.grid not in ("quantile", "reference"):
            raise ConfigError(f"grid must be 'quantile' or 'reference', got {self.grid!r}.")
        if self.prefer not in ("coverage", "larger"):
            raise ConfigError(f"prefer must be 'coverage' or 'larger', got {self.prefer!r}.")
        if self.n_grid < 1:
            raise ConfigError(f"n_grid must be >= 1, got {self.n_grid}.")

    def _grid(self, ad: np.ndarray) -> np.ndarray:
        if self.grid == "reference":
            return np.round(np.arange(0.0, 0.1401, 0.01), 4)
        nz = ad[ad > 0]
        if nz.size == 0:
            return np.array([0.0])
        qs = np.quantile(nz, np.linspace(0.0, 0.98, self.n_grid))
        return np.unique(np.concatenate([[0.0], qs - 1e-12]).clip(min=0.0))

    def fit(self, d_val: np.ndarray, y_val: np.ndarray) -> ThresholdFit:
        """Choose a threshold per program from validation differences ``(n, V)`` and labels ``(n,)``."""
        d = np.asarray(d_val, dtype=np.float64)
        y = np.asarray(y_val)
        if d.ndim != 2 or len(y) != d.shape[0]:
            raise DataError(f"d_val must be (n, V) and y_val (n,), got {d.shape} and {y.shape}.")
        if not np.isin(y, (0, 1)).all():
            raise DataError("y_val must hold 0 (A preferred) or 1 (B preferred) on every row.")
        n, V = d.shape
        th, acc, cov, obj, feas = (np.zeros(V), np.full(V, np.nan), np.zeros(V), np.full(V, -1.0),
                                   np.zeros(V, dtype=bool))
        for j in range(V):
            col = d[:, j]
            ad = np.abs(np.nan_to_num(col, nan=0.0))
            best = None
            for t in self._grid(ad):
                with np.errstate(invalid="ignore"):
                    vote = np.where(col > t, 1, np.where(col < -t, 0, -1))
                covered = vote >= 0
                c = int(covered.sum())
                correct = int((vote[covered] == y[covered]).sum())
                ok = c >= self.min_coverage * n and c > 0
                o = _objective(self.objective, correct, c, n, self.z)
                key = (ok, o, t if self.prefer == "larger" else -t)
                if best is None or key > best[0]:
                    best = (key, t, correct / c if c else float("nan"), c / n, o, ok)
            _, th[j], acc[j], cov[j], obj[j], feas[j] = best
        return ThresholdFit(th, acc, cov, obj, feas, {"objective": self.objective, "min_coverage": self.min_coverage,
                                                      "grid": self.grid, "n_grid": self.n_grid,
                                                      "prefer": self.prefer})


@dataclass
class Selection:
    """Selected programs (column indices into the full set, best first) and the ``k`` curve on validation."""

    order: list[int]
    k: int
    curve: list[dict[str, float]]
    dropped: dict[int, str]

    @property
    def chosen(self) -> list[int]:
        return self.order[: self.k]


def select_programs(L_val: np.ndarray, y_val: np.ndarray, fit: ThresholdFit, *, min_accuracy: float = 0.5,
                    require_feasible: bool = True, rank_by: Literal["objective", "accuracy"] = "objective",
                    k: int | None = None, k_metric: Literal["all", "covered"] = "all",
                    aggregator: str = "majority_vote", pool_L: np.ndarray | None = None,
                    exclude: dict[int, str] | None = None) -> Selection:
    """Filter and rank programs on validation, then choose how many to keep (spec §9.4-9.5, done better).

    Args:
        L_val, y_val: validation votes ``(n, V)`` (from the fitted thresholds) and labels.
        fit: the :class:`ThresholdFit` the votes came from.
        min_accuracy: drop programs whose validation covered accuracy is below this (0.5, the reference's filter).
        require_feasible: drop programs that cannot reach the tuner's minimum coverage.
        rank_by: ``"objective"`` (the tuner's objective, default) or ``"accuracy"`` (covered accuracy, the
            reference; near-silent programs first).
        k: keep exactly the top ``k`` (``None`` = choose ``k`` on validation).
        k_metric: ``"all"`` (accuracy on all rows, abstain = 0.5; default) or ``"covered"`` (the reference).
        aggregator: how the top-k votes are combined while choosing ``k`` (see :class:`PairwiseAggregator`).
        pool_L: unlabeled votes to fit a label-model aggregator on while choosing ``k`` (default: ``L_val``).
        exclude: programs to drop up front, with the reason (e.g. behavioural duplicates).
    """
    L_val = np.asarray(L_val)
    y_val = np.asarray(y_val)
    dropped: dict[int, str] = dict(exclude or {})
    keep = []
    for j in range(L_val.shape[1]):
        if j in dropped:
            continue
        if require_feasible and not fit.feasible[j]:
            dropped[j] = f"coverage {fit.coverage[j]:.3f} below the minimum"
        elif np.isnan(fit.accuracy[j]) or fit.accuracy[j] < min_accuracy:
            dropped[j] = f"validation accuracy {fit.accuracy[j]:.3f} < {min_accuracy}"
        else:
            keep.append(j)
    key = fit.objective if rank_by == "objective" else fit.accuracy
    order = sorted(keep, key=lambda j: (-key[j], -fit.coverage[j], j))
    curve: list[dict[str, float]] = []
    if not order:
        return Selection([], 0, curve, dropped)
    ks = [k] if k is not None else list(range(1, len(order) + 1))
    best_k, best = ks[0], -1.0
    for kk in ks:
        cols = order[:kk]
        agg = PairwiseAggregator(aggregator).fit(pool_L[:, cols] if pool_L is not None else L_val[:, cols])
        m = pairwise_metrics(agg.predict_proba(L_val[:, cols]), y_val)
        score = m["acc_all"] if k_metric == "all" else m["acc_covered"]
        curve.append({"k": kk, **m})
        if score > best + 1e-12:
            best_k, best = kk, score
    return Selection(order, int(min(best_k, len(order))), curve, dropped)


class PairwiseAggregator:
    """Combine program votes into ``P(B preferred)``, swap-symmetrically (see the module docstring).

    Args:
        method: ``"majority_vote"`` or any name of :func:`lightning_ws.labelmodels.make_label_model`
            (``"dawid_skene"``, ``"moment_matching"``, ``"auto"``...). Label models are fitted without labels on
            the pool plus its mirror image (so the class balance is 1/2 by symmetry).
        seed: label-model seed.
    """

    def __init__(self, method: str = "majority_vote", seed: int = 0, **kwargs: Any) -> None:
        self.method = method
        self.seed = seed
        self.kwargs = kwargs
        self.model: Any = None

    def fit(self, L_pool: np.ndarray) -> PairwiseAggregator:
        """Fit on unlabeled votes ``(n, V)`` (no labels are used)."""
        L = np.asarray(L_pool, dtype=np.int64)
        if L.ndim != 2 or L.shape[1] == 0:
            raise DataError(f"L_pool must be (n, V) with V >= 1, got {L.shape}.")
        if self.method in ("majority_vote", "mv"):
            self.model = None
            return self
        from lightning_ws.labelmodels import make_label_model

        both = np.vstack([L, mirror_votes(L)])
        covered = (both >= 0).any(1)
        self.model = make_label_model(self.method, num_classes=2, seed=self.seed, **self.kwargs)
        if covered.sum() == 0:
            self.model = None
            return self
        self.model.fit(both[covered], class_balance="uniform")
        return self

    def _p_b(self, L: np.ndarray) -> np.ndarray:
        if self.model is None:
            nb = (L == 1).sum(1)
            na = (L == 0).sum(1)
            tot = na + nb
            return np.where(tot > 0, nb / np.maximum(tot, 1), 0.5)
        p = self.model.predict_proba(L)[:, 1]
        return np.where((L >= 0).any(1), p, 0.5)

    def predict_proba(self, L: np.ndarray) -> np.ndarray:
        """``(n,)`` ``P(B preferred)``; exactly 0.5 on rows where every program abstains."""
        L = np.asarray(L, dtype=np.int64)
        return 0.5 * (self._p_b(L) + (1.0 - self._p_b(mirror_votes(L))))


def verdicts_from_proba(p_b: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """1 (B) / 0 (A) / -1 (no verdict: ``|p - 0.5| <= tol``)."""
    p = np.asarray(p_b, dtype=np.float64)
    return np.where(p > 0.5 + tol, 1, np.where(p < 0.5 - tol, 0, -1)).astype(np.int64)


def pairwise_metrics(p_b_or_verdicts: np.ndarray, y: np.ndarray, *, verdicts: bool = False) -> dict[str, float]:
    """Accuracy on all rows (no verdict = 0.5: ``acc_all``; = wrong: ``acc_all_strict``), on rows with a verdict
    (``acc_covered``), and ``coverage``; ``n`` rows."""
    v = np.asarray(p_b_or_verdicts) if verdicts else verdicts_from_proba(p_b_or_verdicts)
    y = np.asarray(y)
    has = v >= 0
    correct = (v == y) & has
    n = len(y)
    if n == 0:
        return {"n": 0, "acc_all": float("nan"), "acc_all_strict": float("nan"), "acc_covered": float("nan"),
                "coverage": float("nan")}
    return {"n": int(n), "acc_all": float((correct.sum() + 0.5 * (~has).sum()) / n),
            "acc_all_strict": float(correct.sum() / n),
            "acc_covered": float(correct[has].mean()) if has.any() else float("nan"),
            "coverage": float(has.mean())}
