"""FlyingSquid-style closed-form triplet label model (binary; normalised one-vs-rest for k > 2)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from lightning_ws.errors import ConfigError
from lightning_ws.labelmodels.base import LabelModel, _check_float, _check_int
from lightning_ws.labelmodels.matrix import ABSTAIN, _row_chunks, gram_float32

__all__ = ["Triplet", "triplet_accuracies"]


def _signed_votes(block: np.ndarray, c: int) -> np.ndarray:
    """+1 where the LF votes ``c``, -1 where it votes another class, 0 where it abstains (float32)."""
    return np.where(block == c, 1.0, np.where(block == ABSTAIN, 0.0, -1.0)).astype(np.float32)


def _pair_moments(L: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """``(sum_i v_ij v_ik, #rows where both vote)`` for the one-vs-rest votes of class ``c`` (``(m, m)`` each)."""
    n, m = L.shape
    S = np.zeros((m, m))
    C = np.zeros((m, m))
    for sl in _row_chunks(n, m, elems=8_000_000):
        V = _signed_votes(L[sl], c)
        S += gram_float32(V)
        C += gram_float32(np.abs(V))
    return S, C


def triplet_accuracies(S: np.ndarray, C: np.ndarray, *, solve: str = "mean", min_overlap: int = 5,
                       min_denominator: float = 0.05) -> tuple[np.ndarray, dict[str, Any]]:
    """Closed-form ``|a_i| = sqrt(|E[v_i v_j]| |E[v_i v_k]| / |E[v_j v_k]|)`` over all triplets (arXiv 2002.11955).

    Moments are conditional on both LFs voting. A triplet is skipped when a pair has fewer than ``min_overlap``
    co-votes or the denominator ``|E[v_j v_k]|`` is below ``min_denominator`` (near-zero denominators make the
    estimate explode, spec §7). Signs are taken positive (LFs better than random, as FlyingSquid assumes).

    Returns:
        ``(a, info)``: ``a`` in ``[0, 1]`` (NaN for an LF without any valid triplet) and counts of used / skipped
        triplets.
    """
    m = S.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        M = np.abs(np.where(C >= min_overlap, S / np.maximum(C, 1), np.nan))
    np.fill_diagonal(M, np.nan)
    a = np.full(m, np.nan)
    used = skipped = 0
    iu = np.triu_indices(m, k=1)
    for i in range(m):
        num = np.outer(M[i], M[i])
        den = M
        ok = np.isfinite(num) & np.isfinite(den) & (den >= min_denominator)
        ok[i, :] = False
        ok[:, i] = False
        total = (m - 1) * (m - 2) // 2
        okv = ok[iu]
        vals = (num[iu] / np.where(okv, den[iu], 1.0))[okv]
        used += int(vals.size)
        skipped += total - int(vals.size)
        if vals.size:
            est = float(np.median(vals) if solve == "median" else vals.mean())
            a[i] = np.sqrt(min(max(est, 0.0), 1.0))
    return a, {"triplets_used": used, "triplets_skipped": skipped}


class Triplet(LabelModel):
    """FlyingSquid triplet method (Fu et al., ICML 2020, arXiv 2002.11955), closed form.

    Binary case: votes become ``v in {-1, 0, +1}``; under conditional independence and the symmetric-accuracy model,
    ``E[v_i v_j | both vote] = a_i a_j`` with ``a_i = E[v_i Y | v_i votes]``, so each triplet gives
    ``|a_i|`` in closed form; we average (``solve="mean"``) or take the median over all valid triplets and set
    ``P(lambda_i = Y | votes) = (1 + a_i) / 2``. Posteriors are naive Bayes with these accuracies and the class
    balance. Cost: one streaming pass for the ``m x m`` moments (float32 GEMM per chunk) plus ``O(m^3)``.

    ``k > 2``: one-vs-rest problems, one per class ``c`` (votes for ``c`` vs votes for another class), each with
    prior ``(1 - p_c, p_c)``; the per-class probabilities are *normalised by their sum* - WRENCH applies a softmax to
    probabilities instead, which flattens the confidences (spec §7; we do not copy that). ``lf_accuracies`` for
    ``k > 2`` is the mean one-vs-rest accuracy of each LF.

    Defaults the paper leaves open: ``min_overlap = 5`` co-votes per pair; triplets whose denominator is below
    ``min_denominator = 0.05`` are skipped and counted in ``fit_report_``; an LF without any valid triplet gets the
    mean accuracy of the others (listed in ``fit_report_["lfs_without_triplets"]``); accuracies are clipped to
    ``[0.5, 0.9999]``; class balance ``"estimated"`` = the Dawid-Skene EM prior. Needs at least 3 LFs (FlyingSquid
    issue #8: NaN with 2 LFs).

    Args:
        num_classes: ``k``.
        solve: ``"mean"`` or ``"median"`` over triplets.
        min_overlap: least number of rows where both LFs of a pair vote.
        min_denominator: least ``|E[v_j v_k]|`` of a usable triplet.
        seed: seed of the tie-breaking generator (the fit is deterministic).
    """

    assumes_independence = True
    name = "triplet"
    min_lfs = 3
    _param_names = ("accuracies_", "coverage_")

    def __init__(self, num_classes: int | None = None, *, solve: str = "mean", min_overlap: int = 5,
                 min_denominator: float = 0.05, seed: int = 0) -> None:
        super().__init__(num_classes, seed=seed)
        if solve not in ("mean", "median"):
            raise ConfigError(f"solve must be 'mean' or 'median', got {solve!r}.")
        self.solve = solve
        self.min_overlap = _check_int("min_overlap", min_overlap, 1)
        self.min_denominator = _check_float("min_denominator", min_denominator, 0.0, 1.0, low_open=True)
        self.mode_ = "votes"

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments."""
        return {**super().get_config(), "solve": self.solve, "min_overlap": self.min_overlap,
                "min_denominator": self.min_denominator}

    def _fit(self, L: np.ndarray, dev_L: np.ndarray | None, dev_y: np.ndarray | None) -> None:
        from lightning_ws.labelmodels.majority import estimate_class_balance

        n, m = L.shape
        k = self.k_
        from lightning_ws.labelmodels.dawid_skene import _single_class_lfs

        single = _single_class_lfs(L, k)
        self.fit_report_["single_class_lfs"] = int(single.sum())
        if self.class_balance_ is None:
            self.class_balance_ = estimate_class_balance(L, k, "em", seed=self.seed)
        self.fire_tf_ = np.zeros((0, 2))
        self.mode_ = "votes"
        if single.all():
            # A single-class LF votes +1 (its class) or -1 (another class) by identity, not by correctness: on rows
            # where two of them vote, E[v_i v_j] is +-1 for every pair and every accuracy would come out 1. The
            # information is in *whether* the LF fires, so the triplets run on firing indicators, per class.
            self.mode_ = "firing"
            self._fit_firing(L)
            return
        if single.mean() > 0.5:
            warnings.warn(f"Triplet: {int(single.sum())} of {m} labeling functions vote a single class; their "
                          f"pairwise vote agreements are +-1 by construction, so their triplet accuracies are not "
                          f"identifiable (they come out ~1). Use DawidSkene (abstains as a category), a matrix of "
                          f"single-class LFs only (Triplet then uses firing indicators) or AutoLabelModel.",
                          UserWarning, stacklevel=3)
        classes = [1] if k == 2 else list(range(k))
        acc = np.empty((len(classes), m))
        used = skipped = 0
        missing: list[list[int]] = []
        for r, c in enumerate(classes):
            S, C = _pair_moments(L, c)
            a, info = triplet_accuracies(S, C, solve=self.solve, min_overlap=self.min_overlap,
                                         min_denominator=self.min_denominator)
            used += info["triplets_used"]
            skipped += info["triplets_skipped"]
            bad = np.flatnonzero(~np.isfinite(a))
            missing.append(bad.tolist())
            if bad.size == m:
                a[:] = 0.4  # no usable triplet at all: accuracy 0.7 for every LF (reported below)
            elif bad.size:
                a[bad] = np.nanmean(a)
            acc[r] = np.clip((1.0 + a) / 2.0, 0.5, 0.9999)
        self.accuracies_ = acc
        self.coverage_ = np.concatenate([(L[sl] != ABSTAIN).sum(axis=0, keepdims=True)
                                         for sl in _row_chunks(n, m)]).sum(axis=0) / n
        self.fit_report_.update(triplets_used=used, triplets_skipped=skipped,
                                lfs_without_triplets=missing if k > 2 else missing[0], solve=self.solve)

    def _fit_firing(self, L: np.ndarray) -> None:
        """Triplets on firing indicators for single-class LFs (every LF votes one class ``c_j``).

        For the LFs of class ``c``, ``x_j = 1[lambda_j fires]`` and ``Z = 1[Y = c]``; if their firings are
        conditionally independent given ``Z``, ``corr(x_i, x_j) = rho_i rho_j`` with ``rho_j = corr(x_j, Z) > 0``, so
        ``rho_i = sqrt(R_ij R_ik / R_jk)`` over triplets of same-class LFs (mean over triplets whose denominator is
        at least ``min_denominator / 10``: firing correlations of low-coverage LFs are small). Then
        ``t_j - f_j = rho_j sd(x_j) / sd(Z)`` and ``f_j = E[x_j] - P(Y = c) (t_j - f_j)`` give
        ``t_j = P(fire | Y = c)`` and ``f_j = P(fire | Y != c)``; the posterior is naive Bayes over firing and
        abstaining, one-vs-rest per class, normalised by the sum. LFs of a class with fewer than 3 LFs get the median
        ``rho`` of the others (``fit_report_["lfs_without_triplets"]``).
        """
        n, m = L.shape
        k = self.k_
        p = self.class_balance_
        cls = np.array([int(L[:, j][L[:, j] != ABSTAIN][0]) for j in range(m)])
        X = (L != ABSTAIN).astype(np.float32)
        mu = X.mean(axis=0).astype(np.float64)
        G = np.zeros((m, m))
        for sl in _row_chunks(n, m, elems=8_000_000):
            G += gram_float32(X[sl])
        C = G / n - np.outer(mu, mu)
        sd = np.sqrt(np.maximum(mu * (1 - mu), 1e-300))
        R = C / np.outer(sd, sd)
        rho = np.full(m, np.nan)
        used = skipped = 0
        floor = self.min_denominator / 10.0
        for c in range(k):
            idx = np.flatnonzero(cls == c)
            if idx.size < 3:
                continue
            Rc = R[np.ix_(idx, idx)]
            for a, i in enumerate(idx):
                others = np.delete(np.arange(idx.size), a)
                num = np.outer(Rc[a, others], Rc[a, others])
                den = Rc[np.ix_(others, others)]
                iu = np.triu_indices(others.size, k=1)
                ok = (den[iu] >= floor) & (num[iu] > 0)
                used += int(ok.sum())
                skipped += int((~ok).sum())
                if ok.any():
                    rho[i] = np.sqrt(min(float((num[iu][ok] / den[iu][ok]).mean()), 1.0))
        missing = np.flatnonzero(~np.isfinite(rho))
        rho[missing] = np.nanmedian(rho) if np.isfinite(rho).any() else 0.3
        pc = p[cls]
        d = rho * sd / np.sqrt(pc * (1 - pc))
        f = np.clip(mu - pc * d, 1e-6, 1 - 1e-6)
        t = np.clip(f + d, f + 1e-6, 1 - 1e-6)
        self.fire_tf_ = np.stack([t, f], axis=1)
        self.lf_class_ = cls.astype(np.float64)
        # accuracies_ keeps its (problems, m) shape: P(Y = c_j | fires) for LF j, in every row
        a = t * pc / np.maximum(t * pc + f * (1 - pc), 1e-300)
        self.accuracies_ = np.tile(a, (1 if k == 2 else k, 1))
        self.coverage_ = mu
        self.fit_report_.update(mode="firing", triplets_used=used, triplets_skipped=skipped,
                                lfs_without_triplets=missing.tolist(), solve="mean")

    def _proba_firing(self, L: np.ndarray) -> np.ndarray:
        n, m = L.shape
        k = self.k_
        p = self.class_balance_
        t, f = self.fire_tf_[:, 0], self.fire_tf_[:, 1]
        cls = self.lf_class_.astype(np.int64)
        w_fire, w_abs = np.log(t / f), np.log((1 - t) / (1 - f))
        out = np.empty((n, k))
        for sl in _row_chunks(n, m):
            x = (L[sl] != ABSTAIN).astype(np.float64)
            z = x * w_fire + (1 - x) * w_abs  # (rows, m): log-likelihood ratio of Y = c_j vs not
            for c in range(k):
                on = cls == c
                lo = np.log(p[c] / (1 - p[c])) + z[:, on].sum(axis=1)
                out[sl, c] = 1.0 / (1.0 + np.exp(-lo))
            out[sl] /= np.maximum(out[sl].sum(axis=1, keepdims=True), 1e-300)
        return out

    def _extra_state(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"mode": self.mode_}
        if self.mode_ == "firing":
            extra.update(fire_tf=self.fire_tf_.tolist(), lf_class=self.lf_class_.tolist())
        return extra

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        self.mode_ = extra.get("mode", "votes")
        if self.mode_ == "firing":
            self.fire_tf_ = np.asarray(extra["fire_tf"], dtype=np.float64)
            self.lf_class_ = np.asarray(extra["lf_class"], dtype=np.float64)

    def _proba_covered(self, L: np.ndarray) -> np.ndarray:
        if self.mode_ == "firing":
            return self._proba_firing(L)
        n, m = L.shape
        k = self.k_
        p = self.class_balance_
        out = np.empty((n, k))
        w = np.log(self.accuracies_ / (1.0 - self.accuracies_))  # (problems, m)
        for sl in _row_chunks(n, m):
            block = L[sl]
            if k == 2:
                z = np.log(p[1] / p[0]) + _signed_votes(block, 1).astype(np.float64) @ w[0]
                p1 = 1.0 / (1.0 + np.exp(-z))
                out[sl, 1], out[sl, 0] = p1, 1.0 - p1
            else:
                for c in range(k):
                    z = np.log(p[c] / (1.0 - p[c])) + _signed_votes(block, c).astype(np.float64) @ w[c]
                    out[sl, c] = 1.0 / (1.0 + np.exp(-z))
                out[sl] /= out[sl].sum(axis=1, keepdims=True)
        return out

    @property
    def lf_accuracies(self) -> np.ndarray:
        """``(m,)``: the triplet accuracies (mean one-vs-rest accuracy when ``k > 2``)."""
        self._check_fitted()
        return self.accuracies_.mean(axis=0)

    def _lf_confusions(self) -> np.ndarray:
        """Symmetric one-coin confusions with the empirical coverage (abstain independent of ``Y``); in firing
        mode, ``P(fire | Y = c_j) = t_j`` and ``P(fire | Y != c_j) = f_j`` on the LF's one class."""
        m, k = self.num_lfs_, self.k_
        if self.mode_ == "firing":
            conf = np.zeros((m, k, k + 1))
            t, f = self.fire_tf_[:, 0], self.fire_tf_[:, 1]
            for j in range(m):
                c = int(self.lf_class_[j])
                conf[j, :, c + 1] = f[j]
                conf[j, c, c + 1] = t[j]
                conf[j, :, 0] = 1 - conf[j, :, c + 1]
            return conf
        cov = self.coverage_
        conf = np.zeros((m, k, k + 1))
        conf[:, :, 0] = (1 - cov)[:, None]
        for y in range(k):
            a_y = self.accuracies_[0] if k == 2 else self.accuracies_[y]
            conf[:, y, 1:] = ((1 - a_y) * cov / (k - 1))[:, None]
            conf[:, y, y + 1] = a_y * cov
        return conf
