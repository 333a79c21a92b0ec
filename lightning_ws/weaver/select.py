"""Weaver's selection pipeline (arXiv 2506.18203), step by step, with the flaws of the reference fixed.

Building blocks (spec §6), each a documented function or small fitted transform:

0. :func:`majority_vote_scores`: the answer-agreement pseudo-verifier (min-max scaled answer frequency per problem);
1. :class:`ScoreNormalizer`: ``minmax`` / ``quantile`` / ``winsorize`` / ``none``, ``global`` or ``per_problem``;
   a *fitted, persisted* transform (the reference refits on every split and skips verifiers already in [0, 1]);
   ``NaN`` stays missing (the reference turns it into a hard 0);
2. :class:`Binarizer`: ``"youden"`` (per-verifier cut at the estimated best TPR + TNR under a label-free posterior;
   works at any correct rate), ``"prior"`` (quantile matched to ``pi``, the reference's ``"cb"`` rule) or ``"fixed"``
   (one global threshold, reference); missing -> abstain;
3. :class:`VerifierFilter`: vote-rate band plus an optional label-free accuracy floor; never keeps fewer than
   ``min_keep`` verifiers nor fewer than ``min_keep_real`` real ones, and reports the kept set;
4. :func:`select_candidates` with a deterministic tie-break by a continuous score (the reference silently takes the
   lowest index; binary votes tie in ~2/3 of problems).

:class:`Weaver` wraps them (issue 17): verifier groups pooled (:mod:`lightning_ws.weaver.structure`), the
answer-level label model by default (:mod:`lightning_ws.weaver.answer_model`; the paper's binary path with any
:mod:`lightning_ws.labelmodels` model on request), and a label-free guard against majority vote and the pooled mean
score. The **supervision mode** is an explicit argument recorded in every report:

* ``"label_free"``: no labels anywhere;
* ``"few_labels"``: labels of a small dev split of *problems* (clamped in EM, or the prior on the binary path);
* ``"transductive"``: the evaluation labels give the prior, as in every shipped reference config. Use it only to
  reproduce published numbers: it reads the labels of the data being scored.

Lightning-free (numpy + the numpy label models).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from lightning_ws.errors import ConfigError, DataError, LightningWSError
from lightning_ws.io import to_jsonable as _jsonable
from lightning_ws.weaver._numeric import array_digest, nan_mean, quantile_interp
from lightning_ws.weaver.data import VerificationData, unanswered_candidates
from lightning_ws.weaver.structure import pool_groups

__all__ = [
    "MODES",
    "TIE_BREAKS",
    "majority_vote_scores",
    "majority_vote_select",
    "first_sample_select",
    "ScoreNormalizer",
    "Binarizer",
    "VerifierFilter",
    "select_candidates",
    "tie_rate",
    "pool_by_answer",
    "ANSWER_POOLING",
    "UNANSWERED",
    "Weaver",
    "guard_fold_count",
]


_F = TypeVar("_F", bound=Callable[..., Any])


def _one_blas_thread(method: _F) -> _F:
    """Run ``method`` with BLAS limited to one thread (:func:`~lightning_ws.labelmodels.base.single_thread_blas`).

    A Weaver fit is thousands of small dense products and L-BFGS-B steps; BLAS threads cost more to wake than they
    save. With numpy's default 2 threads on 2 cores, the default fit at 500 x 100 x 40 took 10.90 s against 8.51 s
    with one (BENCHMARKS.md, "Session 36"). One thread also makes a user's results those of the benchmarks, which
    run with ``OMP_NUM_THREADS=1``.
    """

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from lightning_ws.labelmodels.base import single_thread_blas

        with single_thread_blas():
            return method(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


#: Supervision modes of :meth:`Weaver.fit`.
MODES = ("label_free", "few_labels", "transductive")
#: Answer-level pooling policies of :class:`Weaver` selection.
ANSWER_POOLING = ("none", "sum")
#: Tie-break policies of :func:`select_candidates` / :class:`Weaver`.
TIE_BREAKS = ("continuous_mean", "mv_frequency", "random", "first")
#: What a candidate without an extracted answer is where another candidate of its problem has one
#: (:class:`Weaver` ``unanswered``).
UNANSWERED = ("exclude", "keep")
#: The guard's evaluator: an answer-level model with the default settings (which estimate, per source, how much of
#: its error the candidates of one answer share: ``dependence="icc"``), fitted on the other folds of the problems
#: (:func:`guard_fold_count`), except that it never takes the likelihood-ratio order (``monotone=False``): where no
#: answer is shared the label model takes it (session 34) and the evaluators keep the unconstrained fit. With both
#: constrained, the guard on PandaLM's pairs with the 20 PAJAMA programs stopped preferring the mean verifier to
#: majority vote, 2.35 points below it (BENCHMARKS.md, issue-17 section, "Session 34").
GUARD_EVALUATOR: dict[str, Any] = {"monotone": False}
#: The guard's second opinion: an answer-level model that weights an answer's candidates by the fixed ``size ** 0.5``
#: instead (``dependence="exponent"``), fitted like the evaluator on the other folds.
GUARD_CHECK_EVALUATOR: dict[str, Any] = {"dependence": "exponent", "monotone": False}
#: Fewest problems on which the guard's split test (:meth:`Weaver._split_check`, ``guard_split``) runs: each half
#: fit then sees at least 16.
SPLIT_MIN_PROBLEMS = 32


def guard_fold_count(num_problems: int) -> int:
    """Number of cross-fitting folds of :class:`Weaver`'s guard for ``num_problems`` problems: ``512 //
    num_problems`` clipped to 2..8 (8 folds up to 64 problems, 4 at 128, 2 from 171 on).

    Each fold's estimates come from an evaluator fitted on the other folds, so more folds fit it on more problems
    ((k - 1) / k of them) at about ``k - 1`` times the cost of one fit on all problems. With few problems the
    halves of a 2-fold split (32 problems at 64) gave estimates that barely tracked the truth; 8 folds keep the
    evaluator's fits on 56 of 64. ``(k - 1) * num_problems`` stays at most 448 below 171 problems, where the guard
    keeps the 2-fold split it always had (until session 27 at every size). The constant 512 is ours (development seeds
    9600-9611 / 9700-9711 at 64 problems, 2, 4 and 8 folds tried; BENCHMARKS.md, issue 17, session 27).
    """
    return int(min(8, max(2, 512 // max(int(num_problems), 1))))


def _kwargs_text(kw: dict[str, Any]) -> str:
    """``AnswerLevelModel`` arguments as the guard's report names them (``{}`` = the defaults)."""
    from lightning_ws.weaver.answer_model import AnswerLevelModel

    full = {"dependence": AnswerLevelModel().dependence, **kw}
    return ", ".join(f"{k}={v!r}" for k, v in full.items())


#: Methods of :class:`Binarizer`.
BINARIZE_METHODS = ("youden", "prior", "fixed")
_NORM_METHODS = ("quantile", "minmax", "winsorize", "none")
_SCOPES = ("global", "per_problem")
MV_NAME = "majority_vote"


# ----------------------------------------------------------------------------------------------------------------
# Step 0: majority-vote pseudo-verifier and simple baselines
# ----------------------------------------------------------------------------------------------------------------

def _answer_id_array(answer_ids: Any) -> np.ndarray:
    """``(P, N)`` integer answer codes from an array or a :class:`VerificationData` (a clear error otherwise)."""
    if isinstance(answer_ids, VerificationData):
        return answer_ids.answer_ids()
    ids = np.asarray(answer_ids)
    if ids.ndim != 2 or (ids.size and ids.dtype.kind not in "iu"):
        raise DataError(f"answer_ids must be a (P, N) integer array of answer codes (-1 = no answer) or a "
                        f"VerificationData; got shape {ids.shape}, dtype {ids.dtype}. VerificationData.answer_ids() "
                        f"gives the codes of a data set.")
    return ids


def majority_vote_scores(answer_ids: np.ndarray | VerificationData) -> np.ndarray:
    """Min-max scaled answer frequency per problem (Weaver's MV pseudo-verifier, arXiv 2506.18203, spec Step 0).

    Each candidate gets ``(f(a_n) - min_a f) / (max_a f - min_a f)`` over the answers ``a`` present in its problem;
    all answers equally frequent (including a single distinct answer) -> 1 for everyone. Candidates without an
    extracted answer (``-1``) get 0 and are not counted as an answer (the paper leaves this open; the reference
    counts ``NO_ANSWER`` as an answer, which lets a crowd of failed extractions become "the majority").

    Args:
        answer_ids: ``(P, N)`` int answer codes per problem, ``-1`` = no answer, or a :class:`VerificationData`
            (its :meth:`~VerificationData.answer_ids`).

    Returns:
        ``(P, N)`` float64 in ``[0, 1]``.
    """
    ids = _answer_id_array(answer_ids)
    out = np.zeros(ids.shape, dtype=np.float64)
    for p in range(ids.shape[0]):
        row = ids[p]
        valid = row >= 0
        if not valid.any():
            continue
        _, inv, counts = np.unique(row[valid], return_inverse=True, return_counts=True)
        lo, hi = counts.min(), counts.max()
        out[p, valid] = 1.0 if hi == lo else (counts[inv] - lo) / (hi - lo)
    return out


def majority_vote_select(answer_ids: np.ndarray | VerificationData, k: int | None = None) -> np.ndarray:
    """Majority vote over the first ``k`` candidates (reference ``"one_sample"`` rule, spec §8).

    The most frequent extracted answer wins (candidates without an answer excluded; equal counts go to the answer
    that appears first) and the first candidate carrying it is selected. A problem without any answer selects 0.

    Args:
        answer_ids: ``(P, N)`` int answer codes per problem, ``-1`` = no answer, or a :class:`VerificationData`.
        k: use only the first ``k`` candidates (default all).

    Returns:
        ``(P,)`` int64 selected candidate indices.
    """
    ids = _answer_id_array(answer_ids)
    k = ids.shape[1] if k is None else int(k)
    if not 1 <= k <= ids.shape[1]:
        raise ConfigError(f"k must lie in [1, {ids.shape[1]}], got {k}.")
    sel = np.zeros(ids.shape[0], dtype=np.int64)
    for p in range(ids.shape[0]):
        row = ids[p, :k]
        best, best_c = -1, 0
        for n, a in enumerate(row):
            if a < 0:
                continue
            c = int((row == a).sum())
            if c > best_c:  # strict: equal counts keep the earlier answer
                best, best_c = n, c
        sel[p] = max(best, 0)
    return sel


def first_sample_select(num_problems: int) -> np.ndarray:
    """The "first sample" baseline: candidate 0 of every problem."""
    return np.zeros(int(num_problems), dtype=np.int64)


# ----------------------------------------------------------------------------------------------------------------
# Step 1: normalisation
# ----------------------------------------------------------------------------------------------------------------

