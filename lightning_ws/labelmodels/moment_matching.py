"""Snorkel / MeTaL moment matching, solved to convergence with bound-constrained L-BFGS."""

from __future__ import annotations

from typing import Any

import numpy as np

from lightning_ws.errors import ConfigError
from lightning_ws.labelmodels.base import (
    LabelModel,
    _check_float,
    _check_int,
    confusions_from_soft_labels,
    mv_proba,
    posterior_from_logtab,
    single_thread_blas,
)
from lightning_ws.labelmodels.matrix import collapse_rows, covered_mask, onehot_block, overlap_matrix

_SOLVERS = ("auto", "newton", "newton-cg", "l-bfgs-b", "l-bfgs-b+newton-cg")

#: Above the dense-Newton limit, ``"auto"`` runs this many L-BFGS-B iterations before handing over to Newton-CG (the
#: well-conditioned problems of the benchmark converge in 40-140; an ill-conditioned one needed 6,258).
_LBFGSB_FIRST_ITERS = 300

#: Projected Newton with the dense exact Hessian (``(m k^2)^2`` floats) up to this many unknowns; above, the same
#: projected Newton with conjugate-gradient steps on Hessian-vector products. L-BFGS-B is the fallback of both.
_NEWTON_MAX_VARS = 1200

__all__ = ["MomentMatching", "moment_matching_hessian", "moment_matching_hvp", "moment_matching_objective",
           "off_diagonal_block_mask"]


def off_diagonal_block_mask(m: int, k: int) -> np.ndarray:
    """``(m k, m k)`` float mask: 1 on pairs of *different* LFs, 0 on each LF's own ``k x k`` block."""
    lf = np.repeat(np.arange(m), k)
    return (lf[:, None] != lf[None, :]).astype(np.float64)


def moment_matching_objective(mu: np.ndarray, O: np.ndarray, p: np.ndarray, mask: np.ndarray,
                              mu_init: np.ndarray | None = None, l2: float = 0.0) -> tuple[float, np.ndarray]:
    """The objective the ``snorkel`` package minimises (spec §5.3), and its exact gradient.

    ``f(mu) = ||mask * (O - mu P mu^T)||_F^2 + ||mu p - diag(O)||^2 + l2 ||mu - mu_init||_F^2``, ``P = diag(p)``.
    Gradient: ``4 R mu P + 2 (mu p - diag(O)) p^T + 2 l2 (mu - mu_init)`` with ``R = mask * (mu P mu^T - O)``.

    Args:
        mu: ``(m k, k)``; row ``j * k + l``, column ``y`` holds ``P(lambda_j = l | Y = y)``.
        O: ``(m k, m k)`` overlap matrix of one-hot votes.
        p: ``(k,)`` class balance.
        mask: from :func:`off_diagonal_block_mask`.
        mu_init: anchor of the l2 term (ignored when ``l2 == 0``).
        l2: weight of the l2 term.

    Returns:
        ``(f, grad)`` with ``grad`` shaped like ``mu``.
    """
    mup = mu * p[None, :]
    R = mask * (mup @ mu.T - O)
    r2 = mu @ p - np.diag(O)
    f = float((R * R).sum() + r2 @ r2)
    grad = 4.0 * (R @ mup) + 2.0 * np.outer(r2, p)
    if l2 > 0 and mu_init is not None:
        d = mu - mu_init
        f += l2 * float((d * d).sum())
        grad += 2.0 * l2 * d
    return f, grad


def _projected_grad_norm(mu: np.ndarray, grad: np.ndarray) -> float:
    """Inf-norm of the gradient projected on the box [0, 1] (zero where a bound is active and binding)."""
    g = grad.copy()
    g[(mu <= 0.0) & (g > 0)] = 0.0
    g[(mu >= 1.0) & (g < 0)] = 0.0
    return float(np.abs(g).max())


