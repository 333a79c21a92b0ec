"""``metal_compat``: the fixed-step MeTaL recipe that Weaver's reference code runs (arXiv 2506.18203, spec Step 5).

Weaver (Saad-Falcon et al., arXiv 2506.18203) aggregates binarised verifier votes with the MeTaL label model
(Ratner et al., arXiv 1810.02840) as patched in the ``metal-ama`` fork. This module reproduces that *training
recipe* natively in NumPy (written from the spec's equations, no reference code), so published numbers can be
matched; :class:`~lightning_ws.labelmodels.MomentMatching` solves the same kind of objective to convergence and is
what we recommend otherwise.

Notation: ``m`` LFs (verifiers), ``k`` classes, ``psi(x) in {0,1}^{m k}`` the one-hot votes (an abstain is an
all-zero block), ``O = (1/n) sum_x psi psi^T``, ``mu[(i, a), y] = P(lambda_i = a | Y = y)``, ``P = diag(p)``.

Objective (no dependencies)::

    L(mu) = ||M * (O - mu P mu^T)||_F^2 + ||mu p - diag(O)||^2
            + w_col * sum_i sum_y (1 - sum_a mu[(i, a), y])^2 + l2 * ||mu - mu0||_F^2

with ``M`` masking each LF's own ``k x k`` diagonal block, ``w_col = 10`` (the metal-ama column-sum penalty) and
``l2 = 0``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lightning_ws.errors import ConfigError
from lightning_ws.labelmodels.base import _check_float, _check_int
from lightning_ws.labelmodels.matrix import overlap_matrix
from lightning_ws.labelmodels.moment_matching import MuLabelModel

__all__ = ["MetalCompat", "metal_compat_loss", "metal_compat_objective", "metal_compat_init", "metal_compat_init_scale"]


def metal_compat_init_scale(seed: int) -> float:
    """The random scale ``r`` of the reference init: the first ``random()`` draw of a legacy MT19937 seeded ``seed``.

    The reference multiplies its initial ``mu`` by one draw of NumPy's *global* generator, which MeTaL seeds with the
    model seed (0) at construction, so ``r = 0.5488...`` when nothing else drew first. We draw the same number from a
    private ``np.random.RandomState(seed)`` (the global generator is never touched).
    """
    return float(np.random.RandomState(int(seed)).random_sample())


def metal_compat_init(O: np.ndarray, p: np.ndarray, k: int, prec_init: float = 0.7, scale: float = 1.0) -> np.ndarray:
    """Reference initial ``mu``: ``mu0[(i, a), a] = clip(P(lambda_i = a) * prec_init / p_a, 0, 1)``, times ``scale``.

    Off-"diagonal" entries ``mu0[(i, a), y != a]`` are 0. ``P(lambda_i = a)`` is ``diag(O)``.

    Returns:
        ``(m k, k)`` float64.
    """
    mk = O.shape[0]
    m = mk // k
    marg = np.diag(O).reshape(m, k)
    mu = np.zeros((mk, k))
    for a in range(k):
        mu[np.arange(m) * k + a, a] = np.clip(marg[:, a] * prec_init / p[a], 0.0, 1.0)
    return mu * float(scale)


def metal_compat_loss(mu: Any, O: Any, p: Any, mask: Any, *, col_weight: float = 10.0, l2: float = 0.0,
                      mu_init: Any = None) -> Any:
    """The metal-ama objective ``L(mu)`` (module docstring) as a differentiable torch scalar (for autograd checks).

    Args:
        mu: ``(m k, k)`` tensor (requires grad when used for training).
        O: ``(m k, m k)`` overlap matrix; ``p``: ``(k,)`` class balance; ``mask``: off-diagonal-block mask.
        col_weight: weight of the column-sum penalty (metal-ama: 10).
        l2: weight of ``||mu - mu_init||^2`` (reference: 0).
    """
    k = mu.shape[1]
    mup = mu * p[None, :]
    loss = ((mask * (O - mup @ mu.T)) ** 2).sum() + ((mu @ p - O.diagonal()) ** 2).sum()
    col = mu.reshape(-1, k, k).sum(dim=1)  # (m, y): sum over the vote a of mu[(i, a), y]
    loss = loss + col_weight * ((1.0 - col) ** 2).sum()
    if l2 > 0 and mu_init is not None:
        loss = loss + l2 * ((mu - mu_init) ** 2).sum()
    return loss


def metal_compat_objective(mu: np.ndarray, O: np.ndarray, p: np.ndarray, mask: np.ndarray, *,
                           col_weight: float = 10.0, l2: float = 0.0,
                           mu_init: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """NumPy value and closed-form gradient of :func:`metal_compat_loss` (what :class:`MetalCompat` optimises).

    With ``R = M * (mu P mu^T - O)`` (symmetric), ``d = mu p - diag(O)`` and ``c[i, y] = sum_a mu[(i, a), y]``:
    ``grad = 4 R mu P + 2 d p^T - 2 w_col (1 - c)[i(row), y] + 2 l2 (mu - mu_init)``.
    """
    k = mu.shape[1]
    mup = mu * p[None, :]
    R = mask * (mup @ mu.T - O)
    d = mu @ p - np.diag(O)
    col = mu.reshape(-1, k, k).sum(axis=1)
    f = float((R * R).sum() + d @ d + col_weight * ((1.0 - col) ** 2).sum())
    grad = 4.0 * (R @ mup) + 2.0 * np.outer(d, p) + np.repeat(-2.0 * col_weight * (1.0 - col), k, axis=0)
    if l2 > 0 and mu_init is not None:
        f += l2 * float(((mu - mu_init) ** 2).sum())
        grad = grad + 2.0 * l2 * (mu - mu_init)
    return f, grad


class MetalCompat(MuLabelModel):
    """Weaver's reference label-model recipe, reproduced exactly (arXiv 2506.18203 Step 5; MeTaL arXiv 1810.02840).

    Fit: full-batch SGD with momentum 0.9 (PyTorch convention: ``v <- 0.9 v + g``, ``mu <- mu - lr v``), lr 1e-5,
    1000 steps on :func:`metal_compat_loss` (closed-form gradient :func:`metal_compat_objective`, NumPy) from
    :func:`metal_compat_init` scaled by one random scalar ``r``; ``mu`` is clamped to ``[0, 1]`` after every step. Inference: naive Bayes
    ``P(Y = y | votes) ∝ p_y prod_{i votes} clip(mu[(i, lambda_i), y], 0.01, 0.99)`` (abstains contribute nothing).

    This is deliberately *not* converged (spec §3.3: parameter error ~0.07-0.09 vs ~0.01 at convergence); use it to
    match published Weaver numbers, and :class:`~lightning_ws.labelmodels.MomentMatching` otherwise.

    Where we differ from the reference code, and why:

    * ``r`` comes from a private ``np.random.RandomState(seed)`` (same value as the reference's seeded *global*
      draw, :func:`metal_compat_init_scale`), or is given via ``init_scale``; the global RNG is never used;
    * float64 throughout (the reference uses float32), so results are reproducible across BLAS builds;
    * class balance: a given / dev prior is used as is; if any entry is exactly 0 it is clipped into
      ``[0.01, 0.99]`` and renormalised (the reference clips only in that case too). Without labels the reference
      falls back to ``p = uniform``; that is ``class_balance_estimator="uniform"`` (default). ``"em"`` instead
      estimates ``p`` label-free with Dawid-Skene EM (our addition, recorded in ``fit_report_``);
    * abstains (``-1``) are all-zero one-hot blocks (the reference turns a missing score into a 0 vote instead).

    Args:
        num_classes: ``k`` (the reference uses 2).
        lr: SGD learning rate (reference 1e-5).
        n_epochs: full-batch steps (reference 1000).
        momentum: SGD momentum (reference 0.9).
        prec_init: precision of the initial ``mu`` (reference 0.7).
        col_weight: column-sum penalty weight (metal-ama: 10).
        l2: centred l2 weight (reference 0).
        init_scale: the scalar ``r``; ``None`` (default) draws it from ``RandomState(seed)`` as the reference does.
        proba_clip: clamp of ``mu`` at inference (reference 0.01).
        class_balance_estimator: ``"uniform"`` (reference) or ``"em"``, used only for ``class_balance="estimated"``.
        seed: seed of ``r`` and of tie-breaking.
    """

    name = "metal_compat"
    min_lfs = 1

    def __init__(self, num_classes: int | None = None, *, lr: float = 1e-5, n_epochs: int = 1000,
                 momentum: float = 0.9, prec_init: float = 0.7, col_weight: float = 10.0, l2: float = 0.0,
                 init_scale: float | None = None, proba_clip: float = 0.01, class_balance_estimator: str = "uniform",
                 seed: int = 0) -> None:
        super().__init__(num_classes, seed=seed)
        self.lr = _check_float("lr", lr, 0.0, low_open=True)
        self.n_epochs = _check_int("n_epochs", n_epochs, 0)
        self.momentum = _check_float("momentum", momentum, 0.0, 0.999999)
        self.prec_init = _check_float("prec_init", prec_init, 0.0, 1.0, low_open=True)
        self.col_weight = _check_float("col_weight", col_weight, 0.0)
        self.l2 = _check_float("l2", l2, 0.0)
        self.init_scale = None if init_scale is None else _check_float("init_scale", init_scale, 0.0, low_open=True)
        self.proba_clip = _check_float("proba_clip", proba_clip, 0.0, 0.499)
        if class_balance_estimator not in ("uniform", "em"):
            raise ConfigError(f"class_balance_estimator must be 'uniform' (reference) or 'em', got "
                              f"{class_balance_estimator!r}.")
        self.class_balance_estimator = class_balance_estimator

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments."""
        return {**super().get_config(), "lr": self.lr, "n_epochs": self.n_epochs, "momentum": self.momentum,
                "prec_init": self.prec_init, "col_weight": self.col_weight, "l2": self.l2,
                "init_scale": self.init_scale, "proba_clip": self.proba_clip,
                "class_balance_estimator": self.class_balance_estimator}

    def _fit(self, L: np.ndarray, dev_L: np.ndarray | None, dev_y: np.ndarray | None) -> None:
        k = self.k_
        if self.class_balance_ is None:
            if self.class_balance_estimator == "em":
                from lightning_ws.labelmodels.majority import _em_class_balance

                self.class_balance_ = _em_class_balance(L, k, self.seed).class_balance_
            else:
                self.class_balance_ = np.full(k, 1.0 / k)
            self.fit_report_["class_balance_estimator"] = self.class_balance_estimator
        p = np.asarray(self.class_balance_, dtype=np.float64)
        if (p < 1e-9).any():  # an entry given as 0 (resolve_class_balance floors it at 1e-12)
            p = np.clip(p, 0.01, 0.99)
            p = p / p.sum()
            self.fit_report_["class_balance_clipped"] = True
        self.class_balance_ = p
        O = overlap_matrix(L, k)
        r = metal_compat_init_scale(self.seed) if self.init_scale is None else self.init_scale
        mu0 = metal_compat_init(O, p, k, self.prec_init, 1.0)
        m = L.shape[1]
        lf = np.repeat(np.arange(m), k)
        mask = (lf[:, None] != lf[None, :]).astype(np.float64)
        mu = mu0 * r
        buf = np.zeros_like(mu)
        loss0 = None
        for _ in range(self.n_epochs):  # torch.optim.SGD(momentum, dampening 0): buf <- m buf + g; mu <- mu - lr buf
            f, g = metal_compat_objective(mu, O, p, mask, col_weight=self.col_weight, l2=self.l2, mu_init=mu0)
            if loss0 is None:
                loss0 = f
            buf = self.momentum * buf + g
            mu = np.clip(mu - self.lr * buf, 0.0, 1.0)
        f, g = metal_compat_objective(mu, O, p, mask, col_weight=self.col_weight, l2=self.l2, mu_init=mu0)
        g = np.where(((mu <= 0) & (g > 0)) | ((mu >= 1) & (g < 0)), 0.0, g)
        self.mu_ = mu
        self.fit_report_.update(converged=False, n_iter=self.n_epochs, init_scale=r,
                                initial_loss=float(f if loss0 is None else loss0), objective=float(f),
                                proj_grad_norm=float(np.abs(g).max()),
                                recipe="sgd(momentum) fixed steps, clamp [0,1], column-sum penalty")