class ScoreNormalizer:
    """Per-verifier score normalisation, fitted once and persisted (Weaver, arXiv 2506.18203, spec Step 2).

    Args:
        method: ``"quantile"`` (default: empirical CDF through ``n_quantiles`` stored quantiles, output in [0, 1];
            scale-free, so one threshold means the same for every verifier), ``"minmax"`` (reference), ``"winsorize"``
            (clip at the ``winsor`` percentiles, then min-max) or ``"none"``.
        scope: ``"global"`` (statistics over all problems, reference ``all_problems``) or ``"per_problem"``
            (each problem's candidates separately; a constant row falls back to the global transform).
        n_quantiles: stored quantiles for ``"quantile"`` (reference uses ``min(n, 100)``; default 101).
        winsor: lower/upper percentiles for ``"winsorize"`` (reference 5 / 95).
        skip_unit_interval: reference quirk: leave verifiers whose values already lie in [0, 1] unchanged
            (default False: it makes a threshold mean different things for different verifiers).

    ``NaN`` stays ``NaN`` (missing -> abstain later; the reference replaces it by 0). A constant verifier maps to 0.5.
    """

    def __init__(self, method: str = "quantile", scope: str = "global", *, n_quantiles: int = 101,
                 winsor: tuple[float, float] = (5.0, 95.0), skip_unit_interval: bool = False) -> None:
        if method not in _NORM_METHODS:
            raise ConfigError(f"normalisation method must be one of {_NORM_METHODS}, got {method!r}.")
        if scope not in _SCOPES:
            raise ConfigError(f"normalisation scope must be one of {_SCOPES}, got {scope!r}.")
        if int(n_quantiles) < 2:
            raise ConfigError(f"n_quantiles must be >= 2, got {n_quantiles}.")
        lo, hi = (float(w) for w in winsor)
        if not 0.0 <= lo < hi <= 100.0:
            raise ConfigError(f"winsor must be two percentiles 0 <= lo < hi <= 100, got {winsor}.")
        self.method, self.scope = method, scope
        self.n_quantiles = int(n_quantiles)
        self.winsor = (lo, hi)
        self.skip_unit_interval = bool(skip_unit_interval)
        self.quantiles_: np.ndarray | None = None  # (V, n_quantiles)
        self.lo_: np.ndarray | None = None  # (V,)
        self.hi_: np.ndarray | None = None
        self.passthrough_: np.ndarray | None = None  # (V,) bool

    def fit(self, scores: np.ndarray) -> ScoreNormalizer:
        """Fit per-verifier statistics on ``(P, N, V)`` scores (NaN ignored)."""
        s = np.asarray(scores, dtype=np.float64)
        if s.ndim != 3:
            raise DataError(f"scores must have shape (P, N, V); got {s.shape}.")
        V = s.shape[2]
        self.quantiles_ = np.zeros((V, self.n_quantiles))
        self.lo_, self.hi_ = np.zeros(V), np.zeros(V)
        self.passthrough_ = np.zeros(V, dtype=bool)
        levels = np.linspace(0.0, 100.0, self.n_quantiles)
        for v in range(V):
            x = s[:, :, v]
            x = x[~np.isnan(x)]
            if x.size == 0:
                raise DataError(f"verifier column {v} has no finite score; drop it before normalising.")
            self.quantiles_[v] = np.percentile(x, levels)
            if self.method == "winsorize":
                self.lo_[v], self.hi_[v] = np.percentile(x, self.winsor)
            else:
                self.lo_[v], self.hi_[v] = x.min(), x.max()
            self.passthrough_[v] = self.method == "none" or (
                self.skip_unit_interval and x.min() >= 0.0 and x.max() <= 1.0)
        return self

    def _check(self, V: int) -> None:
        if self.quantiles_ is None:
            raise ConfigError("ScoreNormalizer is not fitted; call fit(scores) first.")
        if self.quantiles_.shape[0] != V:
            raise DataError(f"normaliser was fitted on {self.quantiles_.shape[0]} verifiers, got {V}.")

    def _global(self, x: np.ndarray, v: int) -> np.ndarray:
        if self.passthrough_[v]:
            return x.copy()
        if self.method == "quantile":
            q = self.quantiles_[v]
            if q[-1] <= q[0]:
                return np.where(np.isnan(x), np.nan, 0.5)
            return np.where(np.isnan(x), np.nan, quantile_interp(np.nan_to_num(x), q, np.linspace(0, 1, q.size)))
        lo, hi = self.lo_[v], self.hi_[v]
        if hi <= lo:
            return np.where(np.isnan(x), np.nan, 0.5)
        return (np.clip(x, lo, hi) - lo) / (hi - lo)

    def transform(self, scores: np.ndarray) -> np.ndarray:
        """Normalise ``(P, N, V)`` scores with the fitted statistics (NaN preserved)."""
        s = np.asarray(scores, dtype=np.float64)
        if s.ndim != 3:
            raise DataError(f"scores must have shape (P, N, V); got {s.shape}.")
        self._check(s.shape[2])
        out = np.empty_like(s)
        for v in range(s.shape[2]):
            g = self._global(s[:, :, v], v)
            if self.scope == "global" or self.passthrough_[v]:
                out[:, :, v] = g
                continue
            x = s[:, :, v]
            if self.method == "quantile":  # within-problem mid-rank in [0, 1]
                r = np.full_like(x, np.nan)
                for p in range(x.shape[0]):
                    ok = ~np.isnan(x[p])
                    xs = x[p, ok]
                    if xs.size >= 2 and xs.max() > xs.min():
                        less = (xs[:, None] > xs[None, :]).sum(1)
                        eq = (xs[:, None] == xs[None, :]).sum(1) - 1
                        r[p, ok] = (less + 0.5 * eq) / (xs.size - 1)
                    else:
                        r[p, ok] = g[p, ok]
                out[:, :, v] = r
            else:
                xx = x
                if self.method == "winsorize":
                    lo_p = np.nanpercentile(np.where(np.isnan(x).all(1, keepdims=True), 0, x), self.winsor[0],
                                            axis=1, keepdims=True)
                    hi_p = np.nanpercentile(np.where(np.isnan(x).all(1, keepdims=True), 0, x), self.winsor[1],
                                            axis=1, keepdims=True)
                    xx = np.clip(x, lo_p, hi_p)
                with np.errstate(all="ignore"):
                    mn = np.nanmin(np.where(np.isnan(xx).all(1, keepdims=True), 0, xx), axis=1, keepdims=True)
                    mx = np.nanmax(np.where(np.isnan(xx).all(1, keepdims=True), 0, xx), axis=1, keepdims=True)
                    row = (xx - mn) / (mx - mn)
                out[:, :, v] = np.where((mx > mn), row, g)
        return out

    def fit_transform(self, scores: np.ndarray) -> np.ndarray:
        """:meth:`fit` then :meth:`transform`."""
        return self.fit(scores).transform(scores)

    def state_dict(self) -> dict[str, Any]:
        """JSON-able fitted state (plain lists)."""
        self._check(0 if self.quantiles_ is None else self.quantiles_.shape[0])
        return {"method": self.method, "scope": self.scope, "n_quantiles": self.n_quantiles,
                "winsor": list(self.winsor), "skip_unit_interval": self.skip_unit_interval,
                "quantiles": self.quantiles_.tolist(), "lo": self.lo_.tolist(), "hi": self.hi_.tolist(),
                "passthrough": self.passthrough_.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.__init__(state["method"], state["scope"], n_quantiles=state["n_quantiles"],
                      winsor=tuple(state["winsor"]), skip_unit_interval=state["skip_unit_interval"])
        self.quantiles_ = np.asarray(state["quantiles"], dtype=np.float64)
        self.lo_ = np.asarray(state["lo"], dtype=np.float64)
        self.hi_ = np.asarray(state["hi"], dtype=np.float64)
        self.passthrough_ = np.asarray(state["passthrough"], dtype=bool)


# ----------------------------------------------------------------------------------------------------------------
# Step 2: binarisation
# ----------------------------------------------------------------------------------------------------------------

def _prior_cut(x: np.ndarray, vals: np.ndarray, pi: float) -> float:
    """Threshold midway between two consecutive distinct values whose positive rate ``mean(x >= cut)`` is closest to
    ``pi`` (never all-positive or all-negative). On continuous scores this is the ``(1 - pi)`` quantile; on discrete
    ones (agreement fractions, counts) a plain quantile would land *on* an atom and make almost every vote positive.
    """
    counts = np.searchsorted(np.sort(x), vals, side="left")  # number of values below each distinct value
    rate = 1.0 - counts[1:] / x.size  # positive rate of a cut between vals[i] and vals[i + 1]
    i = int(np.argmin(np.abs(rate - pi)))
    return float(0.5 * (vals[i] + vals[i + 1]))


def _youden_cut(x: np.ndarray, q: np.ndarray) -> float:
    """Cut midway between two consecutive distinct values of ``x`` maximising the soft ``TPR + TNR - 1`` under the
    label-free posterior ``q`` (falls back to the median-like middle cut when no cut has a positive value)."""
    ok = ~np.isnan(x)
    xv, qv = x[ok], q[ok]
    vals, inv = np.unique(xv, return_inverse=True)
    if vals.size < 2:
        return float(vals[0]) if vals.size else 0.5
    w1 = np.bincount(inv, weights=qv, minlength=vals.size)
    w0 = np.bincount(inv, weights=1.0 - qv, minlength=vals.size)
    tpr = 1.0 - np.cumsum(w1)[:-1] / max(w1.sum(), 1e-12)  # votes 1 for values above cut i
    tnr = np.cumsum(w0)[:-1] / max(w0.sum(), 1e-12)
    j = tpr + tnr - 1.0
    i = int(np.argmax(j)) if j.max() > 0 else (vals.size - 2) // 2
    return float(0.5 * (vals[i] + vals[i + 1]))


class Binarizer:
    """Turn normalised scores into votes ``{-1 abstain, 0 incorrect, 1 correct}`` (Weaver, spec Step 3).

    Args:
        method: ``"youden"`` (per-verifier cut maximising the *estimated* ``TPR + TNR - 1`` under a label-free
            posterior passed to :meth:`fit`; it does not depend on the correct rate, so it works at 2% or 98% correct;
            :class:`Weaver`'s binary path uses it by default), ``"prior"`` (per-verifier threshold = the ``(1 - pi)`` quantile of its scores, so every
            verifier's positive rate is about ``pi``; the reference's ``"cb"`` rule, with ``pi`` from the supervision
            mode instead of always from the evaluation labels) or ``"fixed"`` (one global ``threshold``, reference).
        threshold: global threshold for ``"fixed"`` (reference values 0.01-0.95 per data set; default 0.5).

    Verifiers with at most two distinct values (judges, the MV pseudo-verifier at the extremes) are thresholded
    midway between their values in both methods. With ``"prior"`` the cut always lies midway between two consecutive
    distinct values, the one whose positive rate is closest to ``pi`` (a plain quantile lands on an atom of a
    discrete verifier and turns nearly every vote positive). ``NaN`` -> ``-1`` (abstain, not a hard "no" as in the reference).
    A vote is ``1[x >= tau]``.
    """

    def __init__(self, method: str = "prior", threshold: float = 0.5) -> None:
        if method not in BINARIZE_METHODS:
            raise ConfigError(f"binarisation method must be one of {BINARIZE_METHODS}, got {method!r}.")
        if not 0.0 <= float(threshold) <= 1.0:
            raise ConfigError(f"threshold must lie in [0, 1], got {threshold}.")
        self.method, self.threshold = method, float(threshold)
        self.thresholds_: np.ndarray | None = None

    def fit(self, normalized: np.ndarray, class_balance: float | None = None, *,
            posterior: np.ndarray | None = None) -> Binarizer:
        """Choose per-verifier thresholds on ``(P, N, V)`` normalised scores.

        ``class_balance`` = ``pi`` (P(correct)) for ``"prior"``; ``posterior`` = ``(P, N)`` label-free P(correct)
        estimates (e.g. :class:`~lightning_ws.weaver.ordinal.BinnedDawidSkene`) for ``"youden"``.
        """
        s = np.asarray(normalized, dtype=np.float64)
        if self.method == "youden":
            if posterior is None:
                raise ConfigError("Binarizer('youden') needs posterior=(P, N) label-free P(correct) estimates.")
            q = np.asarray(posterior, dtype=np.float64)
            if q.shape != s.shape[:2]:
                raise DataError(f"posterior must have shape {s.shape[:2]}; got {q.shape}.")
            self.thresholds_ = np.array([_youden_cut(s[:, :, v], q) for v in range(s.shape[2])])
            return self
        if self.method == "prior":
            if class_balance is None or not 0.0 < float(class_balance) < 1.0:
                raise ConfigError(f"Binarizer('prior') needs class_balance pi in (0, 1), got {class_balance!r}.")
        V = s.shape[2]
        th = np.full(V, self.threshold)
        for v in range(V):
            x = s[:, :, v]
            x = x[~np.isnan(x)]
            vals = np.unique(x)
            if vals.size == 2:
                th[v] = 0.5 * (vals[0] + vals[1])
            elif self.method == "prior" and vals.size > 2:
                th[v] = _prior_cut(x, vals, float(class_balance))
        self.thresholds_ = th
        return self

    def transform(self, normalized: np.ndarray) -> np.ndarray:
        """``(P, N, V)`` int64 votes in ``{-1, 0, 1}``."""
        if self.thresholds_ is None:
            raise ConfigError("Binarizer is not fitted; call fit(...) first.")
        s = np.asarray(normalized, dtype=np.float64)
        if s.shape[2] != self.thresholds_.size:
            raise DataError(f"binariser was fitted on {self.thresholds_.size} verifiers, got {s.shape[2]}.")
        votes = (s >= self.thresholds_[None, None, :]).astype(np.int64)
        votes[np.isnan(s)] = -1
        return votes

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state."""
        return {"method": self.method, "threshold": self.threshold,
                "thresholds": None if self.thresholds_ is None else self.thresholds_.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.__init__(state["method"], state["threshold"])
        self.thresholds_ = None if state["thresholds"] is None else np.asarray(state["thresholds"], dtype=np.float64)


# ----------------------------------------------------------------------------------------------------------------
# Step 3: verifier filtering
# ----------------------------------------------------------------------------------------------------------------

class VerifierFilter:
    """Keep informative verifiers (Weaver, spec Step 4), with a guaranteed minimum and a report of the kept set.

    Args:
        band: keep verifiers whose positive-vote rate ``m_v`` (over non-abstain votes) lies strictly inside
            ``band`` (reference ``"all"``: ``(0.1, 0.9)``; ``"small"`` = ``(0.5, 1)``; ``"large"`` = ``(0, 0.5)``).
        min_accuracy: optional floor on each verifier's *label-free* accuracy estimate (``lf_accuracies`` of a first
            label-model fit); ``None`` (default) disables it.
        min_keep: never keep fewer (the reference can drop every verifier); the missing ones are refilled by
            estimated accuracy when available, else by ``|m_v - 0.5|`` (closest to balanced first). Default 3, the
            minimum the moment-matching label model needs.
        min_keep_real: never keep fewer *real* verifiers (not the majority-vote pseudo-verifier; default 1). With
            the reference band and prior-matched votes at a correct rate under 0.1, every real verifier fell out
            and only the agreement column was left (issue 17).
    """

    def __init__(self, band: tuple[float, float] = (0.1, 0.9), min_accuracy: float | None = None,
                 min_keep: int = 3, min_keep_real: int = 1) -> None:
        lo, hi = (float(b) for b in band)
        if not 0.0 <= lo < hi <= 1.0:
            raise ConfigError(f"band must satisfy 0 <= lo < hi <= 1, got {band}.")
        if min_accuracy is not None and not 0.0 <= float(min_accuracy) <= 1.0:
            raise ConfigError(f"min_accuracy must lie in [0, 1] or be None, got {min_accuracy}.")
        if int(min_keep) < 1:
            raise ConfigError(f"min_keep must be >= 1, got {min_keep}.")
        if int(min_keep_real) < 0:
            raise ConfigError(f"min_keep_real must be >= 0, got {min_keep_real}.")
        self.band, self.min_accuracy, self.min_keep = (lo, hi), min_accuracy, int(min_keep)
        self.min_keep_real = int(min_keep_real)
        self.kept_: np.ndarray | None = None
        self.report_: dict[str, Any] = {}

    def fit(self, votes: np.ndarray, accuracies: np.ndarray | None = None,
            names: Sequence[str] | None = None, pseudo: Sequence[str] = (MV_NAME,)) -> VerifierFilter:
        """Decide the kept verifiers from ``(P, N, V)`` (or ``(n, V)``) votes and optional accuracy estimates.

        ``pseudo`` names verifiers that are not real (the majority-vote column): at least ``min_keep_real`` real
        verifiers are always kept (refilled in the same order as ``min_keep``), so the filter never leaves only the
        answer-agreement column.
        """
        L = np.asarray(votes).reshape(-1, np.asarray(votes).shape[-1])
        V = L.shape[1]
        names = list(names) if names is not None else [f"v{j}" for j in range(V)]
        voted = (L >= 0).sum(0)
        rate = np.divide((L == 1).sum(0), voted, out=np.full(V, np.nan), where=voted > 0)
        keep = (rate > self.band[0]) & (rate < self.band[1])
        if self.min_accuracy is not None and accuracies is not None:
            keep &= np.nan_to_num(np.asarray(accuracies, dtype=np.float64), nan=0.0) >= self.min_accuracy
        # refill order: best dev accuracy first, else the rate nearest 0.5 (the same order for both refills)
        if accuracies is not None:
            order = np.argsort(-np.nan_to_num(np.asarray(accuracies, dtype=np.float64), nan=-1.0), kind="stable")
        else:
            order = np.argsort(np.nan_to_num(np.abs(rate - 0.5), nan=1.0), kind="stable")
        refilled: list[str] = []

        def refill(need: int, eligible: np.ndarray) -> None:
            for j in order:
                if need <= 0:
                    break
                if eligible[j] and not keep[j]:
                    keep[j] = True
                    refilled.append(names[j])
                    need -= 1

        refill(min(self.min_keep, V) - int(keep.sum()), np.ones(V, dtype=bool))
        pseudo_names = set(pseudo)
        real = np.array([n not in pseudo_names for n in names])
        refill(min(self.min_keep_real, int(real.sum())) - int((keep & real).sum()), real)
        self.kept_ = np.flatnonzero(keep)
        self.report_ = {"positive_rate": {n: (None if np.isnan(r) else float(r)) for n, r in zip(names, rate)},
                        "kept": [names[j] for j in self.kept_],
                        "dropped": [names[j] for j in range(V) if not keep[j]], "refilled": refilled}
        return self


# ----------------------------------------------------------------------------------------------------------------
# Step 6: selection with an explicit tie-break
# ----------------------------------------------------------------------------------------------------------------

def select_candidates(scores: np.ndarray, *, secondary: np.ndarray | None = None, tie_break: str = "secondary",
                      seed: int = 0, tol: float = 1e-9) -> tuple[np.ndarray, np.ndarray]:
    """Argmax per problem with an explicit tie policy (Weaver, spec Step 7 and §12.3).

    Args:
        scores: ``(P, N)`` primary scores (NaN = never selected unless a whole row is NaN).
        secondary: ``(P, N)`` continuous score that breaks ties among candidates within ``tol`` of the maximum
            (``tie_break="secondary"``); NaN counts as lowest.
        tie_break: ``"secondary"`` (default; needs ``secondary``), ``"random"`` (uniform among the tied, seeded
            generator: same call, same answer) or ``"first"`` (lowest index, the reference's silent behaviour).
            After ``"secondary"``, candidates still tied are resolved by the lowest index (documented, deterministic).
        seed: seed for ``"random"``.
        tol: tie tolerance on the primary score.

    Returns:
        ``(selected (P,) int64, tied (P,) bool)`` where ``tied`` flags problems whose top primary score was tied.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise DataError(f"scores must have shape (P, N); got {s.shape}.")
    if tie_break not in ("secondary", "random", "first"):
        raise ConfigError(f"tie_break must be 'secondary', 'random' or 'first', got {tie_break!r}.")
    if tie_break == "secondary":
        if secondary is None:
            raise ConfigError("tie_break='secondary' needs a (P, N) secondary score; pass secondary=... or use "
                              "tie_break='random'.")
        sec = np.asarray(secondary, dtype=np.float64)
        if sec.shape != s.shape:
            raise DataError(f"secondary must have the shape of scores {s.shape}; got {sec.shape}.")
        sec = np.where(np.isnan(sec), -np.inf, sec)
    prim = np.where(np.isnan(s), -np.inf, s)
    top = prim.max(axis=1, keepdims=True)
    cand = prim >= top - tol
    tied = cand.sum(axis=1) > 1
    if tie_break == "first":
        return cand.argmax(axis=1).astype(np.int64), tied
    if tie_break == "random":
        rng = np.random.default_rng(seed)
        u = rng.random(s.shape)
        return np.where(cand, u, -1.0).argmax(axis=1).astype(np.int64), tied
    return np.where(cand, sec, -np.inf).argmax(axis=1).astype(np.int64), tied


def pool_by_answer(scores: np.ndarray, answer_ids: np.ndarray) -> np.ndarray:
    """``(P, N)``: each candidate's score replaced by the sum of the scores of the candidates of its problem that
    share its extracted answer (answer-level aggregation, Weaver spec §12.3); ``answer_ids == -1`` (no answer) keeps
    its own score. NaN scores count as 0 in the sums."""
    s = np.asarray(scores, dtype=np.float64)
    ids = np.asarray(answer_ids)
    if s.shape != ids.shape or s.ndim != 2:
        raise DataError(f"scores {s.shape} and answer_ids {ids.shape} must both have shape (P, N).")
    same = (ids[:, :, None] == ids[:, None, :]) & (ids[:, :, None] >= 0)
    pooled = (same * np.nan_to_num(s)[:, None, :]).sum(axis=2)
    return np.where(ids >= 0, pooled, s)


def tie_rate(scores: np.ndarray, tol: float = 1e-9) -> float:
    """Fraction of problems whose top score is shared by two or more candidates."""
    s = np.where(np.isnan(np.asarray(scores, dtype=np.float64)), -np.inf, np.asarray(scores, dtype=np.float64))
    return float(((s >= s.max(axis=1, keepdims=True) - tol).sum(axis=1) > 1).mean())


# ----------------------------------------------------------------------------------------------------------------
# The Weaver pipeline
# ----------------------------------------------------------------------------------------------------------------

class Weaver:
    """Weaver verifier-ensemble selection (Saad-Falcon et al., arXiv 2506.18203), made robust to real verifier data.

    ``Weaver(...).fit(data, mode=...)`` fits on the *unlabelled* verifier scores of ``data`` (plus labels only as the
    mode allows); ``score(data) -> (P, N)`` gives P(correct); ``select(data) -> (P,)`` picks one candidate per
    problem. Pipeline:

    1. verifier columns that copy each other (one verifier passed twice, also on another scale) count once
       (``merge_copies``), and columns that cannot rank any problem's candidates are left out (``drop_flat``);
       then :class:`ScoreNormalizer` (quantile by default);
    2. verifier groups from the scores alone (:func:`~lightning_ws.weaver.structure.detect_verifier_groups`:
       near-duplicates and exchangeable verifiers such as repeated draws of one judge), each pooled into one source
       (its mean normalised score) and reported; sources whose scores do not differ between the answers of a problem
       are left out and steps 1-2 redone without them (``drop_answer_blind``); with the answer-level model, each
       problem's shift of a source (a judge more lenient on some problems) is estimated and removed
       (``problem_offsets``);
    3. a label model over the pooled sources:

       * ``"answer_level"`` (default, :class:`~lightning_ws.weaver.answer_model.AnswerLevelModel`): label-free EM
         over which answer of each problem is correct, if any, with answer agreement as a learned generative
         prior (the correct answer's count beta-binomial, the wrong answers a Pitman-Yor partition, both fitted to
         the answer counts; ``agreement="partition"``), binned continuous source scores as evidence, and inverted EM
         fits (sources worse than chance) dropped - no binarisation, no threshold; a count model that the answer
         counts themselves reject (the degenerate "the correct answer is almost never popular" fit a verifier error
         shared by an answer's candidates drags EM to, more than ``count_check`` = 6.64 nats worse than the partition
         prior fitted to the counts alone) is replaced by that fit and EM rerun;
       * any :func:`lightning_ws.labelmodels.make_label_model` name (``"moment_matching"``, ``"dawid_skene"``,
         ``"triplet"``, ``"metal_compat"``): the paper's binary path - the majority-vote pseudo-verifier is added
         as a column, :class:`Binarizer` (``"youden"`` by default: cut at the estimated best ``TPR + TNR`` under a
         label-free :class:`~lightning_ws.weaver.ordinal.BinnedDawidSkene` posterior, which also supplies the
         label-free prior), :class:`VerifierFilter` (never drops every real verifier), then the label model;
    4. the **guard** (``guard=True``, default): choose between the label model, the pooled mean score and
       answer-level majority vote by their *cross-fitted estimated accuracy*: problems are split in
       :func:`guard_fold_count` seeded folds (2 from 171 problems on, up to 8 for 64 or fewer); an answer-level
       model fitted on the other folds estimates P(correct) of every candidate of a fold, under each of its EM
       solutions within ``guard_gap`` nats of its best likelihood, and a selector's estimated accuracy is the mean
       of that estimate at its picks (the label model's picks are those of its fit on all problems). The fallback is the better of majority vote and pooled mean (ties:
       majority vote); the label model replaces it only if its estimated per-problem gain exceeds ``guard_z``
       standard errors under every such solution. The evaluator is the default answer-level model (without the
       likelihood-ratio order, ``monotone=False``), which estimates from the data
       how much of each source's error the candidates of one answer share (a judge fooled the same way by every
       candidate of a wrong answer). A label model kept that way must then pass a *second opinion*
       (``guard_check``): an evaluator that weights an answer's candidates by the fixed ``size ** 0.5`` instead
       must also find it better than majority vote, else majority vote is chosen where both evaluators rank it at
       least as high as the pooled mean, and also where that evaluator ranks it so and finds the label model worse
       than majority vote by ``guard_z`` standard errors (session 49; :meth:`_dependence_check`). Where the guard
       ends with majority vote or the pooled mean, the *mean verifier* (every verifier counted once, not every
       group: the suite's baseline; it differs from the pooled mean only where a verifier group has two or more
       members) replaces it if every evaluator that was fitted ranks the mean verifier higher (session 34; it never
       displaces the label model).
       Where no two candidates of a problem share an answer, a label model kept must also pass a *split test*
       (``guard_split``): refitted on one half of the problems, it must beat the mean verifier on the other half
       under an evaluator fitted there. No gold label is read. The choice, the
       criterion and the estimates are in ``report_["guard"]``. (The evaluators are models of the same family as
       the label model, so the guard catches unstable or noise-driven fits better than systematic
       misspecification; see docs/weaver.md.)
    5. ties broken by continuous evidence (``tie_break``).

    The **supervision mode** is explicit and recorded in every report: ``"label_free"`` (no labels anywhere),
    ``"few_labels"`` (a labelled dev split of problems: their answers are clamped in EM / give the prior),
    ``"transductive"`` (the evaluation labels give the prior - as every shipped reference config; only for
    reproducing published numbers).

    Args:
        label_model: ``"answer_level"`` (default) or a label-model name (see above).
        label_model_kwargs: extra constructor arguments of the label model.
        normalize, normalize_scope: :class:`ScoreNormalizer` method (default ``"quantile"``) and scope.
        binarize, threshold, band, min_accuracy, min_keep: binary path only (:class:`Binarizer` default
            ``"youden"``; ``band`` default ``(0.01, 0.99)``: only near-constant voters are dropped).
        mv_verifier: binary path: add the answer-agreement pseudo-verifier column (default True, as the reference).
        tie_break: ``"continuous_mean"`` (default: pooled mean normalised score), ``"mv_frequency"``, ``"random"``
            (seeded) or ``"first"`` (reference).
        prior_iterations: binary path with ``binarize="prior"``: label-free prior refinements (default 3).
        answer_pooling: binary path: ``"none"`` (default) or ``"sum"`` (rank by the summed posterior of the
            candidates sharing an answer).
        group_verifiers: detect and pool verifier groups (default True).
        group_kwargs: arguments of :func:`~lightning_ws.weaver.structure.detect_verifier_groups`.
        guard: run the label-free guard (default True).
        guard_z: the label model must beat the fallback by this many standard errors of its estimated per-problem
            gain (default 1.0; 0 = keep it whenever its estimate is higher).
        guard_gap: EM solutions of the guard's evaluator within this many nats of the best log-likelihood count as
            plausible, and the label model must win under each (default 2.0).
        guard_check: the guard's second opinion (default True): a label model the guard keeps must also beat
            majority vote under a second evaluator of another dependence specification
            (:data:`GUARD_CHECK_EVALUATOR`: an answer's candidates weighted by the fixed ``size ** 0.5``); if it does
            not, and both evaluators rank majority vote at least as high as the pooled mean, majority vote is
            chosen; where that evaluator ranks majority vote at least as high as the pooled mean and finds the label
            model *worse* than majority vote by ``guard_z`` standard errors under every plausible solution, majority
            vote is chosen whatever the guard's own evaluator ranks (session 49).
        guard_split: the guard's split test (:meth:`_split_check`, session 35): a label model the guard (and its
            second opinion) kept must also beat the mean verifier by ``guard_z`` standard errors when refitted on one
            seeded half of the problems and scored on the other by an evaluator fitted on that half alone; else the
            fallback is chosen (and may give way to the mean verifier as below). ``"auto"`` (default): only where no
            two candidates of a problem share an answer (preference pairs, code, free-form responses: no agreement
            signal, so the label model's weights come from the scores alone and the guard's evaluators share their
            estimation noise); ``True``: on every label-free fit of at least :data:`SPLIT_MIN_PROBLEMS` problems;
            ``False``: never (the behaviour before session 35, and of models saved before). It costs two refits of
            the label model on half the problems. Not in the paper.
        problem_offsets: remove each problem's verifier leniency (a shift of every candidate's score of one
            problem, :mod:`lightning_ws.weaver.leniency`) before the answer-level model reads the sources:
            ``"auto"`` (default since session 21) = on for the answer-level model, off for the binary path; ``True``
            (answer-level model only) or ``False``. The offsets are shrunk random effects, so sources without a
            problem-level shift are left (almost) as they are; ``report_["problem_offsets"]`` gives each source's
            estimated shift variance ``tau2`` (also with ``False``, as a diagnostic). Not in the paper, which fits
            one score distribution per class across problems.
        unanswered: a candidate without an extracted answer (``None``), in a problem where another candidate has
            one: ``"exclude"`` (default) - it is not a candidate of the label model, the guard or its selectors:
            never selected, its scores dropped, the answer counts and shares taken over the answered candidates
            (as majority vote does); ``"keep"`` - it is an answer of its own (the behaviour before session 25, and
            of models saved before). Graders of best-of-N data compare the extracted answer with the reference, so
            a candidate whose answer could not be extracted is wrong; kept, each is a singleton answer whose
            verifier scores (a judge often rates a truncated but well-reasoned response highly) compete with the
            real answers, and the extra singletons distort the answer-count model. On the suite's judge sets with
            5 % of the answers removed, Weaver fell from +14.8 to -11.3 points against max(majority vote, mean
            verifier) on ``judge_draws_prob`` with ``"keep"`` (``benchmarks/diag_weaver_unanswered.py``,
            BENCHMARKS.md). A problem with no extracted answer at all keeps every candidate, each its own answer
            (data without answer extraction, e.g. code). Not in the paper. ``report_["unanswered"]`` counts the
            candidates excluded; in ``few_labels`` / ``transductive`` mode a warning says when the labels score an
            excluded candidate correct.
        merge_copies: verifier columns that copy each other on the fit data - missing on the same candidates and
            with the same ranks everywhere (:func:`~lightning_ws.weaver.structure.verifier_copies`: one verifier
            passed twice under two names, or on two scales such as logits and probabilities, up to a few values the
            other scale rounded together) count as one verifier: the first column of each set stands for it and the
            others are left out before anything else, with a warning, and listed in ``report_["verifier_copies"]``
            (default True; session 41). Counted twice, a copy
            reweighted the mean-verifier baseline and its verifier group and changed how groups formed: Select@1
            moved by up to 4.69 points on the suite's judge sets, and by up to 14.06 with the copy on another scale
            (``benchmarks/diag_weaver_metamorphic.py``); merged, the fit is the one without the copy, bit for bit.
            The copies are left out of later data too, also where they differ there. ``False`` keeps every column.
            Not in the paper.
        drop_flat: verifiers that give every candidate of each problem of the fit data the same score
            (:func:`~lightning_ws.weaver.structure.flat_within_problems`; a verifier that scores one candidate per
            problem is not flat) cannot tell candidates apart; they are left out before anything else, with a
            warning, and listed in ``report_["flat_verifiers"]`` (default True; session 41). Kept, such a column
            still moved the fit: the answer-level model reads it as evidence once per candidate, so it weighs answers
            by their candidate counts, and a per-problem random column appended to the suite's sets moved Select@1
            by up to 23.44 points (``diag_weaver_metamorphic.py --flat``). When every verifier is flat, all are kept
            (with a warning). Not in the paper.
        drop_answer_blind: after grouping, a source (a verifier or a pooled group) whose scores do not differ between
            the answers of a problem more than among the candidates of one answer cannot tell a right answer from a
            wrong one: correctness is a property of the answer
            (:func:`~lightning_ws.weaver.structure.answer_blind_sources`: a one-way analysis of variance with answers
            nested in problems; flagged when not significant, ``p > 0.05``, and the between-answer variance, at 95 %
            confidence, is under 15 % of the within-answer variance and under 35 % of the strongest other source's
            ratio; at least 20 degrees of freedom on both sides, so only where candidates share answers). Its
            verifiers are left out, with a warning, also when scoring later data, and the normaliser and the groups
            are fitted again without them, so the fit is the one without those columns. Listed in
            ``report_["answer_blind_verifiers"]``; every source's test is in ``report_["answer_signal"]``. Never
            every source (default True; session 42). Kept, one column of uniform noise next to the 32 pooled draws of
            a judge moved Select@1 by up to 20.31 points (``diag_weaver_metamorphic.py --noise``): EM fits the noise
            source's score histograms to chance fluctuations and the candidates evidence sums them over an answer's
            candidates. Each condition was needed on small synthetic data, where leaving out modest real verifiers
            cost up to 2.75 points on average (:func:`~lightning_ws.weaver.structure.answer_blind_sources` says
            more). A real source that the data bound that low next to a strong one is left out too, and a random
            opinion per *answer* passes the test, as a real verifier's does. Not in the paper.
        seed: seed of every random choice (dev split, guard folds, random tie-break, label model).
    """

    def __init__(self, label_model: str = "answer_level", *, label_model_kwargs: dict[str, Any] | None = None,
                 normalize: str = "quantile", normalize_scope: str = "global", binarize: str = "youden",
                 threshold: float = 0.5, band: tuple[float, float] = (0.01, 0.99), min_accuracy: float | None = None,
                 min_keep: int = 3, mv_verifier: bool = True, tie_break: str = "continuous_mean",
                 prior_iterations: int = 3, answer_pooling: str = "none", group_verifiers: bool = True,
                 group_kwargs: dict[str, Any] | None = None, guard: bool = True, guard_z: float = 1.0,
                 guard_gap: float = 2.0, guard_check: bool = True, guard_split: bool | str = "auto",
                 problem_offsets: bool | str = "auto", unanswered: str = "exclude", merge_copies: bool = True,
                 drop_flat: bool = True, drop_answer_blind: bool = True, seed: int = 0) -> None:
        if tie_break not in TIE_BREAKS:
            raise ConfigError(f"tie_break must be one of {TIE_BREAKS}, got {tie_break!r}.")
        if int(prior_iterations) < 1:
            raise ConfigError(f"prior_iterations must be >= 1, got {prior_iterations}.")
        if answer_pooling not in ANSWER_POOLING:
            raise ConfigError(f"answer_pooling must be one of {ANSWER_POOLING}, got {answer_pooling!r}.")
        self.label_model_name = label_model
        self.label_model_kwargs = dict(label_model_kwargs or {})
        self.seed = int(seed)
        self.merge_copies = bool(merge_copies)
        self.drop_flat = bool(drop_flat)
        self.drop_answer_blind = bool(drop_answer_blind)
        self._make_lm()  # validate early
        self.normalizer = ScoreNormalizer(normalize, normalize_scope)
        self.binarizer = Binarizer(binarize, threshold)
        self.filter = VerifierFilter(band, min_accuracy, min_keep)
        self.mv_verifier = bool(mv_verifier)
        self.tie_break = tie_break
        self.answer_pooling = answer_pooling
        self.prior_iterations = int(prior_iterations)
        self.group_verifiers = bool(group_verifiers)
        self.group_kwargs = dict(group_kwargs or {})
        self.guard = bool(guard)
        if not float(guard_z) >= 0.0:
            raise ConfigError(f"guard_z must be >= 0, got {guard_z}.")
        self.guard_z = float(guard_z)
        if not float(guard_gap) >= 0.0:
            raise ConfigError(f"guard_gap must be >= 0, got {guard_gap}.")
        self.guard_gap = float(guard_gap)
        self.guard_check = bool(guard_check)
        if guard_split not in (True, False, "auto"):
            raise ConfigError(f"guard_split must be True, False or 'auto', got {guard_split!r}.")
        self.guard_split: bool | str = guard_split
        if problem_offsets not in (True, False, "auto"):
            raise ConfigError(f"problem_offsets must be True, False or 'auto', got {problem_offsets!r}.")
        self.problem_offsets_setting: bool | str = problem_offsets
        if unanswered not in UNANSWERED:
            raise ConfigError(f"unanswered must be one of {UNANSWERED}, got {unanswered!r}.")
        self.unanswered = unanswered
        self.problem_offsets = self.answer_level if problem_offsets == "auto" else bool(problem_offsets)
        if self.problem_offsets and not self.answer_level:
            raise ConfigError("problem_offsets=True needs the answer-level label model (label_model='answer_level'); "
                              f"{label_model!r} reads binarised votes, where a per-problem shift is a threshold "
                              "question. Drop problem_offsets or use the answer-level model.")
        self.seed = int(seed)
        self.offsets_: Any = None  # fitted ProblemOffsets when problem_offsets=True
        self.label_model_ = None
        # (fingerprint of the pooled sources and answer codes, P(correct)) of the last answer-level score(): the
        # offsets' alternations cost a few posteriors per call, and fit, its guard and select score the same data
        self._score_cache: tuple[bytes, np.ndarray] | None = None
        self._norm_cache: tuple[bytes, np.ndarray] | None = None  # (digest of scores and answers, _normalized)
        self.groups_: list[list[int]] | None = None
        self.verifier_names_: list[str] | None = None
        self.input_names_: list[str] | None = None  # the verifiers fit() got, in its order
        self.fit_names_: list[str] | None = None  # the same without copies and flat verifiers (what the fit used)
        self.copies_: list[list[str]] = []  # classes of verifiers that copy each other, first member kept
        self.flat_: list[str] = []  # verifiers constant within every problem of the fit data, left out
        self.answer_blind_: list[str] = []  # verifiers of sources with no between-answer difference, left out
        self.mode_: str | None = None
        self.choice_: str = "label_model"
        self.report_: dict[str, Any] = {}

    @property
    def answer_level(self) -> bool:
        """Whether the label model is the answer-level model (no binarisation)."""
        return self.label_model_name == "answer_level"

    # -- helpers ------------------------------------------------------------------------------------------------
    def _make_lm(self) -> Any:
        if self.answer_level:
            from lightning_ws.weaver.answer_model import AnswerLevelModel

            return AnswerLevelModel(**self.label_model_kwargs)
        from lightning_ws.labelmodels import make_label_model

        return make_label_model(self.label_model_name, num_classes=2, seed=self.seed, **self.label_model_kwargs)

    def _clone(self) -> Weaver:
        w = Weaver(self.label_model_name, label_model_kwargs=self.label_model_kwargs,
                   normalize=self.normalizer.method, normalize_scope=self.normalizer.scope,
                   binarize=self.binarizer.method, threshold=self.binarizer.threshold, band=self.filter.band,
                   min_accuracy=self.filter.min_accuracy, min_keep=self.filter.min_keep, mv_verifier=self.mv_verifier,
                   tie_break=self.tie_break, prior_iterations=self.prior_iterations,
                   answer_pooling=self.answer_pooling, group_verifiers=self.group_verifiers,
                   group_kwargs=self.group_kwargs, guard=False, guard_z=self.guard_z, guard_gap=self.guard_gap,
                   guard_check=self.guard_check, guard_split=self.guard_split,
                   problem_offsets=self.problem_offsets_setting, unanswered=self.unanswered,
                   merge_copies=False, drop_flat=False, drop_answer_blind=False,  # fitted on the kept columns: a
                   seed=self.seed)  # subset's coincidences stay apart
        return w

    @staticmethod
    def _flat(votes: np.ndarray) -> np.ndarray:
        return votes.reshape(-1, votes.shape[2])

    def _aligned(self, data: VerificationData) -> VerificationData:
        """``data`` with the fitted verifiers in the fitted order, matched by name: another column order is
        reordered, extra verifiers are left out (with a warning); a missing one is an error."""
        if self.verifier_names_ is None:
            raise ConfigError("Weaver is not fitted; call fit(data, mode=...) first.")
        if MV_NAME in data.verifier_names and not self.answer_level and self.mv_verifier:
            raise DataError(f"data already has a verifier named {MV_NAME!r}; rename it or pass mv_verifier=False.")
        names = list(data.verifier_names)
        fit_names = self.fit_names_ if self.fit_names_ is not None else self.input_names_
        if names == fit_names:
            return data
        missing = [n for n in fit_names if n not in names]
        if missing:
            raise DataError(f"data lacks verifier(s) {missing} that Weaver was fitted on (fitted: "
                            f"{self.input_names_}; data: {names}). Score with the same verifiers, or refit on the "
                            f"ones you have.")
        extra = [n for n in names if n not in self.input_names_]
        if extra:
            warnings.warn(f"data has verifier(s) {extra} that Weaver was not fitted on; they are left out of the "
                          f"scores. Refit to use them.", UserWarning, stacklevel=3)
        return data.select_verifiers(fit_names)  # copies and flat verifiers found at fit time are left out too

    def _excluded(self, data: VerificationData) -> np.ndarray:
        """``(P, N)`` True for a candidate without an extracted answer in a problem where another candidate has one,
        with ``unanswered="exclude"`` (all False with ``"keep"``)."""
        if self.unanswered == "keep":
            return np.zeros((data.num_problems, data.num_candidates), dtype=bool)
        return unanswered_candidates(data.answer_ids())

    def _normalized(self, data: VerificationData) -> np.ndarray:
        """``(P, N, V)`` scores under the fitted normaliser; an excluded unanswered candidate (:meth:`_excluded`) gets
        NaN everywhere, so that it is a padding slot to the label model and no selector picks it. The last result is
        kept (keyed by a digest of the scores and answers; :meth:`fit` clears it): a fit, its guard and ``select``
        normalise the same data several times."""
        ids = data.answer_ids()
        key = _fingerprint(data.scores, ids)
        if self._norm_cache is None or self._norm_cache[0] != key:
            norm = self.normalizer.transform(data.scores)
            out = self._excluded(data)
            self._norm_cache = (key, np.where(out[:, :, None], np.nan, norm) if out.any() else norm)
        return self._norm_cache[1].copy()

    def _sources(self, data: VerificationData) -> tuple[np.ndarray, np.ndarray]:
        """``(pooled sources (P, N, G), pooled mean (P, N))`` with the fitted normaliser and groups (a group's score
        is NaN only where all its members are: so an excluded candidate is NaN everywhere)."""
        pooled = pool_groups(self._normalized(data), self.groups_)
        return pooled, nan_mean(pooled, axis=2)

    def _mean_verifier(self, data: VerificationData) -> np.ndarray:
        """``(P, N)`` nan-mean of the normalised verifiers, each column once (no groups): the suite's *mean
        verifier*; NaN for an excluded unanswered candidate."""
        return nan_mean(self._normalized(data), axis=2)

    def _binary_columns(self, data: VerificationData, pooled: np.ndarray) -> np.ndarray:
        if not self.mv_verifier:
            return pooled
        return np.concatenate([pooled, majority_vote_scores(data.answer_ids())[:, :, None]], axis=2)

    def _fit_structure(self, data: VerificationData) -> dict[str, Any]:
        """Fit the normaliser and the verifier groups (``groups_``) on ``data``'s columns; returns the group report."""
        from lightning_ws.weaver.structure import detect_verifier_groups

        names = list(data.verifier_names)
        norm = self.normalizer.fit_transform(data.scores)
        if self.group_verifiers and len(names) > 1:
            self.groups_, group_report = detect_verifier_groups(
                norm, names, context=majority_vote_scores(data.answer_ids())[:, :, None], raw=data.scores,
                **self.group_kwargs)
        else:
            self.groups_ = [[j] for j in range(len(names))]
            group_report = {"groups": [], "n_sources": len(names), "n_verifiers": len(names), "disabled": True}
        return group_report

    @staticmethod
    def _source_names(names: list[str], groups: list[list[int]]) -> list[str]:
        """A source's name: its verifier's, or ``group[<first member>+<others>]`` for a pooled group."""
        return [names[g[0]] if len(g) == 1 else f"group[{names[g[0]]}+{len(g) - 1}]" for g in groups]

    # -- fit ----------------------------------------------------------------------------------------------------
    @_one_blas_thread
    def fit(self, data: VerificationData, mode: str = "label_free", *, dev_problems: Sequence[int] | None = None,
            dev_fraction: float | None = None) -> Weaver:
        """Fit the pipeline on ``data`` in an explicit supervision mode.

        Args:
            data: verification data (its verifier scores are used without labels).
            mode: ``"label_free"``, ``"few_labels"`` or ``"transductive"`` (see the class docstring).
            dev_problems: for ``"few_labels"``: indices of the labelled dev problems in ``data``.
            dev_fraction: for ``"few_labels"`` without ``dev_problems``: draw this fraction of problems (seeded).

        Raises:
            ConfigError: unknown mode or a mode without what it needs. DataError: labels missing for the mode.
        """
        import time

        from lightning_ws.weaver.structure import answer_blind_sources, flat_within_problems, verifier_copies

        t0 = time.perf_counter()
        self._score_cache = self._norm_cache = None
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {mode!r}.")
        if MV_NAME in data.verifier_names and not self.answer_level and self.mv_verifier:
            raise DataError(f"data already has a verifier named {MV_NAME!r}; rename it or pass mv_verifier=False.")
        P = data.num_problems
        dev_idx: np.ndarray | None = None
        correct = None
        if mode == "few_labels":
            correct = data.require_labels("mode='few_labels'")
            if dev_problems is None:
                if dev_fraction is None or not 0.0 < float(dev_fraction) < 1.0:
                    raise ConfigError("mode='few_labels' needs dev_problems=[...] or dev_fraction in (0, 1).")
                n_dev = max(1, int(round(float(dev_fraction) * P)))
                dev_idx = np.sort(np.random.default_rng(self.seed).choice(P, n_dev, replace=False))
            else:
                dev_idx = np.unique(np.asarray(dev_problems, dtype=np.int64))
                if dev_idx.size == 0 or dev_idx.min() < 0 or dev_idx.max() >= P:
                    raise ConfigError(f"dev_problems must be non-empty indices in [0, {P}).")
        elif dev_problems is not None or dev_fraction is not None:
            raise ConfigError(f"dev_problems/dev_fraction only apply to mode='few_labels', not {mode!r}.")
        elif mode == "transductive":
            correct = data.require_labels("mode='transductive'")
        input_names = list(data.verifier_names)
        self.copies_ = ([[input_names[j] for j in c] for c in verifier_copies(data.scores)]
                        if self.merge_copies else [])
        if self.copies_:
            said = "; ".join(f"{c[1:]} copy {c[0]!r}" for c in self.copies_)
            warnings.warn(f"verifier(s) that copy another on every candidate (the same scores, or the same ranks on "
                          f"another scale): {said}. Each such set counts as one verifier, its first; the others are "
                          f"left out, also when scoring later data. Drop the repeated columns to silence this; "
                          f"verifiers meant to be independent cannot be told apart on this data (pass "
                          f"merge_copies=False to keep them all).", UserWarning, stacklevel=2)
        repeated = {m for c in self.copies_ for m in c[1:]}
        kept = [j for j, n in enumerate(input_names) if n not in repeated]
        self.flat_ = []
        if self.drop_flat:
            flat = flat_within_problems(data.scores[:, :, kept])
            if flat.any() and not flat.all():
                self.flat_ = [input_names[j] for j, f in zip(kept, flat) if f]
                warnings.warn(f"verifier(s) {self.flat_} give every candidate of each problem the same score, so they "
                              f"cannot tell a problem's candidates apart; they are left out, also when scoring later "
                              f"data (a reward model or judge that saw only the question would do this). Pass "
                              f"drop_flat=False to keep them.", UserWarning, stacklevel=2)
                kept = [j for j, f in zip(kept, flat) if not f]
            elif flat.all():
                warnings.warn("no verifier gives two candidates of one problem different scores: the verifiers cannot "
                              "rank candidates, and selection rests on answer agreement alone. Check the scores.",
                              UserWarning, stacklevel=2)
        if len(kept) < len(input_names):
            data = data.select_verifiers([input_names[j] for j in kept])
        names = list(data.verifier_names)
        group_report = self._fit_structure(data)
        self.answer_blind_, blind_test = [], None
        if self.drop_answer_blind:  # the test is reported for every source; never every source is left out
            flag, test = answer_blind_sources(self._sources(data)[0], data.answer_ids())
            blind_test = {name: {"F": float(test["F"][i]), "df1": int(test["df1"][i]), "df2": int(test["df2"][i]),
                                 "p": float(test["p"][i]), "theta": float(test["theta"][i]),
                                 "theta_upper": float(test["theta_upper"][i])}
                          for i, name in enumerate(self._source_names(names, self.groups_))}
            if flag.any():
                self.answer_blind_ = [names[j] for g, f in zip(self.groups_, flag) if f for j in g]
                warnings.warn(f"verifier(s) {self.answer_blind_} score the answers of a problem alike on average (their "
                              f"scores differ between answers no more than among the candidates of one answer: not "
                              f"significant, and the between-answer variance is confidently small, also next to "
                              f"another source's; report_['answer_signal']): they cannot tell a right answer from a "
                              f"wrong one on this data, and the answer-level model would fit their noise; they are "
                              f"left out, also when scoring later data. Pass drop_answer_blind=False to keep them.",
                              UserWarning, stacklevel=2)
                data = data.select_verifiers([n for n in names if n not in self.answer_blind_])
                names = list(data.verifier_names)
                group_report = self._fit_structure(data)
        self.input_names_, self.fit_names_ = input_names, names
        source_names = self._source_names(names, self.groups_)
        out = self._excluded(data)
        if correct is not None and (out & correct).any():
            warnings.warn(f"{int((out & correct).sum())} candidates without an extracted answer are labelled correct; "
                          f"with unanswered='exclude' (default) Weaver never selects such a candidate where another "
                          f"candidate of its problem has an answer. If your grader scores responses whose answer "
                          f"could not be extracted, pass Weaver(unanswered='keep').", UserWarning, stacklevel=2)
        report: dict[str, Any] = {"mode": mode, "label_model": self.label_model_name, "n_problems": P,
                                  "n_candidates": data.num_candidates, "verifier_groups": group_report,
                                  "sources": source_names, "verifier_copies": self.copies_,
                                  "flat_verifiers": self.flat_, "answer_blind_verifiers": self.answer_blind_,
                                  "answer_signal": blind_test,
                                  "n_dev_problems": 0 if dev_idx is None else int(dev_idx.size),
                                  "unanswered": {"policy": self.unanswered, "excluded_candidates": int(out.sum()),
                                                 "problems": int(out.any(axis=1).sum())}}
        pooled, pm = self._sources(data)
        if self.answer_level:
            fit_args = (mode, correct, dev_idx, source_names)
            if self.problem_offsets:
                pooled, fit_report, report["problem_offsets"] = self._fit_with_offsets(data, pooled, *fit_args)
                report.update(fit_report)
            else:
                self.offsets_ = None
                report.update(self._fit_answer_level(data, pooled, *fit_args))
                report["problem_offsets"] = self._leniency_diagnostic(data, pooled, source_names)
            self.verifier_names_ = source_names
        else:
            report.update(self._fit_binary(data, pooled, mode, correct, dev_idx, source_names))
        self.mode_ = mode
        self.choice_ = "label_model"
        if dev_idx is not None:
            report["dev_problems"] = dev_idx.tolist()
        if self.guard:
            report["guard"] = self._run_guard(data, pooled, pm, mode, dev_idx)
            self.choice_ = report["guard"]["choice"]
        report["fit_seconds"] = time.perf_counter() - t0
        self.report_ = report
        return self

    def _fit_answer_level(self, data: VerificationData, pooled: np.ndarray, mode: str, correct: np.ndarray | None,
                          dev_idx: np.ndarray | None, source_names: list[str]) -> dict[str, Any]:
        lm = self._make_lm()
        ids = data.answer_ids()
        gamma = known = None
        if mode == "transductive":  # the label-derived analogue of the reference's oracle class balance
            gamma = float(np.clip(correct.any(axis=1).mean(), 1e-3, 1 - 1e-3))
        elif mode == "few_labels":
            known = np.full(ids.shape, np.nan)
            known[dev_idx] = correct[dev_idx]
        lm.fit(ids, pooled, gamma=gamma, known=known)
        self.label_model_ = lm
        return {"class_balance": lm.report_["class_balance"],
                "class_balance_source": {"label_free": "estimated", "few_labels": "estimated_with_dev_labels",
                                         "transductive": "estimated_with_oracle_coverage"}[mode],
                "answer_model": {k: v for k, v in lm.report_.items()},
                "source_auroc_estimate": dict(zip(source_names, lm.source_auroc().tolist()))}

    def _fit_with_offsets(self, data: VerificationData, pooled: np.ndarray, mode: str, correct: np.ndarray | None,
                          dev_idx: np.ndarray | None, source_names: list[str]
                          ) -> tuple[np.ndarray, dict[str, Any], dict[str, Any]]:
        """``problem_offsets=True``: fit the answer-level model, then alternate (answer posteriors, shrunk
        per-problem offsets on the normal scale, refit on the adjusted sources mapped back to their own scale)
        ``ProblemOffsets.iterations`` times, stopping where no source shows a shift
        (:mod:`lightning_ws.weaver.leniency`). Returns the adjusted sources of ``data`` (as :meth:`score` computes
        them; :meth:`score` of ``data`` is seeded with their P(correct)), the label model's fit report and the
        offsets' report entry."""
        from lightning_ws.weaver.leniency import ProblemOffsets

        ids = data.answer_ids()
        self.offsets_ = ProblemOffsets().fit(pooled)
        z0 = self.offsets_.normal_scale(pooled)
        cur = pooled
        fit_report = self._fit_answer_level(data, cur, mode, correct, dev_idx, source_names)
        for _ in range(self.offsets_.iterations):
            adj, stats = self.offsets_.adjust(z0, self.label_model_.predict_proba(ids, cur), ids)
            if all(st["tau2"] == 0.0 for st in stats):  # no shift to remove: keep the fit
                break
            cur = self.offsets_.source_scale(adj)
            fit_report = self._fit_answer_level(data, cur, mode, correct, dev_idx, source_names)
        adjusted, stats = self.offsets_.transform(pooled, ids, self.label_model_, normal=z0)
        self._score_cache = (_fingerprint(pooled, ids), self.label_model_.predict_proba(ids, adjusted))
        return adjusted, fit_report, {"enabled": True, "iterations": self.offsets_.iterations,
                                      "per_source": dict(zip(source_names, stats))}

    def _leniency_diagnostic(self, data: VerificationData, pooled: np.ndarray, source_names: list[str]
                             ) -> dict[str, Any]:
        """``problem_offsets=False``: the per-problem score shift the offset model would estimate under the fitted
        label model (``tau2`` = its variance on the normal scale; 0 = none detected), reported, not used."""
        from lightning_ws.weaver.leniency import ProblemOffsets

        ids = data.answer_ids()
        po = ProblemOffsets().fit(pooled)
        _, stats = po.adjust(po.normal_scale(pooled), self.label_model_.predict_proba(ids, pooled), ids)
        return {"enabled": False, "per_source": {n: {"tau2": st["tau2"], "offset_sd": st["offset_sd"]}
                                                 for n, st in zip(source_names, stats)}}

    def _fit_binary(self, data: VerificationData, pooled: np.ndarray, mode: str, correct: np.ndarray | None,
                    dev_idx: np.ndarray | None, source_names: list[str]) -> dict[str, Any]:
        from lightning_ws.weaver.ordinal import BinnedDawidSkene

        cols = self._binary_columns(data, pooled)
        names = source_names + ([MV_NAME] if self.mv_verifier else [])
        need = int(getattr(self._make_lm(), "min_lfs", 1))
        if len(names) < need:
            raise DataError(f"label model {self.label_model_name!r} needs at least {need} sources but the data give "
                            f"{len(names)} ({names}) after pooling verifier groups {[len(g) for g in self.groups_]}"
                            + (f" and leaving out copies {self.copies_}, flat verifiers {self.flat_} and "
                               f"answer-blind verifiers {self.answer_blind_}"
                               if self.copies_ or self.flat_ or self.answer_blind_ else "")
                            + "; use Weaver('answer_level') (default), which works with a single source, or "
                              "group_verifiers=False.")
        P, N = data.num_problems, data.num_candidates
        pi: float | None
        if mode == "transductive":
            pi = float(correct.mean())
        elif mode == "few_labels":
            y = correct[dev_idx].ravel()
            pi = float((y.sum() + 1.0) / (y.size + 2.0))
        else:
            pi = None
        dev_y = None if dev_idx is None else correct[dev_idx].ravel().astype(np.int64)
        ds = BinnedDawidSkene().fit(pooled.reshape(P * N, -1), pi=pi)
        posterior = ds.predict_proba(pooled.reshape(P * N, -1)).reshape(P, N)

        def run(pi_bin: float | None, cb: Any) -> Any:
            self.binarizer.fit(cols, pi_bin, posterior=posterior)
            votes = self.binarizer.transform(cols)
            acc = None
            if self.filter.min_accuracy is not None:
                acc = self._make_lm().fit(self._flat(votes), cb,
                                          dev_L=None if dev_idx is None else self._flat(votes[dev_idx]),
                                          dev_y=dev_y, lf_names=names).lf_accuracies
            self.filter.fit(votes, acc, names)
            kv = votes[:, :, self.filter.kept_]
            return self._make_lm().fit(self._flat(kv), cb, dev_L=None if dev_idx is None else self._flat(kv[dev_idx]),
                                       dev_y=dev_y, lf_names=[names[j] for j in self.filter.kept_])

        if pi is not None:
            lm = run(pi, np.array([1.0 - pi, pi]))
            history = [pi]
        elif self.binarizer.method == "prior":  # legacy: iterate pi from 0.5
            pi_b, history = 0.5, []
            for _ in range(self.prior_iterations):
                lm = run(pi_b, "estimated")
                est = float(np.clip(lm.class_balance_[1], 0.02, 0.98))
                history.append(est)
                if abs(est - pi_b) < 0.01:
                    break
                pi_b = est
        else:  # youden votes need no prior; the label model estimates its own (metal_compat: uniform, as the reference)
            lm = run(None, "estimated")
            history = [float(lm.class_balance_[1])]
        self.label_model_ = lm
        self.verifier_names_ = names
        return {"class_balance": float(lm.class_balance_[1]),
                "class_balance_source": "estimated" if pi is None else "given", "prior_history": history,
                "class_balance_binned_ds": float(ds.pi_),
                "thresholds": dict(zip(names, self.binarizer.thresholds_.tolist())),
                **dict(self.filter.report_.items()),
                "label_model_fit": {k: v for k, v in lm.fit_report_.items()
                                    if isinstance(v, (int, float, str, bool))}}

    # -- guard --------------------------------------------------------------------------------------------------
    def _run_guard(self, data: VerificationData, pooled: np.ndarray, pm: np.ndarray, mode: str,
                   dev_idx: np.ndarray | None) -> dict[str, Any]:
        P = data.num_problems
        n_folds = guard_fold_count(P)
        split_text = ""
        if self.guard_split:
            where = " where no two candidates of a problem share an answer" if self.guard_split == "auto" else ""
            split_text = ("; a label model kept must also beat mean_verifier by z standard errors in a split test "
                          f"(refitted on one half of the problems, scored on the other by an evaluator fitted "
                          f"there){where}, else the fallback is chosen")
        criterion = (f"{n_folds}-fold cross-fitted estimated accuracy (folds: 512 // problems, clipped to "
                     "2..8): each selector's mean P(correct) at its picks, P(correct) from an answer-level model "
                     "fitted label-free on the other folds - under every EM "
                     f"solution within {self.guard_gap} nats of its best likelihood (fits the data cannot tell apart), "
                     "taking the lowest estimate; the label model's picks are those of its fit on all problems "
                     "(refits on 32-problem halves were unstable). The better of "
                     "majority_vote and pooled_mean (ties: majority_vote) is the fallback; the label model replaces "
                     f"it only if its estimated per-problem gain exceeds z = {self.guard_z} standard errors under "
                     "every such solution"
                     + f" (evaluator: AnswerLevelModel({_kwargs_text(GUARD_EVALUATOR)}))"
                     + ("; a label model kept must also beat majority_vote by z standard errors under a second "
                        f"evaluator, AnswerLevelModel({_kwargs_text(GUARD_CHECK_EVALUATOR)}), else majority_vote is "
                        "chosen when both evaluators rank it at least as high as pooled_mean, or when the second "
                        "ranks it so and finds the label model worse than majority_vote by z standard errors"
                        if self.guard_check else "")
                     + split_text
                     + "; a majority_vote or pooled_mean choice gives way to mean_verifier (each verifier once) where "
                       "every evaluator fitted ranks mean_verifier higher")
        if P < 8:
            return {"choice": "label_model", "criterion": criterion, "estimated_accuracy": None,
                    "note": f"{P} problems are too few for the cross-fitted guard; the label model is used."}
        perm = np.random.default_rng(self.seed + 7919).permutation(P)
        cuts = [(i * P) // n_folds for i in range(n_folds + 1)]
        folds = [np.sort(perm[cuts[i]: cuts[i + 1]]) for i in range(n_folds)]
        ids = data.answer_ids()
        names = ("label_model", "pooled_mean", "majority_vote", "mean_verifier")
        full_lm = self.select_with(data, "label_model")
        full_mv = select_candidates(self._mean_verifier(data), tie_break="first")[0]  # per problem: subsets agree
        fold_picks = [{"label_model": full_lm[here],
                       "pooled_mean": select_candidates(pm[here], tie_break="first")[0],
                       "majority_vote": _mv_pick(ids[here], pm[here]),
                       "mean_verifier": full_mv[here]} for here in folds]
        per_problem = self._guard_estimates(ids, pooled, folds, fold_picks, GUARD_EVALUATOR)
        ests = [{k: float(v.mean()) for k, v in pp.items()} for pp in per_problem]
        est = {k: min(e[k] for e in ests) for k in names}  # the lowest estimate over the plausible fits
        simple = "majority_vote" if est["majority_vote"] >= est["pooled_mean"] - 1e-12 else "pooled_mean"
        gains, ses, ok = self._label_model_gain(per_problem, simple)
        choice = "label_model" if ok else simple
        check: dict[str, Any] | None = None
        if ok and self.guard_check:
            choice, check = self._dependence_check(ids, pooled, folds, fold_picks, simple)
        split = self._split_check(data, pooled, ids, full_mv, mode) if choice == "label_model" else None
        if split is not None and split["applied"] and not split["passed"]:
            choice = simple
        # the label model's fate is decided; a simple selector chosen gives way to the mean verifier (each verifier
        # once) where every evaluator that ranked the simple selectors ranks the mean verifier above it
        replaced = None
        if choice != "label_model" and est["mean_verifier"] > est[choice] + 1e-12 and (
                check is None or check["estimated_accuracy"]["mean_verifier"]
                > check["estimated_accuracy"][choice] + 1e-12):
            replaced, choice = choice, "mean_verifier"
        return {"choice": choice, "criterion": criterion, "estimated_accuracy": est,
                "estimated_accuracy_per_solution": ests, "label_model_gain": gains, "gain_standard_error": ses,
                "z": self.guard_z, "fold_sizes": [int(len(f)) for f in folds], "dependence_check": check,
                "split_check": split, "mean_verifier_replaced": replaced}

    def _split_check(self, data: VerificationData, pooled: np.ndarray, ids: np.ndarray, mean_verifier: np.ndarray,
                     mode: str) -> dict[str, Any]:
        """Sample-split test of a label model the guard kept, where no answer is shared (``guard_split``).

        Without answer agreement the label model learns its source weights from the verifier scores alone, and the
        guard's evaluators, fitted on most of the same problems by a model of the same family, inherit the same
        estimation noise: they rate the label model's picks highly because they share its weights. Here the
        problems are split into two seeded halves; the label model is refitted (label-free, without the guard) on
        one half and picks on the other, where an evaluator (:data:`GUARD_EVALUATOR`) fitted on that other half
        alone estimates P(correct) at its picks and at the mean verifier's (``mean_verifier``: its ``(P,)`` picks).
        Neither the refit nor its weights have
        seen the scored half, so a label model that wins only through noise in its weights does not win there. It
        passes if its estimated per-problem gain over the mean verifier, over both halves and under the lowest of
        each half's plausible evaluator solutions, exceeds ``guard_z`` standard errors. A label model that cannot be
        refitted on a half (an error from the refit) fails, with the error in the report. The refits see half the
        problems, so the test is conservative: it gives up some real gains (BENCHMARKS.md, issue 17, session 35).
        """
        from lightning_ws.weaver.answer_model import AnswerLevelModel, no_shared_answer

        P = data.num_problems
        reason = None
        if self.guard_split is False:
            reason = "guard_split=False"
        elif mode != "label_free":
            reason = f"mode {mode!r}: the refit on half the problems is label-free only"
        elif P < SPLIT_MIN_PROBLEMS:
            reason = f"{P} problems: the split test needs at least {SPLIT_MIN_PROBLEMS}"
        elif self.guard_split == "auto" and not no_shared_answer(ids):
            reason = ("candidates of a problem share an answer (guard_split='auto' runs the test only where none "
                      "does)")
        if reason is not None:
            return {"applied": False, "reason": reason}
        perm = np.random.default_rng(self.seed + 104729).permutation(P)
        halves = (np.sort(perm[: P // 2]), np.sort(perm[P // 2:]))
        diffs = []
        for fit_on, scored in (halves, halves[::-1]):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the half fit's warnings repeat what the full fit said
                    half = self._clone().fit(data.subset(fit_on), "label_free")
                lm = half.select_with(data.subset(scored), "label_model")
            except (LightningWSError, ValueError, np.linalg.LinAlgError) as err:  # e.g. too few sources on a half
                return {"applied": True, "passed": False, "half_sizes": [len(h) for h in halves],
                        "error": f"the label model could not be refitted on half of the problems ({err}); the guard "
                                 "takes its fallback"}
            mv = mean_verifier[scored]
            evaluator = AnswerLevelModel(**GUARD_EVALUATOR).fit(ids[scored], pooled[scored])
            rows = np.arange(len(scored))
            per_solution = [q[rows, lm] - q[rows, mv] for q in
                            evaluator.plausible_probas(ids[scored], pooled[scored], max_loglik_gap=self.guard_gap)]
            diffs.append(min(per_solution, key=lambda d: float(d.mean())))
        d = np.concatenate(diffs)
        gain, se = float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))
        return {"applied": True, "gain_vs_mean_verifier": gain, "standard_error": se,
                "passed": bool(gain > self.guard_z * se + 1e-12), "half_sizes": [len(h) for h in halves]}

    def _dependence_check(self, ids: np.ndarray, pooled: np.ndarray, folds: list[np.ndarray],
                          fold_picks: list[dict[str, np.ndarray]], fallback: str = "majority_vote"
                          ) -> tuple[str, dict[str, Any]]:
        """Second opinion on a label model the guard kept: does it still beat majority vote under an evaluator
        with another specification of how an answer's candidates share their verifier error?

        The guard's evaluator (:data:`GUARD_EVALUATOR`) estimates each source's within-answer correlation from the
        data and counts an answer's candidates by their effective number; where that estimate is off, the evaluator
        can agree with the label model it is meant to check (both are fitted the same way). The check refits the
        cross-fitted evaluator with :data:`GUARD_CHECK_EVALUATOR` (candidates counted as the fixed ``size **
        0.5``). If that evaluator's estimated accuracy (the lowest over its plausible solutions) ranks majority vote
        at least as high as the pooled mean, the guard's own evaluator does too (``fallback``, the guard's choice
        between the two, is majority vote), and the label model does not beat majority vote by ``guard_z``
        standard errors under every plausible solution, majority vote is chosen. Majority vote is also chosen where
        this evaluator ranks it at least as high as the pooled mean and finds the label model *worse* than majority
        vote by ``guard_z`` standard errors under every plausible solution, whatever the guard's own evaluator ranks
        between majority vote and the pooled mean (session 49: on 64 problems x 16 candidates a label model whose
        count prior had collapsed - the correct answer almost never the popular one - was kept at 28 points below
        majority vote, because the guard's evaluator, fitted the same way, rated the pooled mean above majority vote
        while this one rated the label model 2 standard errors below it). Otherwise the label model is kept (so the
        check can only replace the label model by majority vote, never by the pooled mean; since session 34
        :meth:`_run_guard` may then replace majority vote by the mean verifier). Until session 19 the two evaluators
        were the other way round; until session 20 the check's evaluator alone ranked majority vote against the
        pooled mean (numbers in BENCHMARKS.md)."""
        pp2 = self._guard_estimates(ids, pooled, folds, fold_picks, GUARD_CHECK_EVALUATOR)
        est = {k: min(float(pp[k].mean()) for pp in pp2) for k in pp2[0]}
        gains, ses, beats = self._label_model_gain(pp2, "majority_vote")
        mv_top = est["majority_vote"] >= est["pooled_mean"] - 1e-12  # this evaluator's own simple choice
        mv_fallback = fallback == "majority_vote" and mv_top
        # session 49: clearly worse than majority vote here (by guard_z standard errors under every plausible
        # solution) - majority vote whatever the guard's own evaluator ranks between it and the pooled mean
        worse = all(g < -self.guard_z * se - 1e-12 for g, se in zip(gains, ses))
        choice = "majority_vote" if ((mv_fallback and not beats) or (mv_top and worse)) else "label_model"
        return choice, {"evaluator": dict(GUARD_CHECK_EVALUATOR), "estimated_accuracy": est, "guard_fallback": fallback,
                        "label_model_gain_vs_majority_vote": gains, "gain_standard_error": ses,
                        "label_model_worse_than_majority_vote": worse, "choice": choice}

    def _label_model_gain(self, per_problem: list[dict[str, np.ndarray]], baseline: str
                          ) -> tuple[list[float], list[float], bool]:
        """Per plausible evaluator solution, the label model's mean estimated gain over ``baseline`` and its standard
        error; and whether the gain exceeds ``guard_z`` standard errors under every solution."""
        gains, ses = [], []
        for pp in per_problem:
            diff = pp["label_model"] - pp[baseline]
            gains.append(float(diff.mean()))
            ses.append(float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0)
        return gains, ses, all(g > self.guard_z * se + 1e-12 for g, se in zip(gains, ses))

    def _guard_estimates(self, ids: np.ndarray, pooled: np.ndarray, folds: list[np.ndarray],
                         fold_picks: list[dict[str, np.ndarray]], evaluator_kwargs: dict[str, Any]
                         ) -> list[dict[str, np.ndarray]]:
        """Per plausible evaluator solution: ``{selector: (P,) P(correct) at its picks}``, each fold scored by an
        answer-level model (``evaluator_kwargs``) fitted label-free on the other folds."""
        from lightning_ws.weaver.answer_model import AnswerLevelModel

        P = ids.shape[0]
        names = tuple(fold_picks[0])
        per_problem: list[dict[str, np.ndarray]] = []  # one dict per plausible evaluator solution
        for f, here in enumerate(folds):
            other = np.sort(np.concatenate([g for j, g in enumerate(folds) if j != f]))
            evaluator = AnswerLevelModel(**evaluator_kwargs).fit(ids[other], pooled[other])
            qs = evaluator.plausible_probas(ids[here], pooled[here], max_loglik_gap=self.guard_gap)
            for s_i, q in enumerate(qs):
                if s_i >= len(per_problem):  # a solution index new in this fold: earlier folds copy their best one
                    per_problem.append({k: v.copy() for k, v in per_problem[0].items()} if per_problem
                                       else {k: np.full(P, np.nan) for k in names})
                for k, sel in fold_picks[f].items():
                    per_problem[s_i][k][here] = q[np.arange(len(here)), sel]
            for s_i in range(len(qs), len(per_problem)):  # fewer plausible solutions here: reuse the best one
                for k in names:
                    per_problem[s_i][k][here] = per_problem[0][k][here]
        for pp in per_problem[1:]:  # solutions first seen in a later fold: fill the earlier folds from the best
            for k in names:
                pp[k] = np.where(np.isnan(pp[k]), per_problem[0][k], pp[k])
        return per_problem

    # -- inference ----------------------------------------------------------------------------------------------
    @_one_blas_thread
    def score(self, data: VerificationData) -> np.ndarray:
        """``(P, N)`` float64 P(correct) from the fitted label model (answer level: P(its answer is correct)).
        Verifiers are matched to the fitted ones by name (another order is fine; extra ones are left out)."""
        data = self._aligned(data)
        pooled, _ = self._sources(data)
        if self.answer_level:
            ids = data.answer_ids()
            key = _fingerprint(pooled, ids)
            if self._score_cache is None or self._score_cache[0] != key:
                if self.offsets_ is not None:
                    pooled = self.offsets_.transform(pooled, ids, self.label_model_)[0]
                self._score_cache = (key, self.label_model_.predict_proba(ids, pooled))
            return self._score_cache[1].copy()
        votes = self.binarizer.transform(self._binary_columns(data, pooled))[:, :, self.filter.kept_]
        proba = self.label_model_.predict_proba(self._flat(votes))[:, 1].reshape(votes.shape[0], votes.shape[1])
        # a padding slot (no answer, no score) abstains everywhere and would get the class prior: it is no candidate;
        # nor is an excluded unanswered candidate (its pooled scores are NaN)
        return np.where(data.present() & ~self._excluded(data), proba, 0.0)

    @_one_blas_thread
    def secondary_scores(self, data: VerificationData) -> np.ndarray:
        """``(P, N)`` continuous tie-break score of the configured policy (NaN for ``random``/``first``)."""
        data = self._aligned(data)
        if self.tie_break == "continuous_mean":
            return self._sources(data)[1]
        if self.tie_break == "mv_frequency":
            return majority_vote_scores(data.answer_ids())
        return np.full((data.num_problems, data.num_candidates), np.nan)

    @_one_blas_thread
    def select_with(self, data: VerificationData, selector: str) -> np.ndarray:
        """``(P,)`` picks of one of the guard's selectors: ``"label_model"``, ``"pooled_mean"`` (mean over the
        verifier groups), ``"mean_verifier"`` (mean over the verifiers, each once; ties to the first candidate) or
        ``"majority_vote"`` (most frequent answer, ties by its mean pooled score; within it the candidate with the
        best pooled score)."""
        if selector not in ("label_model", "pooled_mean", "majority_vote", "mean_verifier"):
            raise ConfigError("selector must be 'label_model', 'pooled_mean', 'mean_verifier' or 'majority_vote', "
                              f"got {selector!r}.")
        data = self._aligned(data)
        if selector == "pooled_mean":
            return select_candidates(self._sources(data)[1], tie_break="first")[0]
        if selector == "majority_vote":
            return _mv_pick(data.answer_ids(), self._sources(data)[1])
        if selector == "mean_verifier":
            return select_candidates(self._mean_verifier(data), tie_break="first")[0]
        s = self.score(data)
        if self.answer_pooling == "sum" and not self.answer_level:
            s = pool_by_answer(s, data.answer_ids())
        if self.tie_break in ("random", "first"):
            return select_candidates(s, tie_break=self.tie_break, seed=self.seed)[0]
        return select_candidates(s, secondary=self.secondary_scores(data), tie_break="secondary")[0]

    @_one_blas_thread
    def select(self, data: VerificationData, *, return_ties: bool = False
               ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """``(P,)`` selected candidate per problem by the guard's choice (and, with ``return_ties``, the ``(P,)`` mask
        of problems whose top label-model score was tied)."""
        data = self._aligned(data)
        sel = self.select_with(data, self.choice_)
        if not return_ties:
            return sel
        s = self.score(data)
        top = np.where(np.isnan(s), -np.inf, s)
        tied = (top >= top.max(axis=1, keepdims=True) - 1e-9).sum(axis=1) > 1
        return sel, tied

    # -- persistence --------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``path/weaver.json`` (config, fitted transforms, report) and the label model; no pickle."""
        from lightning_ws.io import save_json

        if self.label_model_ is None:
            raise ConfigError("Weaver is not fitted; nothing to save.")
        folder = Path(path)
        state: dict[str, Any] = {
            "format_version": 2, "label_model": self.label_model_name, "label_model_kwargs": self.label_model_kwargs,
            "normalizer": self.normalizer.state_dict(), "mv_verifier": self.mv_verifier, "tie_break": self.tie_break,
            "prior_iterations": self.prior_iterations, "answer_pooling": self.answer_pooling,
            "group_verifiers": self.group_verifiers, "group_kwargs": self.group_kwargs, "groups": self.groups_,
            "guard": self.guard, "guard_z": self.guard_z, "guard_gap": self.guard_gap,
            "guard_check": self.guard_check, "guard_split": self.guard_split, "choice": self.choice_, "seed": self.seed,
            "problem_offsets": self.problem_offsets_setting, "unanswered": self.unanswered,
            "merge_copies": self.merge_copies,
            "offsets": None if self.offsets_ is None else self.offsets_.state_dict(),
            "verifier_names": self.verifier_names_, "input_names": self.input_names_, "mode": self.mode_,
            "copies": self.copies_, "flat": self.flat_, "drop_flat": self.drop_flat,
            "answer_blind": self.answer_blind_, "drop_answer_blind": self.drop_answer_blind,
            "report": self.report_}
        if self.answer_level:
            state["answer_model"] = self.label_model_.state_dict()
        else:
            self.label_model_.save(folder / "label_model")
            state.update({"binarizer": self.binarizer.state_dict(),
                          "filter": {"band": list(self.filter.band), "min_accuracy": self.filter.min_accuracy,
                                     "min_keep": self.filter.min_keep, "kept": self.filter.kept_.tolist()}})
        save_json(folder / "weaver.json", _jsonable(state))
        return folder

    @classmethod
    def load(cls, path: str | Path) -> Weaver:
        """Load what :meth:`save` wrote."""
        from lightning_ws.io import load_json

        folder = Path(path)
        st = load_json(folder / "weaver.json")
        if st.get("format_version") != 2:
            raise DataError(f"{folder / 'weaver.json'} has format_version {st.get('format_version')}; this version "
                            f"reads 2. Refit and save again.")
        kw: dict[str, Any] = {}
        if "filter" in st:
            kw = {"band": tuple(st["filter"]["band"]), "min_accuracy": st["filter"]["min_accuracy"],
                  "min_keep": st["filter"]["min_keep"]}
        w = cls(st["label_model"], label_model_kwargs=st["label_model_kwargs"], mv_verifier=st["mv_verifier"],
                tie_break=st["tie_break"], prior_iterations=st["prior_iterations"],
                answer_pooling=st["answer_pooling"], group_verifiers=st["group_verifiers"],
                group_kwargs=st["group_kwargs"], guard=st["guard"], guard_z=st["guard_z"], guard_gap=st["guard_gap"],
                guard_check=st.get("guard_check", True), guard_split=st.get("guard_split", False),
                problem_offsets=st.get("problem_offsets", False),
                unanswered=st.get("unanswered", "keep"), merge_copies=st.get("merge_copies", False),
                drop_flat=st.get("drop_flat", False), drop_answer_blind=st.get("drop_answer_blind", False),
                seed=st["seed"], **kw)
        w.normalizer.load_state_dict(st["normalizer"])
        w.groups_ = [list(g) for g in st["groups"]]
        w.choice_, w.verifier_names_, w.input_names_ = st["choice"], st["verifier_names"], st["input_names"]
        w.copies_, w.flat_ = [list(c) for c in st.get("copies", [])], list(st.get("flat", []))
        w.answer_blind_ = list(st.get("answer_blind", []))  # absent before session 42
        dropped = {n for c in w.copies_ for n in c[1:]} | set(w.flat_) | set(w.answer_blind_)
        w.fit_names_ = [n for n in w.input_names_ if n not in dropped]
        w.mode_, w.report_ = st["mode"], st["report"]
        if w.answer_level:
            from lightning_ws.weaver.answer_model import AnswerLevelModel

            w.label_model_ = AnswerLevelModel.from_state_dict(st["answer_model"])
            if st.get("offsets") is not None:
                from lightning_ws.weaver.leniency import ProblemOffsets

                w.offsets_ = ProblemOffsets.from_state_dict(st["offsets"])
        else:
            from lightning_ws.labelmodels import LabelModel

            w.binarizer.load_state_dict(st["binarizer"])
            w.filter.kept_ = np.asarray(st["filter"]["kept"], dtype=np.int64)
            w.label_model_ = LabelModel.load(folder / "label_model")
        return w


def _fingerprint(pooled: np.ndarray, answer_ids: np.ndarray) -> bytes:
    """A digest of the pooled sources and answer codes that :meth:`Weaver.score` is asked about."""
    return array_digest(np.asarray(pooled, dtype=np.float64), np.asarray(answer_ids, dtype=np.int64))


def _mv_pick(answer_ids: np.ndarray, secondary: np.ndarray) -> np.ndarray:
    """Answer-level majority vote: the most frequent answer (ties: higher mean ``secondary`` of its candidates, then
    first seen); within it the candidate with the highest ``secondary``. No answer anywhere -> best ``secondary``."""
    ids = np.asarray(answer_ids)
    sec = np.where(np.isnan(secondary), -np.inf, np.asarray(secondary, dtype=np.float64))
    out = np.zeros(ids.shape[0], dtype=np.int64)
    for p in range(ids.shape[0]):
        row = ids[p]
        valid = row >= 0
        if not valid.any():
            out[p] = int(np.argmax(sec[p]))
            continue
        codes, counts = np.unique(row[valid], return_counts=True)
        best = codes[counts == counts.max()]
        if best.size > 1:
            means = [np.mean(np.where(np.isinf(sec[p, row == a]), 0.0, sec[p, row == a])) for a in best]
            best = best[[int(np.argmax(means))]]
        members = np.flatnonzero(row == best[0])
        out[p] = int(members[np.argmax(sec[p, members])])
    return out