def moment_matching_hessian(mu: np.ndarray, O: np.ndarray, p: np.ndarray, mask: np.ndarray,
                            l2: float = 0.0) -> np.ndarray:
    """Exact Hessian of :func:`moment_matching_objective` w.r.t. ``mu.ravel()``: ``(m k^2, m k^2)``.

    With ``N = m k`` rows of ``mu``, ``mup = mu P`` and ``R = mask * (mu P mu^T - O)``, the entry for the pair
    ``((a, y), (b, z))`` is ``4 mask_ab mup_by mup_az + 4 delta_yz p_y R_ab + delta_ab p_y p_z (4 G_a[y, z] + 2)
    + 2 l2 delta``, where ``G_a = sum_b mask_ab mu_b mu_b^T``.
    """
    N, k = mu.shape
    mup = mu * p[None, :]
    R = mask * (mup @ mu.T - O)
    H = np.empty((N, k, N, k))
    M4 = 4.0 * mask
    for y in range(k):
        for z in range(k):
            blk = (M4 * mup[:, z, None]) * mup[None, :, y]  # [a, b] = 4 mask_ab mup_az mup_by
            if y == z:
                blk += (4.0 * p[y]) * R
            H[:, y, :, z] = blk
    G = (mask @ (mu[:, :, None] * mu[:, None, :]).reshape(N, k * k)).reshape(N, k, k)
    s = H.strides
    diag_blocks = np.lib.stride_tricks.as_strided(H, shape=(N, k, k), strides=(s[0] + s[2], s[1], s[3]))
    diag_blocks += (4.0 * G + 2.0) * np.outer(p, p)[None, :, :]
    H = H.reshape(N * k, N * k)
    if l2 > 0:
        H[np.diag_indices_from(H)] += 2.0 * l2
    return H


def moment_matching_hvp(mu: np.ndarray, V: np.ndarray, O: np.ndarray, p: np.ndarray, mask: np.ndarray,
                        l2: float = 0.0) -> np.ndarray:
    """Hessian of :func:`moment_matching_objective` times a direction ``V`` (shaped like ``mu``), without the
    Hessian: the derivative of the gradient along ``V``,
    ``4 dR mu P + 4 R V P + 2 (V p) p^T + 2 l2 V`` with ``dR = mask * (V P mu^T + mu P V^T)``. Costs two
    ``(m k) x (m k)`` by ``(m k) x k`` products, against ``(m k^2)^2`` floats for :func:`moment_matching_hessian`.
    """
    mup = mu * p[None, :]
    vp = V * p[None, :]
    R = mask * (mup @ mu.T - O)
    dR = mask * (vp @ mu.T + mup @ V.T)
    out = 4.0 * (dR @ mup) + 4.0 * (R @ vp) + 2.0 * np.outer(V @ p, p)
    if l2 > 0:
        out += 2.0 * l2 * V
    return out


def _hessian_diagonal(mu: np.ndarray, p: np.ndarray, mask: np.ndarray, l2: float = 0.0) -> np.ndarray:
    """The diagonal of :func:`moment_matching_hessian`, shaped like ``mu``: ``p_y^2 (4 G_a[y, y] + 2) + 2 l2``
    (``mask`` is 0 on each LF's own block, so the other terms vanish on the diagonal)."""
    return (4.0 * (mask @ (mu * mu)) + 2.0) * (p * p)[None, :] + 2.0 * l2


def _cholesky_direction(hess: Any) -> Any:
    """Newton direction on the free variables from the dense Hessian ``hess(x)``, checked by Cholesky and shifted
    by a growing multiple of the identity while it is not positive definite (far from the optimum). ``None`` when
    no shift works."""
    last = [0.0]

    def direction(x: np.ndarray, g_free: np.ndarray, free: np.ndarray) -> np.ndarray | None:
        Hf = hess(x)[np.ix_(free, free)]
        nf = Hf.shape[0]
        scale = max(float(np.abs(Hf.flat[::nf + 1]).max()), 1e-300)
        tau = 0.0
        while True:
            Hs = Hf.copy()
            Hs.flat[::nf + 1] += tau
            try:
                np.linalg.cholesky(Hs)  # positive-definiteness test (small matrices: cheaper than scipy's wrappers)
                break
            except np.linalg.LinAlgError:  # indefinite: shift, starting near the last shift
                tau = max(10.0 * tau, 0.25 * last[0], 1e-8 * scale)
                if tau > 1e6 * scale:
                    return None
        last[0] = tau
        return -np.linalg.solve(Hs, g_free)

    return direction


