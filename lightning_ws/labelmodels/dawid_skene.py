"""Dawid-Skene EM over labeling-function votes (vectorised, chunked over rows, abstain-aware)."""

from __future__ import annotations

from typing import Any

import numpy as np

from lightning_ws.errors import ConfigError
from lightning_ws.labelmodels.base import (
    LabelModel,
    _check_float,
    _check_int,
    mv_proba,
    normalize_log,
    onehot_with_abstain,
    posterior_from_logtab,
    soft_counts,
    vote_loglik,
)
from lightning_ws.labelmodels.matrix import ABSTAIN, _row_chunks

__all__ = ["DawidSkene"]

#: Cache the sparse one-hot encoding across EM iterations when ``n * m`` is at most this (12 bytes per entry).
_CACHE_ELEMS = 150_000_000


class DawidSkene(LabelModel):
    """Dawid-Skene EM (Dawid & Skene, 1979; the WRENCH label model ``DawidSkene``, arXiv 2109.11377).

    Model: class prior ``pi``; conditionally independent LFs with full confusion matrices
    ``theta[j, y, l] = P(lambda_j = l | Y = y)``. EM: E-step ``q_i(y) ∝ pi_y prod_j theta[j, y, L_ij]``,
    M-step ``theta[j, y, l] ∝ sum_i q_i(y) 1[L_ij = l] + smoothing`` and ``pi = mean_i q_i`` (only when the class
    balance is estimated; a given / dev / uniform balance stays fixed).

    Defaults the paper leaves open: initialisation from majority-vote soft labels (all-abstain rows: uniform);
    stop when the L1 changes of ``pi`` and ``theta`` are both below ``tol = 1e-5`` (WRENCH's test) or after
    ``max_iter = 1000`` iterations (WRENCH allows 10,000; the test fires long before on every data set we tried, and
    ``fit_report_["converged"]`` says whether it did); Dirichlet smoothing ``0.01`` pseudo-counts per cell, so no
    probability is exactly 0.

    ``abstain="category"`` (default, as WRENCH) treats abstaining as an observed vote whose rate may depend on the
    class - this is what makes single-polarity keyword LFs informative. ``abstain="ignore"`` models only the votes
    (``theta`` conditional on voting; abstains drop out of the likelihood). E-steps and M-step statistics are
    accumulated over row chunks, so memory stays O(chunk * m) beyond the matrix itself.

    Args:
        num_classes: ``k``.
        abstain: ``"category"`` or ``"ignore"``.
        max_iter: EM iteration cap.
        tol: convergence tolerance (L1 change of ``pi`` and of ``theta``).
        smoothing: pseudo-count added to every confusion cell.
        seed: seed of the tie-breaking generator (EM itself is deterministic).
    """

    name = "dawid_skene"
    _param_names = ("log_theta_",)

    def __init__(self, num_classes: int | None = None, *, abstain: str = "category", max_iter: int = 1000,
                 tol: float = 1e-5, smoothing: float = 0.01, seed: int = 0) -> None:
        super().__init__(num_classes, seed=seed)
        if abstain not in ("category", "ignore"):
            raise ConfigError(f"abstain must be 'category' or 'ignore', got {abstain!r}.")
        self.abstain = abstain
        self.max_iter = _check_int("max_iter", max_iter, 1)
        self.tol = _check_float("tol", tol, 0.0, low_open=True)
        self.smoothing = _check_float("smoothing", smoothing, 0.0)

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments."""
        return {**super().get_config(), "abstain": self.abstain, "max_iter": self.max_iter, "tol": self.tol,
                "smoothing": self.smoothing}

    def _m_step(self, C: np.ndarray) -> np.ndarray:
        C = C + self.smoothing
        if self.abstain == "ignore":
            C[:, :, 0] = 0.0
        theta = C / np.maximum(C.sum(axis=2, keepdims=True), 1e-300)
        return theta

    def _logtab(self, theta: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            lt = np.log(np.clip(theta, 1e-300, None))
        if self.abstain == "ignore":
            lt[:, :, 0] = 0.0
        return lt

    def _fit(self, L: np.ndarray, dev_L: np.ndarray | None, dev_y: np.ndarray | None) -> None:
        n, m = L.shape
        k = self.k_
        estimate_prior = self.class_balance_ is None
        q = mv_proba(L, k)
        C = np.zeros((m, k, k + 1))
        for sl in _row_chunks(n, m):
            C += soft_counts(L, q[sl], chunk=sl)
        theta = self._m_step(C)
        pi = _safe_prior(q.mean(axis=0)) if estimate_prior else self.class_balance_.copy()
        del q
        chunks = list(_row_chunks(n, m, elems=4_000_000))
        cache = n * m <= _CACHE_ELEMS
        blocks = [onehot_with_abstain(L[sl], k) for sl in chunks] if cache else None
        converged, it, loglik = False, 0, float("nan")
        d_pi = d_theta = float("nan")
        for it in range(1, self.max_iter + 1):  # noqa: B007
            lt = self._logtab(theta)
            logpi = np.log(pi)
            C = np.zeros((m, k, k + 1))
            qsum = np.zeros(k)
            loglik = 0.0
            for b, sl in enumerate(chunks):
                X = blocks[b] if blocks is not None else onehot_with_abstain(L[sl], k)
                qb, lse = normalize_log(vote_loglik(L, lt, X=X) + logpi)
                loglik += float(lse.sum())
                qsum += qb.sum(axis=0)
                C += soft_counts(L, qb, X=X)
            new_theta = self._m_step(C)
            new_pi = _safe_prior(qsum / n) if estimate_prior else pi
            d_pi = float(np.abs(new_pi - pi).sum())
            d_theta = float(np.abs(new_theta - theta).sum())
            theta, pi = new_theta, new_pi
            if d_pi < self.tol and d_theta < self.tol:
                converged = True
                break
        self.log_theta_ = self._logtab(theta)
        if estimate_prior:
            self.class_balance_ = pi
        self.fit_report_.update(converged=converged, n_iter=it, log_likelihood=loglik, final_delta_pi=d_pi,
                                final_delta_theta=d_theta, abstain=self.abstain)
        if self.abstain == "ignore":
            self.abstain_rate_ = (L == ABSTAIN).mean(axis=0)
        else:
            self.abstain_rate_ = None

    def _extra_state(self) -> dict[str, Any]:
        return {"abstain_rate": None if self.abstain_rate_ is None else self.abstain_rate_.tolist()}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        ar = extra.get("abstain_rate")
        self.abstain_rate_ = None if ar is None else np.asarray(ar, dtype=np.float64)

    def _proba_covered(self, L: np.ndarray) -> np.ndarray:
        # With abstain as a category an all-abstain row has a real posterior too, but the contract is that
        # uncovered rows get the class balance (and are flagged); the base class overwrites them.
        return posterior_from_logtab(L, self.log_theta_, self.class_balance_)

    def _lf_confusions(self) -> np.ndarray:
        theta = np.exp(self.log_theta_)
        if self.abstain == "ignore":
            ar = self.abstain_rate_[:, None]
            conf = np.zeros_like(theta)
            conf[:, :, 0] = ar
            conf[:, :, 1:] = theta[:, :, 1:] * (1 - ar)[:, :, None]
            return conf
        return theta


def _safe_prior(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, None)
    return p / p.sum()
