"""Answer-level latent model: label-free EM over "which answer of this problem is correct, if any".

Weaver (arXiv 2506.18203) treats every (problem, candidate) pair as an independent item and lets a naive-Bayes label
model decide each one. Two facts of verifier data break that: correctness is a function of the *extracted answer*
(candidates that share an answer are all right or all wrong), and at most one distinct answer of a problem is
correct. :class:`AnswerLevelModel` uses both. For problem ``p`` with distinct answers ``a`` (a candidate without an
extracted answer is its own singleton answer), the latent ``z_p`` is the correct answer or "none":

    P(z_p = a) = gamma * softmax_a(beta * log share_a),   P(z_p = none) = 1 - gamma,
    P(bin of source k for answer a | a is / is not z_p) = f1[k, b] / f0[k, b],

where ``share_a`` is the fraction of the problem's candidates giving answer ``a`` (``beta = 0``: agreement carries
no evidence; ``beta = 1``: the generator is calibrated; large ``beta``: majority vote), and source ``k``'s
observation for answer ``a`` is the binned mean of the (pooled, normalised) source scores of ``a``'s candidates. EM
learns ``gamma``, ``beta`` (grid search in ``[0, beta_max]``) and the binned class-conditional score distributions
``f1, f0`` without labels, so how much to trust agreement versus each verifier is estimated from the data instead of
being fixed. The posterior ``P(z_p = a)`` is each candidate's P(correct); selection takes the most probable answer.

Lightning-free (numpy).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lightning_ws.errors import ConfigError, DataError
from lightning_ws.weaver.ordinal import bin_scores

__all__ = ["AnswerGroups", "AnswerLevelModel"]


class AnswerGroups:
    """The distinct answers of every problem: group index per candidate, per-group problem, size and share."""

    def __init__(self, answer_ids: np.ndarray) -> None:
        ids = np.asarray(answer_ids)
        if ids.ndim != 2:
            raise DataError(f"answer_ids must have shape (P, N); got {ids.shape}.")
        P, N = ids.shape
        # a candidate without an answer is its own answer: give it a code past every real one
        codes = np.where(ids >= 0, ids, ids.max(initial=0) + 1 + np.arange(N)[None, :])
        key = np.arange(P)[:, None] * (codes.max() + 1) + codes
        uniq, inv, counts = np.unique(key.ravel(), return_inverse=True, return_counts=True)
        self.group = inv.reshape(P, N)  # (P, N) group index, groups sorted by problem
        self.problem = (uniq // (codes.max() + 1)).astype(np.int64)  # (G,)
        self.size = counts.astype(np.float64)
        self.share = self.size / N
        self.starts = np.flatnonzero(np.r_[True, self.problem[1:] != self.problem[:-1]])
        self.num_problems, self.num_candidates = P, N

    @property
    def num_groups(self) -> int:
        """``G``, the number of (problem, answer) groups."""
        return int(self.problem.size)

    def group_mean(self, x: np.ndarray) -> np.ndarray:
        """``(G, K)`` nan-mean over each group's candidates of ``(P, N, K)`` scores (NaN if all missing)."""
        s = np.asarray(x, dtype=np.float64)
        flat = s.reshape(-1, s.shape[2])
        g = self.group.ravel()
        ok = ~np.isnan(flat)
        num = np.zeros((self.num_groups, s.shape[2]))
        den = np.zeros_like(num)
        np.add.at(num, g, np.where(ok, flat, 0.0))
        np.add.at(den, g, ok.astype(np.float64))
        with np.errstate(all="ignore"):
            return np.where(den > 0, num / den, np.nan)

    def segment_logsumexp(self, v: np.ndarray) -> np.ndarray:
        """``(P,)`` log-sum-exp of ``(G,)`` values within each problem."""
        m = np.maximum.reduceat(v, self.starts)
        return m + np.log(np.add.reduceat(np.exp(v - m[self.problem]), self.starts))


