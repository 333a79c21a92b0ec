"""A label-free two-class latent model over *binned continuous* verifier scores (Dawid-Skene EM with ordinal outputs).

Weaver (arXiv 2506.18203) binarises every verifier before its label model, which throws away most of a continuous
reward model's information and forces a threshold choice. :class:`BinnedDawidSkene` keeps ``bins`` quantile bins per
source instead (a binary verdict keeps its two values) and fits, by EM and without labels,

    P(correct) = pi,   P(bin_k = b | correct = y) = theta[k, y, b],

with sources conditionally independent given correctness (pool dependent verifiers first:
:mod:`lightning_ws.weaver.structure`). The posterior log-odds ``logit(pi) + sum_k log theta[k,1,b_k] / theta[k,0,b_k]``
is continuous enough that it rarely ties, and the fitted ``theta`` gives each source's label-free class-conditional
score distribution, from which :meth:`youden_thresholds` picks the cut that maximises the estimated ``TPR + TNR``
(a threshold that does not depend on the correct rate, unlike matching the vote rate to ``pi``).

EM starts from the posterior ``q = mean normalised score`` (so "higher score = more likely correct" breaks the label
swap symmetry), uses add-``smoothing`` counts, and stops when the log-likelihood gains less than ``tol`` per item.
Missing scores (``NaN``) are skipped. Lightning-free (numpy).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lightning_ws.errors import ConfigError, DataError
from lightning_ws.weaver._numeric import nan_mean

__all__ = ["BinnedDawidSkene", "bin_scores"]


#: A column with at most ``_ATOM_FACTOR * bins`` distinct values is a few *atoms* (pooled verdicts, heuristic flags);
#: two neighbouring atoms closer than ``_ATOM_GAP`` times the column's mean gap between atoms are one level.
_ATOM_FACTOR = 4
_ATOM_GAP = 0.25


def _atom_edges(col: np.ndarray, vals: np.ndarray, bins: int) -> np.ndarray | None:
    """Edges for a column of few distinct values where some neighbours are near-equal, or ``None``.

    Two verdict judges pooled into one source score a pair where they disagree 0.4925 / 0.5075 (their quantile
    mid-ranks differ with their tie rates): one level, "the judges disagree". A quantile edge at 0.5 split it into two
    bins, and label-free EM learned to follow one judge there with posterior 0.999 (PandaLM pairs, session 33,
    ``benchmarks/bench_weaver_preferences.py``). Near-equal atoms are merged into one level and no edge falls inside
    a level; with more levels than ``bins``, the quantile edges move to the nearest boundary between levels.
    """
    if vals.size < 3 or vals.size > _ATOM_FACTOR * bins:
        return None
    gaps = np.diff(vals)
    close = gaps < _ATOM_GAP * gaps.mean()
    if not close.any():
        return None
    between = np.flatnonzero(~close)  # boundary i lies between vals[i] and vals[i + 1]
    mids = 0.5 * (vals[between] + vals[between + 1])
    if mids.size + 1 <= bins:
        return mids
    q = np.quantile(col, np.linspace(0, 1, bins + 1)[1:-1])
    return np.unique(mids[np.abs(mids[:, None] - q[None, :]).argmin(axis=0)])


def bin_scores(scores: np.ndarray, bins: int = 10) -> tuple[np.ndarray, list[np.ndarray]]:
    """Bin each column of ``(n, K)`` scores by its own quantiles: ``(n, K)`` int bins (``-1`` = NaN) and the edges.

    A column with at most ``bins`` distinct values gets one bin per value (edges midway between them). A column of a
    few distinct values (at most ``4 * bins``) where some neighbours are much closer than the others (under a quarter
    of the mean gap) treats each run of near-equal values as one level, and no edge splits a level (see
    :func:`_atom_edges`; since session 33).
    """
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 2:
        raise DataError(f"scores must have shape (n, K); got {x.shape}.")
    out = np.full(x.shape, -1, dtype=np.int64)
    edges: list[np.ndarray] = []
    for k in range(x.shape[1]):
        col = x[:, k]
        ok = ~np.isnan(col)
        srt = np.sort(col[ok])  # sorted once: its distinct values and its quantiles (the same as of the column)
        vals = srt[np.r_[True, srt[1:] != srt[:-1]]] if srt.size else srt
        atoms = _atom_edges(srt, vals, bins)
        if atoms is not None:
            e = atoms
        elif vals.size <= bins:
            e = 0.5 * (vals[1:] + vals[:-1])
        else:
            e = np.unique(np.quantile(srt, np.linspace(0, 1, bins + 1)[1:-1]))
        edges.append(e)
        out[ok, k] = np.searchsorted(e, col[ok], side="right")
    return out, edges


class BinnedDawidSkene:
    """Label-free EM over binned scores (see the module docstring).

    Args:
        bins: quantile bins per continuous source (default 10).
        smoothing: add-``smoothing`` pseudo-counts per bin and class (default 1.0).
        max_iter, tol: EM stopping rule (defaults 200, 1e-7 mean log-likelihood gain).
        prior_clip: the estimated ``pi`` is kept in ``[prior_clip, 1 - prior_clip]`` (default 0.005).
    """

    def __init__(self, bins: int = 10, *, smoothing: float = 1.0, max_iter: int = 200, tol: float = 1e-7,
                 prior_clip: float = 0.005) -> None:
        if int(bins) < 2 or smoothing <= 0 or int(max_iter) < 1 or not 0.0 < prior_clip < 0.5:
            raise ConfigError("need bins >= 2, smoothing > 0, max_iter >= 1 and 0 < prior_clip < 0.5.")
        self.bins, self.smoothing, self.max_iter, self.tol = int(bins), float(smoothing), int(max_iter), float(tol)
        self.prior_clip = float(prior_clip)
        self.edges_: list[np.ndarray] | None = None
        self.log_theta_: list[np.ndarray] | None = None  # per source (2, B_k)
        self.pi_: float | None = None
        self.report_: dict[str, Any] = {}

    def _bin(self, scores: np.ndarray) -> np.ndarray:
        x = np.asarray(scores, dtype=np.float64)
        out = np.full(x.shape, -1, dtype=np.int64)
        for k, e in enumerate(self.edges_):
            ok = ~np.isnan(x[:, k])
            out[ok, k] = np.searchsorted(e, x[ok, k], side="right")
        return out

    def _llr(self, b: np.ndarray) -> np.ndarray:
        z = np.zeros(b.shape[0])
        for k, lt in enumerate(self.log_theta_):
            ok = b[:, k] >= 0
            z[ok] += (lt[1] - lt[0])[b[ok, k]]
        return z

    def fit(self, scores: np.ndarray, init: np.ndarray | None = None, pi: float | None = None) -> BinnedDawidSkene:
        """Fit on ``(n, K)`` scores (higher = more likely correct). ``init``: ``(n,)`` starting P(correct) in [0, 1]
        (default the nan-mean of the scores' within-column ranks); ``pi``: a fixed prior instead of estimating it."""
        x = np.asarray(scores, dtype=np.float64)
        b, self.edges_ = bin_scores(x, self.bins)
        n, K = b.shape
        sizes = [e.size + 1 for e in self.edges_]
        if init is None:
            ranks = np.full(x.shape, np.nan)
            for k in range(K):
                ok = b[:, k] >= 0
                ranks[ok, k] = (b[ok, k] + 0.5) / sizes[k]
            q = np.nan_to_num(nan_mean(ranks, axis=1), nan=0.5)  # an item without any score starts at 0.5
        else:
            q = np.clip(np.asarray(init, dtype=np.float64).reshape(-1), 0.0, 1.0)
            if q.size != n:
                raise DataError(f"init has {q.size} entries for {n} items.")
        prev = -np.inf
        it = 0
        for it in range(1, self.max_iter + 1):
            p1 = float(np.clip(q.mean() if pi is None else pi, self.prior_clip, 1 - self.prior_clip))
            lts = []
            for k in range(K):
                ok = b[:, k] >= 0
                c1 = np.bincount(b[ok, k], weights=q[ok], minlength=sizes[k]) + self.smoothing
                c0 = np.bincount(b[ok, k], weights=1 - q[ok], minlength=sizes[k]) + self.smoothing
                lts.append(np.log(np.stack([c0 / c0.sum(), c1 / c1.sum()])))
            self.log_theta_, self.pi_ = lts, p1
            z = np.log(p1 / (1 - p1)) + self._llr(b)
            q = 1.0 / (1.0 + np.exp(-z))
            # mean log-likelihood: log(pi * L1 + (1 - pi) * L0) per item
            l0 = np.zeros(n)
            for k, lt in enumerate(lts):
                ok = b[:, k] >= 0
                l0[ok] += lt[0][b[ok, k]]
            ll = float(np.mean(l0 + np.log(1 - p1) + np.logaddexp(0.0, z)))
            if ll - prev < self.tol:
                break
            prev = ll
        if pi is None:
            self.pi_ = float(np.clip(q.mean(), self.prior_clip, 1 - self.prior_clip))
        self.report_ = {"iterations": it, "pi": self.pi_, "log_likelihood": prev}
        return self

    def log_odds(self, scores: np.ndarray) -> np.ndarray:
        """``(n,)`` posterior log-odds of "correct"."""
        if self.log_theta_ is None:
            raise ConfigError("BinnedDawidSkene is not fitted; call fit(scores) first.")
        x = np.asarray(scores, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.log_theta_):
            raise DataError(f"expected (n, {len(self.log_theta_)}) scores, got {x.shape}.")
        return np.log(self.pi_ / (1 - self.pi_)) + self._llr(self._bin(x))

    def predict_proba(self, scores: np.ndarray) -> np.ndarray:
        """``(n,)`` posterior P(correct)."""
        return 1.0 / (1.0 + np.exp(-self.log_odds(scores)))

    def source_llr(self) -> list[np.ndarray]:
        """Per source, the log-likelihood ratio of each bin (increasing in the score for a useful source)."""
        if self.log_theta_ is None:
            raise ConfigError("BinnedDawidSkene is not fitted; call fit(scores) first.")
        return [lt[1] - lt[0] for lt in self.log_theta_]

    def youden_thresholds(self) -> tuple[np.ndarray, np.ndarray]:
        """Per source, the bin edge maximising the estimated ``TPR + TNR - 1`` and that maximum (``J``).

        A source whose best ``J`` is not positive gets threshold ``NaN`` (it carries no usable evidence).
        """
        if self.log_theta_ is None:
            raise ConfigError("BinnedDawidSkene is not fitted; call fit(scores) first.")
        th, js = np.full(len(self.edges_), np.nan), np.zeros(len(self.edges_))
        for k, (e, lt) in enumerate(zip(self.edges_, self.log_theta_)):
            if e.size == 0:
                continue
            t0, t1 = np.exp(lt[0]), np.exp(lt[1])
            # cut after bin i: positives = bins > i
            tpr = 1.0 - np.cumsum(t1)[:-1]
            tnr = np.cumsum(t0)[:-1]
            j = tpr + tnr - 1.0
            i = int(np.argmax(j))
            js[k] = float(j[i])
            if j[i] > 0:
                th[k] = float(e[i])
        return th, js