def _cg_direction(hvp: Any, hdiag: Any, max_cg: int = 2000) -> Any:
    """Truncated Newton direction on the free variables: Jacobi-preconditioned conjugate gradients on
    ``H_ff d = -g_f`` with Hessian-vector products only (Dembo & Steihaug, 1983). Stops at a relative residual of
    ``1e-3 min(0.5, sqrt(||g_f||))`` (superlinear near the optimum), after ``max_cg`` products, or at the first
    direction of non-positive curvature (returning the iterate so far, or the preconditioned steepest-descent
    direction when that is the first one), so the result is always a descent direction."""

    def direction(x: np.ndarray, g_free: np.ndarray, free: np.ndarray) -> np.ndarray:
        inv_diag = 1.0 / np.maximum(hdiag(x)[free], 1e-300)
        b = -g_free
        bn = float(np.linalg.norm(b))
        stop = 1e-3 * min(0.5, np.sqrt(bn)) * bn
        z = np.zeros_like(b)
        r = b.copy()
        s = inv_diag * r
        q = s.copy()
        rs = float(r @ s)
        full = np.zeros(x.size)
        for _ in range(max_cg):
            full[free] = q
            Hq = hvp(x, full)[free]
            curv = float(q @ Hq)
            if curv <= 1e-14 * float(q @ q):  # non-positive curvature: stop with what we have
                return z if z.any() else inv_diag * b
            a = rs / curv
            z += a * q
            r -= a * Hq
            direction.cg_iter += 1
            if float(np.linalg.norm(r)) <= stop:
                break
            s = inv_diag * r
            rs_new = float(r @ s)
            q = s + (rs_new / rs) * q
            rs = rs_new
        return z

    direction.cg_iter = 0
    return direction


def _lbfgsb(fg: Any, x0: np.ndarray, tol: float, max_iter: int) -> tuple[np.ndarray, int, str]:
    """Bound-constrained L-BFGS-B on ``[0, 1]`` (SciPy): ``(x, iterations, message)``."""
    from scipy.optimize import minimize

    res = minimize(fg, x0, jac=True, method="L-BFGS-B", bounds=[(0.0, 1.0)] * x0.size,
                   options={"maxiter": max_iter, "maxfun": 4 * max_iter, "ftol": 1e-15, "gtol": tol, "maxcor": 30})
    return res.x, int(res.nit), str(res.message)


def _projected_newton(fg: Any, direction: Any, x0: np.ndarray, tol: float,
                      max_iter: int) -> tuple[np.ndarray, int, str]:
    """Projected Newton (Bertsekas, 1982) for ``min f(x)`` s.t. ``0 <= x <= 1``.

    Newton steps on the variables off the epsilon-active bounds (``direction(x, g_free, free)``: the dense
    :func:`_cholesky_direction` or the matrix-free :func:`_cg_direction`), projected-gradient steps on the active
    ones, Armijo backtracking along the projection arc. Stops when the projected-gradient inf-norm is below
    ``tol``. Returns ``(x, iterations, message)``; the caller falls back to L-BFGS-B when it did not converge.
    """
    x = np.clip(x0, 0.0, 1.0)
    f, g = fg(x)
    for it in range(max_iter):
        step = x - np.clip(x - g, 0.0, 1.0)
        pg = float(np.abs(step).max())
        if pg < tol:
            return x, it, "converged"
        eps = min(1e-3, pg)
        act = ((x <= eps) & (g > 0)) | ((x >= 1.0 - eps) & (g < 0))
        free = ~act
        d = -g.copy()
        if free.any():
            d_free = direction(x, g[free], free)
            if d_free is None:
                return x, it, "hessian shift failed"
            d[free] = d_free
        alpha = 1.0
        while True:
            xn = np.clip(x + alpha * d, 0.0, 1.0)
            fn, gn = fg(xn)
            pred = alpha * float(-(g[free] @ d[free])) + float(g[act] @ (x[act] - xn[act]))
            if f - fn >= 1e-4 * pred or (fn <= f and pred <= 1e-14 * max(abs(f), 1e-300)):
                break
            alpha *= 0.5
            if alpha < 1e-10:
                return x, it, "line search failed"
        x, f, g = xn, fn, gn
    return x, max_iter, "iteration limit"


