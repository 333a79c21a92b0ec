"""Per-problem verifier leniency: a shift that moves every candidate's score of one problem (Weaver, arXiv 2506.18203).

An LLM judge is often more lenient on some problems than on others: on a problem it cannot check it calls most
candidates right (or most wrong), whatever their answer. Such a per-problem shift leaves every within-problem ranking
as it is, so the pooled mean score and majority vote do not see it, but a label model that learns one score
distribution for correct and one for wrong candidates across all problems does: the shift blurs the two
distributions, the model finds the verifier weak and falls back on the answer counts. On two of the suite's three
repeated-judge sets a shift of standard deviation 1 on the judge's latent score took Weaver from 10-15 points above
the better of majority vote and the mean judge to 15-21 points below it (BENCHMARKS.md, issue-17 section, "Session
21").

:func:`estimate_problem_offsets` estimates the shift of each problem from the fitted model's answer posteriors, as
the random effect of a one-way variance-components model, and shrinks it towards zero (empirical Bayes), so a set
without leniency is left (almost) as it is:

* scores are put on a normal scale to estimate and remove the offsets (:class:`ProblemOffsets` stores the
  empirical CDF of the fit data and maps through the standard normal quantile), where a shift of the judge's logit
  is close to additive, and mapped back to the sources' own scale for the label model;
* residual ``e = z - (r mu_1 + (1 - r) mu_0)`` with ``r`` the posterior that the candidate's answer is correct and
  ``mu_1``, ``mu_0`` the posterior-weighted class means;
* raw offset ``o_p`` = mean residual of the problem; its sampling variance ``v_p = s_w / n_p + s_a sum_a n_a^2 /
  n_p^2`` counts the candidates of one answer as sharing part of their error (``s_w`` within-answer variance, ``s_a``
  between-answer variance component, both pooled over problems from within-problem deviations, which a problem
  shift does not touch);
* ``tau2 = max(0, var(o) - mean(v))`` and the shrunk offset ``o_p tau2 / (tau2 + v_p)``.

Lightning-free (numpy / scipy). Used by :class:`~lightning_ws.weaver.Weaver` with ``problem_offsets=True``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import ndtr, ndtri

from lightning_ws.errors import ConfigError, DataError
from lightning_ws.weaver._numeric import quantile_interp

__all__ = ["ProblemOffsets", "estimate_problem_offsets"]


def _dense_rank(v: np.ndarray) -> np.ndarray:
    """``np.unique(v, return_inverse=True)[1]`` for non-negative integer codes: by a presence table where the codes
    are dense (no sort), else by ``np.unique``."""
    v = np.asarray(v, dtype=np.int64).ravel()
    top = int(v.max(initial=-1)) + 1
    if v.size and top <= 8 * v.size + 1024:
        present = np.zeros(top, dtype=bool)
        present[v] = True
        return (np.cumsum(present) - 1)[v]
    return np.unique(v, return_inverse=True)[1].ravel()


def estimate_problem_offsets(z: np.ndarray, posterior: np.ndarray, answer_ids: np.ndarray
                             ) -> tuple[np.ndarray, dict[str, float]]:
    """Shrunk per-problem offsets of one source.

    Args:
        z: ``(P, N)`` scores of one source on an additive scale (``NaN`` = missing).
        posterior: ``(P, N)`` P(the candidate's answer is correct) from a fitted answer-level model.
        answer_ids: ``(P, N)`` answer codes (``-1`` = no answer: such a candidate is its own answer).

    Returns:
        ``(P,)`` offsets (0 for a problem with fewer than two scored candidates; all 0 where no answer has two scored
        candidates) and ``{"tau2", "mean_sampling_var", "within_var",
        "answer_var"}``.
    """
    z = np.asarray(z, dtype=np.float64)
    r = np.asarray(posterior, dtype=np.float64)
    ids = np.asarray(answer_ids)
    if z.ndim != 2 or r.shape != z.shape or ids.shape != z.shape:
        raise DataError(f"z, posterior and answer_ids must share one (P, N) shape; got {z.shape}, {r.shape}, "
                        f"{ids.shape}.")
    P, N = z.shape
    ok = ~np.isnan(z) & ~np.isnan(r)
    w1, w0 = np.where(ok, r, 0.0), np.where(ok, 1.0 - r, 0.0)
    zz = np.where(ok, z, 0.0)
    if w1.sum() <= 0 or w0.sum() <= 0:
        return np.zeros(P), {"tau2": 0.0, "mean_sampling_var": 0.0, "within_var": 0.0, "answer_var": 0.0}
    mu1, mu0 = (w1 * zz).sum() / w1.sum(), (w0 * zz).sum() / w0.sum()
    e = np.where(ok, zz - (np.nan_to_num(r) * mu1 + (1.0 - np.nan_to_num(r)) * mu0), 0.0)
    n = ok.sum(axis=1).astype(np.float64)
    # (problem, answer) clusters; a candidate without an answer is a cluster of its own
    key = np.where(ids >= 0, ids, ids.max(initial=0) + 2 + np.arange(N)[None, :]).astype(np.int64)
    pid = np.broadcast_to(np.arange(P)[:, None], (P, N))[ok]
    ev = e[ok]
    gid = _dense_rank(pid * (int(key.max(initial=0)) + 1) + key[ok])
    cnt = np.bincount(gid).astype(np.float64)
    am = np.bincount(gid, ev) / cnt
    gp = np.zeros(cnt.size, dtype=np.int64)
    gp[gid] = pid
    o = np.bincount(pid, ev, minlength=P) / np.maximum(n, 1.0)
    sq = np.bincount(gp, cnt ** 2, minlength=P)
    s2n = sq / np.maximum(n, 1.0) ** 2
    ssw = float(((ev - am[gid]) ** 2).sum())
    dfw = float(n.sum() - cnt.size)
    ssb = float((cnt * (am - o[gp]) ** 2).sum())
    dfb = float(cnt.size - (n > 0).sum())
    cb = float(n.sum() - (sq[n > 0] / n[n > 0]).sum())
    # a problem's shift is told apart from its candidates' own errors only with two or more scored candidates, and
    # only where some answer has two (the within-answer variance); otherwise nothing is removed
    has = n >= 2
    s_w = ssw / dfw if dfw > 0 else 0.0
    s_a = max(0.0, (ssb - dfb * s_w) / cb) if cb > 0 else 0.0
    v = np.where(has, s_w / np.maximum(n, 1.0) + s_a * s2n, np.inf)
    if has.sum() < 2 or dfw <= 0 or s_w <= 0:
        return np.zeros(P), {"tau2": 0.0, "mean_sampling_var": float(v[has].mean()) if has.any() else 0.0,
                             "within_var": s_w, "answer_var": s_a}
    oc = o[has] - o[has].mean()
    tau2 = max(0.0, float((oc ** 2).mean() - v[has].mean()))
    shrunk = np.where(has, o * tau2 / (tau2 + v), 0.0) if tau2 > 0 else np.zeros(P)
    return shrunk, {"tau2": tau2, "mean_sampling_var": float(v[has].mean()), "within_var": s_w, "answer_var": s_a}


def _by_source(x: np.ndarray) -> np.ndarray:
    """``(P, N, G)`` -> contiguous ``(G, P * N)``: each source's scores in one contiguous row."""
    return np.ascontiguousarray(np.moveaxis(x, 2, 0).reshape(x.shape[2], -1))


def _from_by_source(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of :func:`_by_source`: contiguous ``(P, N, G)``."""
    return np.ascontiguousarray(np.moveaxis(x.reshape(shape[2], shape[0], shape[1]), 0, 2))


class ProblemOffsets:
    """The normal-scale map of each pooled source (fitted once) and the per-problem offset adjustment.

    Args:
        iterations: alternations of (answer posteriors under the model, offsets) (default 3; the first posterior
            comes from the model fitted without offsets).
        n_quantiles: stored quantiles of each source's fit scores for the normal-scale map (default 1001).
    """

    def __init__(self, iterations: int = 3, n_quantiles: int = 1001) -> None:
        if int(iterations) < 1:
            raise ConfigError(f"problem-offset iterations must be >= 1, got {iterations}.")
        if int(n_quantiles) < 3:
            raise ConfigError(f"n_quantiles must be >= 3, got {n_quantiles}.")
        self.iterations = int(iterations)
        self.n_quantiles = int(n_quantiles)
        self.quantiles_: np.ndarray | None = None  # (G, n_quantiles)

    def fit(self, pooled: np.ndarray) -> ProblemOffsets:
        """Store each source's empirical quantiles (``pooled``: ``(P, N, G)``)."""
        x = np.asarray(pooled, dtype=np.float64)
        if x.ndim != 3:
            raise DataError(f"pooled sources must have shape (P, N, G); got {x.shape}.")
        grid = np.linspace(0.0, 1.0, self.n_quantiles)
        qs = []
        for g in range(x.shape[2]):
            col = x[:, :, g][~np.isnan(x[:, :, g])]
            qs.append(np.quantile(col, grid) if col.size else np.zeros(self.n_quantiles))
        self.quantiles_ = np.stack(qs)
        return self

    def _check(self, x: np.ndarray) -> np.ndarray:
        if self.quantiles_ is None:
            raise ConfigError("ProblemOffsets is not fitted; call fit(pooled) first.")
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 3 or x.shape[2] != self.quantiles_.shape[0]:
            raise DataError(f"pooled sources must have shape (P, N, {self.quantiles_.shape[0]}); got {x.shape}.")
        return x

    def normal_scale(self, pooled: np.ndarray) -> np.ndarray:
        """``(P, N, G)`` scores mapped through the fitted empirical CDF (piecewise linear between the stored
        quantiles; a value equal to a run of tied quantiles maps to the run's middle) and the standard normal
        quantile, the CDF clipped to ``[0.5 / n_quantiles, 1 - 0.5 / n_quantiles]``. A constant source maps to 0."""
        x = _by_source(self._check(pooled))
        grid = np.linspace(0.0, 1.0, self.n_quantiles)
        lo = 0.5 / self.n_quantiles
        out = np.full(x.shape, np.nan)
        for g, col in enumerate(x):
            q = self.quantiles_[g]
            ok = ~np.isnan(col)
            if q[-1] <= q[0]:  # a constant source carries no ranking
                out[g, ok] = 0.0
                continue
            out[g, ok] = ndtri(np.clip(quantile_interp(col[ok], q, grid), lo, 1.0 - lo))
        return _from_by_source(out, np.shape(pooled))

    def source_scale(self, z: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`normal_scale`: normal-scale ``(P, N, G)`` values back to the sources' own scale
        (through the stored quantiles), so that zero offsets give back the sources (to interpolation)."""
        x = _by_source(self._check(z))
        grid = np.linspace(0.0, 1.0, self.n_quantiles)
        out = np.full(x.shape, np.nan)
        for g, col in enumerate(x):
            ok = ~np.isnan(col)
            out[g, ok] = np.interp(ndtr(col[ok]), grid, self.quantiles_[g])
        return _from_by_source(out, np.shape(z))

    def adjust(self, z: np.ndarray, posterior: np.ndarray, answer_ids: np.ndarray
               ) -> tuple[np.ndarray, list[dict[str, float]]]:
        """``z`` (normal scale, ``(P, N, G)``) minus each source's shrunk per-problem offset under ``posterior``."""
        out = np.array(z, dtype=np.float64, copy=True)
        stats = []
        for g in range(out.shape[2]):
            o, st = estimate_problem_offsets(out[:, :, g], posterior, answer_ids)
            out[:, :, g] -= o[:, None]
            stats.append({**st, "offset_sd": float(o.std())})
        return out, stats

    def transform(self, pooled: np.ndarray, answer_ids: np.ndarray, model: Any, *, normal: np.ndarray | None = None
                  ) -> tuple[np.ndarray, list[dict[str, float]]]:
        """Sources of ``pooled`` with the per-problem offsets removed, on the sources' own scale, under a fitted
        answer-level ``model``: ``iterations`` alternations of (posterior of the current sources, offsets of the
        unadjusted ones). Where no source shows a shift (``tau2 = 0``) ``pooled`` comes back unchanged. ``normal``:
        ``normal_scale(pooled)`` where the caller has it already (it is not recomputed)."""
        z0 = self.normal_scale(pooled) if normal is None else normal
        cur, stats = np.asarray(pooled, dtype=np.float64), []
        for _ in range(self.iterations):
            adj, stats = self.adjust(z0, model.predict_proba(answer_ids, cur), answer_ids)
            if all(st["tau2"] == 0.0 for st in stats):
                break
            cur = self.source_scale(adj)
        return cur, stats

    def state_dict(self) -> dict[str, Any]:
        return {"iterations": self.iterations, "n_quantiles": self.n_quantiles,
                "quantiles": None if self.quantiles_ is None else self.quantiles_.tolist()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ProblemOffsets:
        po = cls(state["iterations"], state["n_quantiles"])
        if state.get("quantiles") is not None:
            po.quantiles_ = np.asarray(state["quantiles"], dtype=np.float64)
        return po
