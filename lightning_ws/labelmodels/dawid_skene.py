"""Dawid-Skene EM over labeling-function votes (vectorised, chunked over rows, abstain-aware)."""

from __future__ import annotations

import warnings
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
from lightning_ws.labelmodels.matrix import (
    ABSTAIN,
    _column_vote_counts,
    _lf_class_vote_counts,
    _row_chunks,
    collapse_rows,
)

__all__ = ["DawidSkene"]

#: Cache the sparse one-hot encoding across EM iterations when ``n * m`` is at most this (12 bytes per entry).
_CACHE_ELEMS = 150_000_000
#: Run EM over the list of votes (``O(votes)`` per iteration) when ``votes * (k + 2)`` is at most this.
_VOTES_MAX_ELEMS = 8_000_000
_NO_HINT = object()


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
    accumulated over row chunks, so memory stays O(chunk * m) beyond the matrix itself. When the matrix has few
    distinct rows (at most half of ``n``; WRENCH SMS: 4571 rows, 143 patterns) EM runs on the unique vote patterns
    weighted by their counts - the same iterates up to float rounding (``fit_report_["em_rows"]``).

    Args:
        num_classes: ``k``.
        abstain: ``"category"`` or ``"ignore"``.
        max_iter: EM iteration cap.
        tol: convergence tolerance (L1 change of ``pi`` and of ``theta``).
        smoothing: pseudo-count added to every confusion cell.
        accelerate: SQUAREM-accelerated EM (Varadhan & Roland, 2008): same fixed point and stopping test, several
            times fewer E-steps; off by default so that iterates match plain (WRENCH) EM.
        seed: seed of the tie-breaking generator (EM itself is deterministic).
    """

    assumes_independence = True
    name = "dawid_skene"
    _param_names = ("log_theta_",)

    def __init__(self, num_classes: int | None = None, *, abstain: str = "category", max_iter: int = 1000,
                 tol: float = 1e-5, smoothing: float = 0.01, accelerate: bool = False, seed: int = 0) -> None:
        super().__init__(num_classes, seed=seed)
        if not isinstance(accelerate, (bool, np.bool_)):
            raise ConfigError(f"accelerate must be True or False, got {accelerate!r}.")
        self.accelerate = bool(accelerate)
        if abstain not in ("category", "ignore"):
            raise ConfigError(f"abstain must be 'category' or 'ignore', got {abstain!r}.")
        self.abstain = abstain
        self.max_iter = _check_int("max_iter", max_iter, 1)
        self.tol = _check_float("tol", tol, 0.0, low_open=True)
        self.smoothing = _check_float("smoothing", smoothing, 0.0)

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments."""
        return {**super().get_config(), "abstain": self.abstain, "max_iter": self.max_iter, "tol": self.tol,
                "smoothing": self.smoothing, "accelerate": self.accelerate}

    def _m_step(self, C: np.ndarray) -> np.ndarray:
        C = C + self.smoothing
        C[self.ignore_mask_, :, 0] = 0.0
        theta = C / np.maximum(C.sum(axis=2, keepdims=True), 1e-300)
        return theta

    def _logtab(self, theta: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            lt = np.log(np.clip(theta, 1e-300, None))
        lt[self.ignore_mask_, :, 0] = 0.0
        return lt

    def _fit(self, L: np.ndarray, dev_L: np.ndarray | None, dev_y: np.ndarray | None) -> None:
        n, m = L.shape
        k = self.k_
        estimate_prior = self.class_balance_ is None
        self.ignore_mask_ = np.full(m, self.abstain == "ignore")
        if self.abstain == "ignore":
            single = _single_class_lfs(L, k)
            if single.any():
                # With abstains ignored, every vote of a single-class LF names its one class whatever Y is, so its
                # confusion row is constant and carries no information: EM is unidentifiable and falls to chance.
                warnings.warn(f"DawidSkene(abstain='ignore'): {int(single.sum())} of {m} labeling functions vote a "
                              f"single class, so with abstains ignored their votes carry no information about Y "
                              f"(the model is unidentifiable). Their abstains are modelled as a category instead "
                              f"(fit_report_['abstain_as_category']); use abstain='category' to silence this.",
                              UserWarning, stacklevel=3)
                self.ignore_mask_ = ~single
            self.fit_report_["abstain_as_category"] = np.flatnonzero(~self.ignore_mask_).tolist()
        # EM statistics are sums over rows, so identical rows can be merged: run EM on the unique vote patterns,
        # weighted by their counts (same iterates up to float rounding; WRENCH SMS: 4571 rows -> 143 patterns).
        # a caller that already collapsed L (MomentMatching's class-balance estimate) leaves the result here
        hint = self.__dict__.pop("_collapsed_hint", _NO_HINT)
        collapsed = collapse_rows(L) if hint is _NO_HINT else hint
        if collapsed is not None:
            R, w = collapsed[0], collapsed[2].astype(np.float64)
        else:
            R, w = L, None
        nr = R.shape[0]
        self.fit_report_["em_rows"] = int(nr)
        q = mv_proba(R, k)
        # Rows without votes start at the majority-vote class balance (the mean vote share of covered rows), not at
        # uniform: with abstains as a category and many uncovered rows, a uniform start lets EM spend a latent class on
        # "rows where nobody votes" (WRENCH SMS: 71 % spam estimated from a uniform start, 13.5 % true).
        unc = (R == ABSTAIN).all(axis=1)
        if unc.any() and (~unc).any():
            wc = None if w is None else w[~unc]
            share = np.average(q[~unc], axis=0, weights=wc)
            q[unc] = np.maximum(share, 1e-3) / np.maximum(share, 1e-3).sum()
        if w is not None:
            q *= w[:, None]
        C = np.zeros((m, k, k + 1))
        for sl in _row_chunks(nr, m):
            C += soft_counts(R, q[sl], chunk=sl)
        theta = self._m_step(C)
        pi = _safe_prior(q.sum(axis=0) / n) if estimate_prior else self.class_balance_.copy()
        del q
        chunks = list(_row_chunks(nr, m, elems=4_000_000))
        cache = nr * m <= _CACHE_ELEMS
        n_votes = int(_column_vote_counts(R).sum())
        converged, it, loglik = False, 0, float("nan")
        d_pi = d_theta = float("nan")
        if n_votes * (k + 2) <= _VOTES_MAX_ELEMS:  # small or collapsed: EM over the list of votes
            rows, cols = _vote_list(R, k)
            theta, pi, converged, it, loglik, d_pi, d_theta = _em_votes(
                rows, cols, nr, w, n, theta, pi, estimate_prior, self.smoothing, self.ignore_mask_, self.tol,
                self.max_iter, self.accelerate)
            self.fit_report_["accelerated"] = self.accelerate
        else:
            blocks = [onehot_with_abstain(R[sl], k) for sl in chunks] if cache else None
            wblocks = [None if w is None else w[sl] for sl in chunks]
            self.fit_report_["accelerated"] = False  # SQUAREM is implemented for the vote-list path only
            for it in range(1, self.max_iter + 1):  # noqa: B007
                lt = self._logtab(theta)
                logpi = np.log(pi)
                C = np.zeros((m, k, k + 1))
                qsum = np.zeros(k)
                loglik = 0.0
                for b, sl in enumerate(chunks):
                    X = blocks[b] if blocks is not None else onehot_with_abstain(R[sl], k)
                    qb, lse = normalize_log(vote_loglik(R, lt, X=X) + logpi)
                    wb = wblocks[b]
                    if wb is not None:
                        qb *= wb[:, None]
                        lse = lse * wb
                    loglik += float(lse.sum())
                    qsum += qb.sum(axis=0)
                    C += soft_counts(R, qb, X=X)
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
        if self.ignore_mask_.any():
            self.abstain_rate_ = (L == ABSTAIN).mean(axis=0)
        else:
            self.abstain_rate_ = None

    def _extra_state(self) -> dict[str, Any]:
        return {"abstain_rate": None if self.abstain_rate_ is None else self.abstain_rate_.tolist(),
                "ignore_mask": self.ignore_mask_.tolist()}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        ar = extra.get("abstain_rate")
        self.abstain_rate_ = None if ar is None else np.asarray(ar, dtype=np.float64)
        im = extra.get("ignore_mask")
        self.ignore_mask_ = (np.full(self.num_lfs_, self.abstain == "ignore") if im is None
                             else np.asarray(im, dtype=bool))

    def _proba_covered(self, L: np.ndarray) -> np.ndarray:
        # With abstain as a category an all-abstain row has a real posterior too, but the contract is that
        # uncovered rows get the class balance (and are flagged); the base class overwrites them.
        return posterior_from_logtab(L, self.log_theta_, self.class_balance_)

    def _lf_confusions(self) -> np.ndarray:
        theta = np.exp(self.log_theta_)
        ign = self.ignore_mask_
        if ign.any():
            ar = self.abstain_rate_[ign][:, None]
            theta[ign, :, 0] = ar
            theta[ign, :, 1:] = theta[ign, :, 1:] * (1 - ar)[:, :, None]
        return theta


def _vote_list(R: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-abstain entries of ``R`` as ``(rows, cols)`` with ``cols = j k + l`` (row-major, so rows are sorted)."""
    rows, lfs = np.nonzero(R != ABSTAIN)
    return rows.astype(np.intp), (lfs * k + R[rows, lfs]).astype(np.intp)


def _em_votes(rows: np.ndarray, cols: np.ndarray, nr: int, w: np.ndarray | None, n: int, theta: np.ndarray,
              pi: np.ndarray, estimate_prior: bool, smoothing: float, ignore: np.ndarray, tol: float, max_iter: int,
              accelerate: bool) -> tuple[np.ndarray, np.ndarray, bool, int, float, float, float]:
    """Dawid-Skene EM over a list of the votes (``rows``, ``cols = j k + l``) of ``nr`` rows weighted by ``w``.

    The same updates and stopping test as the chunked loop of :class:`DawidSkene`, but an iteration costs
    ``O(votes + m k^2)``: an abstain contributes ``log theta[j, y, abstain]`` to every row, so the E-step is
    ``sum_j log theta[j, :, abstain]`` plus, per vote, ``log theta[j, :, l] - log theta[j, :, abstain]``
    (``np.bincount`` over the vote list), and the abstain counts of the M-step are the total weight minus the vote
    counts. ``accelerate`` applies SQUAREM (Varadhan & Roland, Scand. J. Stat. 2008, scheme S3) to ``(theta, pi)``:
    two EM maps, an extrapolation with step ``alpha = -|r| / |v|`` (``alpha <= -1``), then one stabilising EM map
    whose L1 changes are the stopping test. An extrapolation that leaves the parameter space or lowers the
    likelihood is pulled back toward the EM point (``alpha <- (alpha - 1) / 2``) and, failing that, replaced by the
    plain two-step EM point, so the log-likelihood never decreases across cycles.

    Returns:
        ``(theta (m, k, k + 1), pi, converged, n_em_steps, loglik, d_pi, d_theta)``.
    """
    m, k = theta.shape[0], theta.shape[1]
    fixed_pi = pi.copy()
    ww = None if w is None else w[:, None]
    ar = np.arange(k)
    e_idx = (rows[:, None] * k + ar).ravel()  # flat (row, y) of each (vote, y)
    m_idx = (cols[:, None] * k + ar).ravel()  # flat (j, l, y) of each (vote, y)
    tiny = 1e-300

    def em_map(th: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        # th: (m, k + 1, k) probabilities over l (axis 1); one E-step + M-step
        lt = np.log(np.maximum(th, tiny))
        lt[ignore, 0, :] = 0.0
        D = (lt[:, 1:, :] - lt[:, :1, :]).reshape(m * k, k)[cols]
        S = np.bincount(e_idx, weights=D.ravel(), minlength=nr * k).reshape(nr, k)
        S += lt[:, 0, :].sum(axis=0) + np.log(p)
        mx = S.max(axis=1, keepdims=True)
        S -= mx
        np.exp(S, out=S)
        z = S.sum(axis=1, keepdims=True)
        S /= z if ww is None else z / ww
        lse = np.log(z) + mx
        ll = float(lse.sum() if ww is None else lse.ravel() @ w)
        tot = S.sum(axis=0)
        Cv = np.bincount(m_idx, weights=S[rows].ravel(), minlength=m * k * k).reshape(m, k, k)
        C = np.concatenate([(tot - Cv.sum(axis=1))[:, None, :], Cv], axis=1)
        C += smoothing  # abstain counts are a difference: may be -1e-13 when smoothing is 0; log() clips
        C[ignore, 0, :] = 0.0
        C /= np.maximum(C.sum(axis=1, keepdims=True), tiny)
        new_p = _safe_prior(tot / n) if estimate_prior else fixed_pi
        return C, new_p, ll

    th = theta.transpose(0, 2, 1).copy()  # (m, k + 1, k)
    p = pi.copy()
    converged, steps, loglik = False, 0, float("nan")
    d_pi = d_th = float("nan")
    while steps < max_iter:
        th1, p1, ll0 = em_map(th, p)
        steps += 1
        d_pi, d_th = float(np.abs(p1 - p).sum()), float(np.abs(th1 - th).sum())
        loglik = ll0
        if (d_pi < tol and d_th < tol) or not accelerate or steps + 2 > max_iter:
            th, p = th1, p1
            if d_pi < tol and d_th < tol:
                converged = True
                break
            continue
        th2, p2, ll1 = em_map(th1, p1)
        steps += 1
        d_pi, d_th = float(np.abs(p2 - p1).sum()), float(np.abs(th2 - th1).sum())
        if d_pi < tol and d_th < tol:  # the plain EM test already holds at th1 -> th2
            th, p, loglik, converged = th2, p2, ll1, True
            break
        r_x, v_x = th1 - th, th2 - 2 * th1 + th
        r_y, v_y = p1 - p, p2 - 2 * p1 + p
        rx, vx = r_x.ravel(), v_x.ravel()
        rn = np.sqrt(float(rx @ rx + r_y @ r_y))
        vn = np.sqrt(float(vx @ vx + v_y @ v_y))
        alpha = min(-rn / vn, -1.0) if vn > 0 else -1.0
        ok = False
        while alpha < -1.0 and steps < max_iter:
            th_x = th - 2 * alpha * r_x + alpha * alpha * v_x
            p_x = p - 2 * alpha * r_y + alpha * alpha * v_y if estimate_prior else fixed_pi
            chk = th_x.copy()
            chk[ignore, 0, :] = 1.0
            if np.all(chk > 0) and np.all(p_x > 0):
                th_x /= th_x.sum(axis=1, keepdims=True)
                p_x = p_x / p_x.sum()
                th3, p3, ll_x = em_map(th_x, p_x)
                steps += 1
                if ll_x >= ll0 and np.all(np.isfinite(th3)):
                    ok = True
                    d_pi, d_th = float(np.abs(p3 - p_x).sum()), float(np.abs(th3 - th_x).sum())
                    th, p, loglik = th3, p3, ll_x
                    break
            alpha = (alpha - 1.0) / 2.0  # backtrack toward the plain two-step EM point
        if not ok:
            d_pi, d_th = float(np.abs(p2 - p1).sum()), float(np.abs(th2 - th1).sum())
            th, p = th2, p2
        if d_pi < tol and d_th < tol:
            converged = True
            break
    return th.transpose(0, 2, 1).copy(), p, converged, steps, loglik, d_pi, d_th


def _single_class_lfs(L: np.ndarray, k: int) -> np.ndarray:
    """``(m,)`` bool: LFs that only ever vote one class (keyword LFs of multi-class WRENCH sets)."""
    return (_lf_class_vote_counts(L, k) > 0).sum(axis=1) == 1


def _safe_prior(p: np.ndarray) -> np.ndarray:
    p = np.maximum(p, 1e-6)
    return p / p.sum()