class MuLabelModel(LabelModel):
    """Shared inference for label models parametrised by MeTaL's ``mu``: ``mu[j * k + l, y] = P(lambda_j = l + 1 |
    Y = y)`` (abstain implicit), used by :class:`MomentMatching` and :class:`~lightning_ws.labelmodels.metal_compat.
    MetalCompat`. Subclasses set ``mu_`` in ``fit`` and may set ``proba_clip`` (clamp of ``mu`` at inference)."""

    _param_names = ("mu_",)
    proba_clip: float = 0.01

    def _logtab(self) -> np.ndarray:
        m, k = self.num_lfs_, self.k_
        c = self.proba_clip
        mu = np.clip(self.mu_, c, 1 - c) if c > 0 else np.clip(self.mu_, 1e-300, 1.0)
        lt = np.zeros((m, k, k + 1))
        lt[:, :, 1:] = np.log(mu).reshape(m, k, k).transpose(0, 2, 1)
        return lt

    def _proba_covered(self, L: np.ndarray) -> np.ndarray:
        return posterior_from_logtab(L, self._logtab(), self.class_balance_)

    def _lf_confusions(self) -> np.ndarray:
        m, k = self.num_lfs_, self.k_
        votes = np.clip(self.mu_, 0.0, 1.0).reshape(m, k, k).transpose(0, 2, 1)  # (m, y, l)
        s = votes.sum(axis=2, keepdims=True)
        votes = np.where(s > 1.0, votes / np.maximum(s, 1e-300), votes)
        conf = np.empty((m, k, k + 1))
        conf[:, :, 1:] = votes
        conf[:, :, 0] = np.clip(1.0 - votes.sum(axis=2), 0.0, 1.0)
        return conf


