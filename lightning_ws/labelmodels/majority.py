"""Majority vote and accuracy-weighted (log-odds) majority vote."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from lightning_ws.errors import ConfigError, DataError
from lightning_ws.labelmodels.base import (
    LabelModel,
    _check_float,
    _check_int,
    _to_numpy,
    confusions_from_soft_labels,
    mv_proba,
    normalize_log,
)
from lightning_ws.labelmodels.matrix import ABSTAIN, _lf_class_vote_counts, _row_chunks, covered_mask

__all__ = ["MajorityVote", "WeightedMajorityVote", "estimate_class_balance"]

_PRIOR_FLOOR = 1e-3


def _floor_normalize(p: np.ndarray, floor: float = _PRIOR_FLOOR) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), floor, None)
    return p / p.sum()


def estimate_class_balance(L: Any, num_classes: int | None = None, method: str = "em", *, seed: int = 0) -> np.ndarray:
    """Label-free estimate of ``P(Y)`` from a label matrix.

    Args:
        L: ``n x m`` label matrix.
        num_classes: ``k`` (inferred when ``None``).
        method: ``"em"`` - the prior fitted by Dawid-Skene EM (Dawid & Skene 1979; consistent when LFs are
            conditionally independent given ``Y``; SQUAREM-accelerated on small / pattern-collapsed matrices, same
            fixed point and stopping test as plain EM); ``"mv"`` - the mean majority-vote share over rows with at least
            one vote (biased toward the classes the LFs vote most often).
        seed: seed passed to the EM model.

    Returns:
        ``(k,)`` probabilities, floored at 1e-3 and renormalised.
    """
    if method == "mv":
        return MajorityVote(num_classes, seed=seed).fit(L, "estimated").class_balance_
    if method == "em":
        return _em_class_balance(L, num_classes, seed).class_balance_
    raise ConfigError(f"method must be 'em' or 'mv', got {method!r}.")


def _em_class_balance(L: Any, num_classes: int | None, seed: int, collapsed: Any = "auto") -> Any:
    """The fitted (accelerated) Dawid-Skene model behind the ``"em"`` estimate (its ``class_balance_``).

    ``collapsed`` passes :func:`collapse_rows` of ``L`` when the caller already has it.
    """
    from lightning_ws.labelmodels.dawid_skene import DawidSkene

    ds = DawidSkene(num_classes, accelerate=True, seed=seed)
    ds._internal = True  # the calling model reports dependent LFs itself
    if not isinstance(collapsed, str):
        ds._collapsed_hint = collapsed
    return ds.fit(L, "estimated")


class MajorityVote(LabelModel):
    """Majority vote: ``P(Y = c | votes)`` = share of the non-abstaining votes that say ``c``.

    The baseline every comparison must include (WRENCH, arXiv 2109.11377). Probabilities are *not* weighted by the
    class balance; the class balance only serves all-abstain rows (which get it, flagged by ``covered_mask``) and the
    ``"prior"`` tie policy. ``class_balance="estimated"`` (the default without ``dev_y``) is the mean vote share over
    covered rows, floored at 1e-3.

    ``lf_accuracies`` / ``lf_confusions`` are diagnostics: each LF's agreement with the majority-vote soft labels on
    the fit data (majority vote itself has no per-LF parameters).

    Args:
        num_classes: ``k`` (inferred when ``None``).
        seed: seed of the tie-breaking generator.

    Example:
        >>> import numpy as np
        >>> mv = MajorityVote().fit(np.array([[0, 0, 1], [1, 1, -1], [-1, -1, -1]]), "uniform")
        >>> mv.predict_proba(np.array([[0, 0, 1]])).round(3).tolist()
        [[0.667, 0.333]]
    """

    name = "majority_vote"
    _param_names = ("confusions_",)

    def _fit(self, L: np.ndarray, dev_L: np.ndarray | None, dev_y: np.ndarray | None) -> None:
        q = mv_proba(L, self.k_)
        cov = covered_mask(L)
        if self.class_balance_ is None:
            self.class_balance_ = _floor_normalize(q[cov].mean(axis=0) if cov.any() else np.ones(self.k_))
        q[~cov] = self.class_balance_
        self.confusions_ = confusions_from_soft_labels(L, q, smoothing=1e-9)

    def _proba_covered(self, L: np.ndarray) -> np.ndarray:
        return mv_proba(L, self.k_)

    def _lf_confusions(self) -> np.ndarray:
        return self.confusions_.copy()


class WeightedMajorityVote(LabelModel):
    """Accuracy-weighted majority vote: naive Bayes under the one-coin model (each LF is right with probability
    ``a_j`` and otherwise votes uniformly among the other ``k - 1`` classes).

    ``P(Y = c | votes) ∝ p_c * exp(sum_{j votes c} w_j)`` with log-odds weights ``w_j = log(a_j (k - 1) / (1 - a_j))``
    (the optimal weights of Nitzan & Paroush, 1982, for independent voters). This is *not*
    WRENCH's ``MajorityWeightedVoting``, which weights by the class prior only (arXiv 2109.11377, spec §3).

    Accuracies come from, in this order: ``accuracies`` given to the constructor (``accuracy_source="given"``);
    ``dev_L``/``dev_y`` passed to ``fit`` (``"dev"``: ``(correct + 1) / (votes + 2)`` on the dev set); otherwise a
    label-free estimate (``"estimated"``): the LF accuracies implied by a :class:`DawidSkene` EM fit (consistent
    under conditional independence; a simpler "agreement with the leave-one-out weighted vote" iteration we tried is
    biased toward 0.5 and was dropped). Accuracies are clipped to ``[1e-3, 1 - 1e-3]`` before taking log-odds. With
    ``class_balance="estimated"`` the prior is the EM prior (label-free accuracies) or the mean posterior over
    covered rows (given / dev accuracies).

    Limitation (imbalanced classes): the accuracy behind a weight is a precision, ``P(Y = vote | vote)``, which already
    contains the class prior, and the prior is added once more. A rule for a rare class that is right less often than
    ``1 / k`` gets a negative weight even when it fires far more on its class than on the others (precision above the
    prior), so that class can vanish: positive-class F1 0 on synthetic spouse- and tennis-shaped matrices. ``fit``
    warns and lists such LFs in ``fit_report_["votes_against_own_class"]`` (on WRENCH SMS train, label-free, 6 of 73
    spam rules; WMV's test spam F1 is 21.3 against majority vote's 41.9). A naive-Bayes correction that counts the prior
    once (weight ``logit(a) - logit(p_vote)``) was tried in session 30 and not adopted: it fixed the binary
    imbalanced shapes (spouse F1 27 -> 59, SMS test +9) but lost 14 F1 on census-shaped matrices, where the ignored
    abstains matter, and 20 points on TREC with dev accuracies (``benchmarks/diag_wmv_prior.py``, ``BENCHMARKS.md``). Dawid-Skene and moment matching
    model each class's firing rates and abstains, and ``auto`` chooses among them.

    Args:
        num_classes: ``k``.
        accuracies: optional ``(m,)`` known LF accuracies in ``(0, 1)``.
        max_iter: EM iterations of the label-free estimate (default 1000).
        tol: EM tolerance of the label-free estimate (default 1e-5).
        seed: seed of the tie-breaking generator.
    """

    assumes_independence = True
    name = "weighted_majority_vote"
    _param_names = ("accuracies_",)

    def __init__(self, num_classes: int | None = None, *, accuracies: Any = None, max_iter: int = 1000,
                 tol: float = 1e-5, seed: int = 0) -> None:
        super().__init__(num_classes, seed=seed)
        self.accuracies = None
        if accuracies is not None:
            acc = np.asarray(_to_numpy(accuracies, "accuracies"), dtype=np.float64).reshape(-1)
            if not np.all((acc > 0) & (acc < 1)):
                raise ConfigError(f"accuracies must lie strictly between 0 and 1, got {acc.tolist()}.")
            self.accuracies = acc
        self.max_iter = _check_int("max_iter", max_iter, 1)
        self.tol = _check_float("tol", tol, 0.0, low_open=True)
        self.accuracy_source: str | None = None

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments."""
        return {**super().get_config(), "accuracies": None if self.accuracies is None else self.accuracies.tolist(),
                "max_iter": self.max_iter, "tol": self.tol}

    def _weights(self, acc: np.ndarray) -> np.ndarray:
        a = np.clip(acc, 1e-3, 1 - 1e-3)
        return np.log(a * (self.k_ - 1) / (1 - a))

    def _scores(self, L: np.ndarray, w: np.ndarray, prior: np.ndarray, sl: slice) -> np.ndarray:
        block = L[sl]
        S = np.tile(np.log(prior), (block.shape[0], 1))
        for c in range(self.k_):
            S[:, c] += (block == c).astype(np.float64) @ w
        return S

    def _fit(self, L: np.ndarray, dev_L: np.ndarray | None, dev_y: np.ndarray | None) -> None:
        n, m = L.shape
        k = self.k_
        if self.accuracies is not None:
            if self.accuracies.shape[0] != m:
                raise DataError(f"accuracies has {self.accuracies.shape[0]} entries but L has {m} LFs.")
            self.accuracies_, self.accuracy_source = self.accuracies.copy(), "given"
        elif dev_L is not None:
            votes = dev_L != ABSTAIN
            correct = ((dev_L == dev_y[:, None]) & votes).sum(axis=0)
            self.accuracies_, self.accuracy_source = (correct + 1.0) / (votes.sum(axis=0) + 2.0), "dev"
        else:
            self.accuracy_source = "estimated"
        if self.accuracy_source == "estimated":
            from lightning_ws.labelmodels.dawid_skene import DawidSkene

            ds = DawidSkene(k, max_iter=self.max_iter, tol=self.tol, seed=self.seed)
            ds._internal = True  # dependent LFs were reported by this model's fit
            ds.fit(L, self.class_balance_ if self.class_balance_ is not None else "estimated")
            self.accuracies_ = ds.lf_accuracies
            self.fit_report_.update(converged=ds.fit_report_["converged"], n_iter=ds.fit_report_["n_iter"])
            if self.class_balance_ is None:
                self.class_balance_ = ds.class_balance_
        elif self.class_balance_ is None:
            cov = covered_mask(L)
            w = self._weights(self.accuracies_)
            prior = np.full(k, 1.0 / k)
            post = np.concatenate([normalize_log(self._scores(L, w, prior, sl))[0] for sl in _row_chunks(n, m)])
            self.class_balance_ = _floor_normalize(post[cov].mean(axis=0) if cov.any() else np.ones(k))
        self.fit_report_["accuracy_source"] = self.accuracy_source
        self._warn_against_own_class(L)

    def _warn_against_own_class(self, L: np.ndarray) -> None:
        """Warn about LFs whose votes count *against* the class they name although they beat that class's prior.

        The one-coin weight ``log(a (k - 1) / (1 - a))`` is negative when the accuracy ``a`` (here a precision,
        ``P(Y = vote | vote)``) is below ``1 / k``, and the class prior is added on top. With imbalanced classes a
        rule for a rare class is often right less than half the time while still firing far more on that class than
        on the others (precision above the prior): its votes carry evidence *for* the class, but the one-coin
        weights count them against it, so such a class can vanish from the predictions (synthetic spouse- and
        tennis-shaped matrices, ``diag_wrench_shapes.py``'s seeds 80-82: positive-class F1 0). ``fit_report_``
        lists the LFs under ``"votes_against_own_class"``.
        """
        k = self.k_
        a = self.accuracies_
        counts = _lf_class_vote_counts(L, k).astype(np.float64)  # votes per LF and class
        fired = counts.sum(axis=1)
        if not fired.any():
            return
        share = counts / np.maximum(fired, 1)[:, None]
        prior_voted = share @ np.asarray(self.class_balance_, dtype=np.float64)  # the prior of the classes it names
        bad = np.flatnonzero((fired > 0) & (self._weights(a) < -1e-9) & (a > prior_voted))
        self.fit_report_["votes_against_own_class"] = bad.tolist()
        if bad.size:
            names = [self.lf_names_[j] if self.lf_names_ else f"LF {j}" for j in bad[:5]]
            more = f" and {bad.size - 5} more" if bad.size > 5 else ""
            j = int(bad[0])
            warnings.warn(
                f"WeightedMajorityVote: {bad.size} of {L.shape[1]} labeling functions ({', '.join(names)}{more}) are "
                f"right more often than their class's prior (e.g. {names[0]}: precision {a[j]:.2f}, prior "
                f"{prior_voted[j]:.2f}) but below 1/k = {1 / k:.2f}, so the one-coin weights count their votes "
                f"against the class they name and that class can vanish from the predictions. This happens with "
                f"imbalanced classes; use dawid_skene, moment_matching or auto, which model each class's firing "
                f"rates.", UserWarning, stacklevel=3)

    def _proba_covered(self, L: np.ndarray) -> np.ndarray:
        w = self._weights(self.accuracies_)
        n, m = L.shape
        return np.concatenate([normalize_log(self._scores(L, w, self.class_balance_, sl))[0]
                               for sl in _row_chunks(n, m)])

    def _extra_state(self) -> dict[str, Any]:
        return {"accuracy_source": self.accuracy_source}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        self.accuracy_source = extra.get("accuracy_source")

    @property
    def lf_accuracies(self) -> np.ndarray:
        """``(m,)`` the accuracies behind the weights."""
        self._check_fitted()
        return self.accuracies_.copy()

    def _lf_confusions(self) -> np.ndarray:
        """One-coin confusions; abstain probabilities are not modelled (column 0 = 0)."""
        m, k = self.num_lfs_, self.k_
        a = self.accuracies_
        conf = np.zeros((m, k, k + 1))
        off = (1 - a) / (k - 1)
        conf[:, :, 1:] = off[:, None, None]
        for y in range(k):
            conf[:, y, y + 1] = a
        return conf