class AnswerLevelModel:
    """Label-free EM over the correct answer of each problem (see the module docstring).

    Args:
        bins: quantile bins of each source's per-answer mean score (default 8; sources with few distinct values keep
            one bin per value).
        smoothing: add-``smoothing`` counts per bin and class (default 1.0).
        beta_max: largest agreement exponent searched (default 6; grid step 0.1).
        max_iter, tol: EM stopping rule (defaults 100, 1e-6 gain of the mean log-likelihood per problem).
        use_agreement: let the answer share enter the prior (default True); False = verifiers only.
    """

    def __init__(self, bins: int = 8, *, smoothing: float = 1.0, beta_max: float = 6.0, max_iter: int = 100,
                 tol: float = 1e-6, use_agreement: bool = True) -> None:
        if int(bins) < 2 or smoothing <= 0 or beta_max < 0 or int(max_iter) < 1:
            raise ConfigError("need bins >= 2, smoothing > 0, beta_max >= 0 and max_iter >= 1.")
        self.bins, self.smoothing, self.beta_max = int(bins), float(smoothing), float(beta_max)
        self.max_iter, self.tol, self.use_agreement = int(max_iter), float(tol), bool(use_agreement)
        self.edges_: list[np.ndarray] | None = None
        self.llr_: list[np.ndarray] | None = None
        self.beta_: float | None = None
        self.gamma_: float | None = None
        self.report_: dict[str, Any] = {}

    def _bins(self, means: np.ndarray) -> np.ndarray:
        out = np.full(means.shape, -1, dtype=np.int64)
        for k, e in enumerate(self.edges_):
            ok = ~np.isnan(means[:, k])
            out[ok, k] = np.searchsorted(e, means[ok, k], side="right")
        return out

    def _posterior(self, groups: AnswerGroups, b: np.ndarray, beta: float, gamma: float
                   ) -> tuple[np.ndarray, np.ndarray, float]:
        ls = np.log(groups.share) * (beta if self.use_agreement else 0.0)
        prior = ls - groups.segment_logsumexp(ls)[groups.problem]
        ev = np.zeros(groups.num_groups)
        for k, llr in enumerate(self.llr_):
            ok = b[:, k] >= 0
            ev[ok] += llr[b[ok, k]]
        v = np.log(gamma) + prior + ev
        lz = np.logaddexp(groups.segment_logsumexp(v), np.log1p(-gamma))
        r = np.exp(v - lz[groups.problem])
        return r, ev, float(lz.mean())

    def fit(self, answer_ids: np.ndarray, sources: np.ndarray, init: np.ndarray | None = None,
            gamma0: float = 0.8) -> AnswerLevelModel:
        """Fit on ``(P, N)`` answer codes (``-1`` = none) and ``(P, N, K)`` source scores (higher = better).

        ``init``: optional ``(P, N)`` score whose within-problem softmax (per answer mean) starts EM; default the mean
        of the sources.
        """
        groups = AnswerGroups(answer_ids)
        s = np.asarray(sources, dtype=np.float64)
        if s.ndim != 3 or s.shape[:2] != groups.group.shape:
            raise DataError(f"sources must have shape {groups.group.shape + ('K',)}; got {s.shape}.")
        means = groups.group_mean(s)
        b, self.edges_ = bin_scores(means, self.bins)
        sizes = [e.size + 1 for e in self.edges_]
        with np.errstate(all="ignore"):
            start = np.nanmean(s, axis=2) if init is None else np.asarray(init, dtype=np.float64)
        g0 = groups.group_mean(start[:, :, None])[:, 0]
        g0 = np.nan_to_num((g0 - np.nanmean(g0)) / (np.nanstd(g0) + 1e-12))
        v = 2.0 * g0 + (np.log(groups.share) if self.use_agreement else 0.0)
        r = gamma0 * np.exp(v - groups.segment_logsumexp(v)[groups.problem])
        grid = np.round(np.arange(0.0, self.beta_max + 1e-9, 0.1), 10)
        ls = np.log(groups.share)
        prev, it, beta, gamma = -np.inf, 0, 1.0, 0.8
        for it in range(1, self.max_iter + 1):
            # M-step
            gamma = float(np.clip(np.add.reduceat(r, groups.starts).mean(), 1e-3, 1 - 1e-3))
            self.llr_ = []
            for k in range(b.shape[1]):
                ok = b[:, k] >= 0
                c1 = np.bincount(b[ok, k], weights=r[ok], minlength=sizes[k]) + self.smoothing
                c0 = np.bincount(b[ok, k], weights=1 - r[ok], minlength=sizes[k]) + self.smoothing
                self.llr_.append(np.log(c1 / c1.sum()) - np.log(c0 / c0.sum()))
            if self.use_agreement:
                obj = [float((r * (bb * ls)).sum() - (np.add.reduceat(r, groups.starts)
                                                      * groups.segment_logsumexp(bb * ls)).sum()) for bb in grid]
                beta = float(grid[int(np.argmax(obj))])
            # E-step
            r, _, ll = self._posterior(groups, b, beta, gamma)
            if ll - prev < self.tol:
                break
            prev = ll
        self.beta_, self.gamma_ = beta, gamma
        self.report_ = {"iterations": it, "beta": beta, "gamma": gamma, "log_likelihood_per_problem": prev,
                        "class_balance": float((r * groups.size).sum() / groups.size.sum())}
        return self

    def answer_posterior(self, answer_ids: np.ndarray, sources: np.ndarray) -> tuple[AnswerGroups, np.ndarray]:
        """``(groups, (G,) P(answer correct))`` on new data with the fitted parameters."""
        if self.llr_ is None:
            raise ConfigError("AnswerLevelModel is not fitted; call fit(answer_ids, sources) first.")
        groups = AnswerGroups(answer_ids)
        s = np.asarray(sources, dtype=np.float64)
        if s.ndim != 3 or s.shape[2] != len(self.llr_):
            raise DataError(f"sources must have {len(self.llr_)} columns; got shape {s.shape}.")
        r, _, _ = self._posterior(groups, self._bins(groups.group_mean(s)), self.beta_, self.gamma_)
        return groups, r

    def predict_proba(self, answer_ids: np.ndarray, sources: np.ndarray) -> np.ndarray:
        """``(P, N)`` P(candidate correct) = posterior that its answer is the problem's correct answer."""
        groups, r = self.answer_posterior(answer_ids, sources)
        return r[groups.group]