class MomentMatching(MuLabelModel):
    """The Snorkel / MeTaL label model (Ratner et al., arXiv 1810.02840), solved to convergence.

    Fits ``mu[(j, l), y] = P(lambda_j = l | Y = y)`` by minimising the objective of the ``snorkel`` package
    (:func:`moment_matching_objective`): match the off-diagonal blocks of the overlap matrix ``O`` of one-hot votes
    and the vote marginals, for conditionally independent LFs. Inference is snorkel's naive Bayes that ignores
    abstains: ``P(Y = y | votes) ∝ p_y prod_{j votes} clip(mu[(j, lambda_j), y], c, 1 - c)``.

    What we do differently from the reference code, and why: snorkel runs 100 epochs of SGD (lr 0.01) and stops far
    from the optimum (see the benchmark: its final gradient norm is orders of magnitude above ours). We minimise the
    same objective under the natural box constraint ``0 <= mu <= 1`` with the closed-form gradient, until the
    projected gradient inf-norm is below ``tol`` (default 1e-9); ``fit_report_`` records ``objective``,
    ``proj_grad_norm``, ``n_iter``, ``solver`` and ``converged``. Solver (``solver="auto"``): projected Newton
    with the exact Hessian (:func:`moment_matching_hessian`; a handful of iterations) when there are at most 1200
    unknowns; above, up to 300 iterations of bound-constrained L-BFGS-B, then, if that has not reached the tolerance,
    projected Newton with truncated conjugate-gradient steps on Hessian-vector products (:func:`moment_matching_hvp`,
    ``fit_report_["cg_iter"]``); L-BFGS-B to ``max_iter`` if Newton does not converge. L-BFGS-B alone needed
    thousands of iterations on ill-conditioned many-LF, 9-class matrices that the hand-over solves in 1-4 s, while on
    well-conditioned ones it converges in 40-140 iterations, faster than Newton-CG (``benchmarks/
    bench_labelmodels.py --solvers``). ``fit_report_["solver"]`` names the solver(s) that ran. The solve runs with
    BLAS limited to one thread (:func:`~lightning_ws.labelmodels.base.single_thread_blas`). Rows ``(j, l)`` of a
    vote that LF ``j`` never casts are exactly 0 at every optimum (with ``l2 = 0``) and are dropped from the solve.
    The sufficient statistic ``O`` is built from the unique vote patterns weighted by their counts when the matrix
    has few of them (exact: integer counts; WRENCH SMS 4571 rows -> 143 patterns), else in one streaming pass
    (float32 GEMM per chunk, float64 accumulation), so the fit costs one pass over ``L`` plus an optimisation over
    ``m k^2`` numbers that does not depend on ``n``.

    Defaults the paper leaves open: initialisation ``init="auto"`` - the Dawid-Skene EM confusions when the class
    balance is estimated by EM in the same fit (they estimate the same ``P(lambda_j = l | Y = y)``, so Newton needs
    fewer steps; the optimum is the same), otherwise ``"mv"``: one M-step of Dawid-Skene from majority-vote soft
    labels (a consistent-orientation start that assumes LFs are better than random; ``init="precision"`` reproduces
    snorkel's 0.7-precision start instead); ``l2 = 0`` (with ``l2 > 0`` ``"auto"`` means ``"mv"``, the anchor of the
    l2 term); class balance ``"estimated"`` = the Dawid-Skene EM prior (``class_balance_estimator="em"``, SQUAREM-
    accelerated EM on the unique vote patterns - same fixed point and stopping test as plain EM; ``"mv"`` for the
    cheaper vote-share estimate; snorkel itself silently uses a uniform prior); ``proba_clip = 0.01`` (snorkel's
    clamp, taken relative to each LF's coverage), abstains counted as evidence for single-class LFs.

    Args:
        num_classes: ``k``.
        l2: weight of the ``||mu - mu_init||^2`` term.
        init: ``"auto"``, ``"mv"`` or ``"precision"``.
        max_iter: iteration cap (default 10000; Newton stops at 200 and hands over to L-BFGS-B).
        tol: projected-gradient tolerance.
        proba_clip: clamp of ``mu`` at inference, in ``[0, 0.5)``, relative to each LF's coverage (see
            :meth:`_logtab`; snorkel's absolute clamp is what :class:`~lightning_ws.labelmodels.MetalCompat` keeps).
        abstain_evidence: ``"auto"`` (abstains are evidence for single-class LFs), ``"never"`` (snorkel) or
            ``"always"``.
        class_balance_estimator: ``"em"`` or ``"mv"`` (used only when the class balance is ``"estimated"``).
        solver: ``"auto"`` (``"newton"`` up to 1200 unknowns, ``"l-bfgs-b+newton-cg"`` above), ``"newton"`` (dense
            Hessian), ``"newton-cg"`` (matrix-free), ``"l-bfgs-b"`` or ``"l-bfgs-b+newton-cg"`` (300 L-BFGS-B
            iterations, then Newton-CG); the Newton solvers fall back to L-BFGS-B when they do not converge.
        seed: seed of the tie-breaking generator (the fit is deterministic).
    """

    assumes_independence = True
    name = "moment_matching"
    min_lfs = 3

    def __init__(self, num_classes: int | None = None, *, l2: float = 0.0, init: str = "auto", max_iter: int = 10000,
                 tol: float = 1e-9, proba_clip: float = 0.01, class_balance_estimator: str = "em",
                 abstain_evidence: str = "auto", solver: str = "auto", seed: int = 0) -> None:
        super().__init__(num_classes, seed=seed)
        if solver not in _SOLVERS:
            raise ConfigError(f"solver must be one of {_SOLVERS}, got {solver!r}.")
        self.solver = solver
        if abstain_evidence not in ("auto", "never", "always"):
            raise ConfigError(f"abstain_evidence must be 'auto', 'never' or 'always', got {abstain_evidence!r}.")
        self.abstain_evidence = abstain_evidence
        if init not in ("auto", "mv", "precision"):
            raise ConfigError(f"init must be 'auto', 'mv' or 'precision', got {init!r}.")
        if class_balance_estimator not in ("em", "mv"):
            raise ConfigError(f"class_balance_estimator must be 'em' or 'mv', got {class_balance_estimator!r}.")
        self.l2 = _check_float("l2", l2, 0.0)
        self.init = init
        self.max_iter = _check_int("max_iter", max_iter, 1)
        self.tol = _check_float("tol", tol, 0.0, low_open=True)
        self.proba_clip = _check_float("proba_clip", proba_clip, 0.0, 0.499)
        self.class_balance_estimator = class_balance_estimator

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments."""
        return {**super().get_config(), "l2": self.l2, "init": self.init, "max_iter": self.max_iter,
                "tol": self.tol, "proba_clip": self.proba_clip,
                "class_balance_estimator": self.class_balance_estimator, "abstain_evidence": self.abstain_evidence,
                "solver": self.solver}

    def _logtab(self) -> np.ndarray:
        """Log ``P(lambda_j = l | Y = y)`` for inference, abstain in column 0.

        The clamp is applied to the vote probability *conditional on voting*: ``mu[(j, l), y] >= c * cov_j`` with
        ``cov_j = P(lambda_j votes)``. snorkel clamps the joint ``mu`` at ``c = 0.01``; ``mu`` includes the LF's
        coverage, so at 1-5 % coverage every entry falls under the clamp and the votes lose their weight (an
        SMS-like matrix of independent LFs: spam F1 19 with snorkel's clamp, 91 with this one). Abstains count as
        evidence (``log P(abstain | y) = log(1 - sum_l mu[(j, l), y])``) for single-class LFs
        (``abstain_evidence="auto"``): when an LF that only ever votes ``c`` stays silent, that says something
        about ``Y``; for LFs voting several classes the abstain rate is taken as class independent (snorkel).
        """
        m, k = self.num_lfs_, self.k_
        mu = np.clip(self.mu_, 0.0, 1.0).reshape(m, k, k)  # (j, l, y)
        p = self.class_balance_
        vote_y = mu.sum(axis=1)  # (j, y): P(lambda_j votes | y)
        cov = vote_y @ p  # (j,)
        floor = np.maximum(self.proba_clip * cov, 1e-12)[:, None, None]
        lt = np.zeros((m, k, k + 1))
        lt[:, :, 1:] = np.log(np.clip(mu, floor, 1.0)).transpose(0, 2, 1)
        single = (mu.sum(axis=2) > 0).sum(axis=1) == 1
        use = {"auto": single, "always": np.ones(m, dtype=bool), "never": np.zeros(m, dtype=bool)}[
            self.abstain_evidence]
        if use.any():
            ab = np.clip(1.0 - vote_y[use], np.maximum(self.proba_clip * (1.0 - cov[use]), 1e-12)[:, None], 1.0)
            lt[use, :, 0] = np.log(ab)
        return lt

    def _proba_covered(self, L: np.ndarray) -> np.ndarray:
        return posterior_from_logtab(L, self._logtab(), self.class_balance_)

    def _initial_mu(self, L: np.ndarray, O: np.ndarray, p: np.ndarray, weights: np.ndarray | None = None,
                    init: str = "mv") -> np.ndarray:
        m, k = L.shape[1], self.k_
        if init == "mv":
            q = mv_proba(L, k)
            q[~covered_mask(L)] = p
            if weights is not None:  # L holds unique patterns, weights their counts
                q *= weights[:, None]
            conf = confusions_from_soft_labels(L, q, smoothing=1e-6)  # (m, k, k+1)
            return conf[:, :, 1:].transpose(0, 2, 1).reshape(m * k, k).copy()
        marg = np.diag(O).reshape(m, k)  # P(lambda_j = l)
        mu = np.zeros((m * k, k))
        for y in range(k):
            mu[np.arange(m) * k + y, y] = np.clip(marg[:, y] * 0.7 / p[y], 0.0, 1.0)
        return mu

    def _fit(self, L: np.ndarray, dev_L: np.ndarray | None, dev_y: np.ndarray | None) -> None:
        from lightning_ws.labelmodels.majority import _em_class_balance, estimate_class_balance

        n, m = L.shape
        k = self.k_
        hint = self.__dict__.pop("_collapsed_hint", None)  # (U, inverse, counts) or False: the caller's collapse_rows
        collapsed = collapse_rows(L) if hint is None else (hint or None)
        # a caller that fitted Dawid-Skene on this very matrix (AutoLabelModel's selection) passes its confusions as
        # the starting point: the same population quantity, so fewer Newton steps to the same optimum
        em_conf = self.__dict__.pop("_em_conf_hint", None)
        if self.class_balance_ is None:
            if self.class_balance_estimator == "em":
                ds = _em_class_balance(L, k, self.seed, collapsed)
                self.class_balance_, em_conf = ds.class_balance_, ds.lf_confusions
                self.fit_report_["class_balance_em_iter"] = ds.fit_report_["n_iter"]
            else:
                self.class_balance_ = estimate_class_balance(L, k, self.class_balance_estimator, seed=self.seed)
            self.fit_report_["class_balance_estimator"] = self.class_balance_estimator
        p = self.class_balance_
        if collapsed is not None:  # sufficient statistics from the unique vote patterns (exact: integer counts)
            U, _, counts = collapsed
            w = counts.astype(np.float64)
            psi = onehot_block(U, k)
            O = (psi * w[:, None]).T @ psi / n
        else:
            O = overlap_matrix(L, k)
        with single_thread_blas():  # many small dense products: BLAS threads cost more than they give
            init = self.init
            if init == "auto":
                init = "em" if em_conf is not None and self.l2 == 0 else "mv"
            if init == "em":  # the EM confusions P(lambda_j = l | Y = y) estimate the same population quantity as mu
                mu0 = em_conf[:, :, 1:].transpose(0, 2, 1).reshape(m * k, k).copy()
            elif collapsed is not None:
                mu0 = self._initial_mu(U, O, p, w, init)
            else:
                mu0 = self._initial_mu(L, O, p, None, init)
            mask = off_diagonal_block_mask(m, k)
            f0, _ = moment_matching_objective(mu0, O, p, mask, mu0, self.l2)
            # Rows (j, l) for a vote l that LF j never casts (every single-polarity LF has them) have O's row and
            # column zero, so they only add non-negative terms and are 0 at every optimum (when l2 = 0). Dropping them
            # leaves an exactly equivalent, smaller problem without the degenerate (zero-gradient) bounds.
            keep = np.diag(O) > 0 if self.l2 == 0 else np.ones(m * k, dtype=bool)
            Ok, maskk, mu0k = O[np.ix_(keep, keep)], mask[np.ix_(keep, keep)], mu0[keep]
            shape = mu0k.shape

            def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
                f, g = moment_matching_objective(x.reshape(shape), Ok, p, maskk, mu0k, self.l2)
                return f, g.ravel()

            solver = self.solver
            if solver == "auto":
                solver = "newton" if mu0k.size <= _NEWTON_MAX_VARS else "l-bfgs-b+newton-cg"
            x, x0, nit, messages, used = None, mu0k.ravel(), 0, [], solver
            if solver == "l-bfgs-b+newton-cg":  # well-conditioned problems end here, cheaply
                x0, it, msg = _lbfgsb(fun, x0, self.tol, min(self.max_iter, _LBFGSB_FIRST_ITERS))
                nit, used = nit + it, "l-bfgs-b"
                messages.append(msg)
                if _projected_grad_norm(x0, fun(x0)[1]) < self.tol:
                    x = x0
            if x is None and solver != "l-bfgs-b":
                if solver == "newton":  # dense Hessian, Cholesky-checked Newton steps
                    direction = _cholesky_direction(
                        lambda z: moment_matching_hessian(z.reshape(shape), Ok, p, maskk, self.l2))
                else:  # matrix-free: Hessian-vector products and conjugate gradients
                    direction = _cg_direction(
                        lambda z, v: moment_matching_hvp(z.reshape(shape), v.reshape(shape), Ok, p, maskk,
                                                         self.l2).ravel(),
                        lambda z: _hessian_diagonal(z.reshape(shape), p, maskk, self.l2).ravel())
                xn, it, msg = _projected_newton(fun, direction, x0, self.tol, min(self.max_iter, 200))
                nit, used = nit + it, solver
                messages.append(msg)
                if solver != "newton":
                    self.fit_report_["cg_iter"] = direction.cg_iter
                if msg == "converged":
                    x = xn
            if x is None:  # asked for, or Newton did not reach the tolerance: L-BFGS-B
                x, it, msg = _lbfgsb(fun, x0, self.tol, self.max_iter)
                nit, used = nit + it, "l-bfgs-b" if solver in ("newton", "l-bfgs-b") else f"{solver}+l-bfgs-b"
                messages.append(msg)
            message = "; ".join(messages)
            mu = np.zeros_like(mu0)
            mu[keep] = np.clip(x.reshape(shape), 0.0, 1.0)
            f, g = moment_matching_objective(mu, O, p, mask, mu0, self.l2)
            pg = _projected_grad_norm(mu, g)
        self.mu_ = mu
        self.fit_report_.update(converged=bool(pg < max(self.tol, 1e-7) or messages[-1] == "converged"), n_iter=nit,
                                objective=f, initial_objective=f0, proj_grad_norm=pg, init=init,
                                solver=used, optimizer_message=message, n_free_rows=int(keep.sum()),
                                stat_rows=int(n if collapsed is None else collapsed[0].shape[0]))
        acc = self.lf_accuracies
        if np.nanmean(acc) < 1.0 / k:
            self.fit_report_["warning"] = ("mean estimated LF accuracy is below chance: the solution may be "
                                           "label-swapped; check the class balance and the LFs.")

