"""The :class:`LabelModel` interface shared by every label model, plus the vectorised kernels they use.

A label model aggregates the votes of ``m`` labeling functions (LFs) into class probabilities (data programming,
Ratner et al., arXiv 1605.07723). Every model here follows one contract:

* ``fit(L, class_balance=None, *, dev_L=None, dev_y=None, lf_names=None) -> self``;
* ``predict_proba(L) -> (n, k)`` float64 rows summing to 1; rows where every LF abstains get the class balance and
  are flagged by :meth:`LabelModel.covered_mask` (``predict(..., abstain_uncovered=True)`` returns ``-1`` for them);
* ``predict(L, tie_break=...)`` with an explicit, seeded tie policy;
* ``lf_accuracies`` ``(m,)`` and ``lf_confusions`` ``(m, k, k + 1)`` where ``lf_confusions[j, y, l + 1]`` is
  ``P(lambda_j = l | Y = y)`` for ``l in -1..k-1`` (column 0 is the abstain probability); rows sum to 1;
* ``save(path)`` / ``LabelModel.load(path)``: a folder with ``label_model.json`` and ``label_model.safetensors``
  (float64, exact round trip, no pickle).

The class balance ``P(Y)`` has an explicit, recorded source (``class_balance_source``): ``"given"`` (an array you
pass, e.g. an oracle), ``"uniform"``, ``"dev"`` (add-one smoothed frequencies of ``dev_y``) or ``"estimated"``
(label-free, model specific). Most published WRENCH numbers silently use dev gold labels here (``JieyuZ2/wrench#17``).
"""

from __future__ import annotations

import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lightning_ws.errors import ConfigError, DataError
from lightning_ws.io import to_jsonable as _jsonable
from lightning_ws.labelmodels.matrix import (
    ABSTAIN,
    _row_chunks,
    _to_numpy,
    covered_mask,
    validate_gold_labels,
    validate_label_matrix,
    vote_counts,
)

__all__ = ["LabelModel", "TIE_BREAKS", "CLASS_BALANCE_MODES", "SCORE_METRICS", "resolve_class_balance", "probs_to_preds",
           "score_predictions"]

#: Tie policies accepted by :meth:`LabelModel.predict`.
TIE_BREAKS = ("random", "first", "prior", "abstain")
#: String modes accepted as ``class_balance``.
CLASS_BALANCE_MODES = ("uniform", "dev", "estimated")
#: Metrics accepted by :meth:`LabelModel.score` and :func:`score_predictions`.
SCORE_METRICS = ("accuracy", "f1", "coverage")
_FORMAT_VERSION = 1
_REGISTRY: dict[str, type[LabelModel]] = {}


def score_predictions(y_true: Any, y_pred: Any, metric: str, pos_label: int = 1) -> float:
    """``accuracy``, binary ``f1`` of ``pos_label`` or ``coverage`` (fraction of rows with a prediction) of hard
    labels; a prediction of ``-1`` counts as wrong / not positive (it is not dropped). NaN on zero rows."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if metric not in SCORE_METRICS:
        raise ConfigError(f"metric must be one of {SCORE_METRICS}, got {metric!r}.")
    if y_true.size == 0:
        return float("nan")
    if metric == "accuracy":
        return float((y_true == y_pred).mean())
    if metric == "coverage":
        return float((y_pred != ABSTAIN).mean())
    tp = float(((y_pred == pos_label) & (y_true == pos_label)).sum())
    fp = float(((y_pred == pos_label) & (y_true != pos_label)).sum())
    fn = float(((y_pred != pos_label) & (y_true == pos_label)).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def single_thread_blas() -> Any:
    """Context manager: BLAS limited to one thread while a label model solves its small dense problems.

    The moment-matching solves and ``auto``'s selection run thousands of products of ``(m k) x (m k)`` matrices
    with ``m k`` in the hundreds or low thousands; a multi-threaded BLAS spends more on waking its threads than on
    the work. Measured on the 2-core machine with numpy's default 2 threads: a 164-LF, 9-class matrix took 6.7 s in
    ``auto`` against 1.4 s with one thread, and 5.9 s against 1.7 s in MomentMatching (``BENCHMARKS.md``). Uses
    ``threadpoolctl`` (a declared dependency). Process-wide while it is active, restored on exit.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}.")
    return int(value)


def _check_float(name: str, value: Any, low: float, high: float = float("inf"), *, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not np.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}.")
    if value < low or value > high or (low_open and value == low):
        rng = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise ConfigError(f"{name} must lie in {rng}, got {value!r}.")
    return float(value)


def resolve_class_balance(class_balance: Any, k: int, dev_y: np.ndarray | None) -> tuple[np.ndarray | None, str]:
    """Turn the ``class_balance`` argument into ``(p or None, source)``.

    ``None`` means ``"dev"`` when ``dev_y`` is given, else ``"estimated"``. ``"estimated"`` returns ``p=None``
    (the model estimates it). An array must have ``k`` non-negative entries summing to 1 (within 1e-3; it is then
    renormalised, and a zero entry is floored at 1e-12). ``"dev"`` uses ``(count_c + 1) / (n_dev + k)``: add-one
    smoothing that, unlike WRENCH's ``(count + 1) / n`` helper, sums to 1.
    """
    if class_balance is None:
        class_balance = "dev" if dev_y is not None else "estimated"
    if isinstance(class_balance, str):
        if class_balance == "uniform":
            return np.full(k, 1.0 / k), "uniform"
        if class_balance == "estimated":
            return None, "estimated"
        if class_balance == "dev":
            if dev_y is None:
                raise ConfigError("class_balance='dev' needs dev_y (gold labels of a small labelled dev set); pass "
                                  "dev_y=... or use class_balance='estimated' for a label-free estimate.")
            counts = np.bincount(dev_y, minlength=k).astype(np.float64)
            return (counts + 1.0) / (counts.sum() + k), "dev"
        raise ConfigError(f"class_balance must be an array of {k} probabilities or one of "
                          f"{CLASS_BALANCE_MODES}, got {class_balance!r}.")
    if isinstance(class_balance, (int, np.integer)) and not isinstance(class_balance, bool):
        raise ConfigError(f"class_balance got the integer {int(class_balance)}; it takes {k} probabilities (one per "
                          f"class) or one of {CLASS_BALANCE_MODES}. To set the number of classes, pass it to the "
                          f"model instead: make_label_model(name, num_classes={int(class_balance)}) (snorkel's "
                          f"cardinality).")
    p = np.asarray(_to_numpy(class_balance, "class_balance"), dtype=np.float64).reshape(-1)
    if p.shape[0] != k or not np.all(np.isfinite(p)) or (p < 0).any():
        raise ConfigError(f"class_balance must hold {k} finite non-negative probabilities (one per class), got "
                          f"{p.tolist()}.")
    if abs(p.sum() - 1.0) > 1e-3:
        raise ConfigError(f"class_balance must sum to 1, got {p.tolist()} (sum {p.sum():.6f}).")
    # A zero entry ("this class does not occur") is floored at 1e-12: the models work with log priors, which stay
    # finite, and the class still never wins unless every vote says it.
    p = np.maximum(p / p.sum(), 1e-12)
    return p / p.sum(), "given"


# ----------------------------------------------------------------------------------------------------------------
# Vectorised kernels over the label matrix (chunked over rows; float64).
# ----------------------------------------------------------------------------------------------------------------

def onehot_with_abstain(block: np.ndarray, k: int) -> Any:
    """Sparse CSR ``(rows, m (k + 1))`` one-hot of a row block: column ``j (k + 1) + l + 1`` is ``1[L_ij = l]``.

    Every row has exactly ``m`` non-zeros, so the CSR is built without sorting. Sparse products avoid dense BLAS on
    a 1/(k+1)-dense matrix (and its multi-threading overheads on busy machines).
    """
    from scipy.sparse import csr_matrix

    r, m = block.shape
    idx = (np.arange(m, dtype=np.int32)[None, :] * (k + 1) + block.astype(np.int32) + 1).ravel()
    indptr = np.arange(0, r * m + 1, m, dtype=np.int64 if r * m >= 2**31 else np.int32)
    return csr_matrix((np.ones(r * m, dtype=np.float64), idx, indptr), shape=(r, m * (k + 1)))


def vote_loglik(L: np.ndarray, logtab: np.ndarray, *, chunk: slice | None = None,
                X: np.ndarray | None = None) -> np.ndarray:
    """``S[i, y] = sum_j logtab[j, y, L[i, j] + 1]`` for the rows in ``chunk`` (all rows by default).

    ``logtab`` is ``(m, k, k + 1)``; put zeros in column 0 to make abstains uninformative. ``X`` may pass the
    precomputed :func:`onehot_with_abstain` of the same rows.
    """
    m, k = logtab.shape[0], logtab.shape[1]
    if X is None:
        X = onehot_with_abstain(L if chunk is None else L[chunk], k)
    return np.asarray(X @ logtab.transpose(0, 2, 1).reshape(m * (k + 1), k))


def soft_counts(L: np.ndarray, q: np.ndarray, *, chunk: slice | None = None,
                X: np.ndarray | None = None) -> np.ndarray:
    """``C[j, y, l + 1] = sum_i q[i, y] 1[L[i, j] = l]`` (``(m, k, k + 1)``) for the rows in ``chunk``."""
    k = q.shape[1]
    if X is None:
        X = onehot_with_abstain(L if chunk is None else L[chunk], k)
    m = X.shape[1] // (k + 1)
    return np.asarray(X.T @ q).reshape(m, k + 1, k).transpose(0, 2, 1)


def normalize_log(S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise softmax of log-scores; returns ``(probabilities, logsumexp)``."""
    mx = S.max(axis=1, keepdims=True)
    e = np.exp(S - mx)
    z = e.sum(axis=1, keepdims=True)
    return e / z, (np.log(z) + mx)[:, 0]


def posterior_from_logtab(L: np.ndarray, logtab: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Naive-Bayes posterior ``P(Y | votes) ∝ prior_y * exp(sum_j logtab[j, y, L_ij + 1])`` over all rows."""
    n, m = L.shape
    out = np.empty((n, prior.shape[0]), dtype=np.float64)
    logp = np.log(np.clip(prior, 1e-300, None))
    for sl in _row_chunks(n, m):
        out[sl], _ = normalize_log(vote_loglik(L, logtab, chunk=sl) + logp)
    return out


def mv_proba(L: np.ndarray, k: int) -> np.ndarray:
    """Majority-vote probabilities (vote shares); all-abstain rows get a uniform row."""
    out = vote_counts(L, k)
    tot = out.sum(axis=1, keepdims=True)
    np.divide(out, tot, out=out, where=tot > 0)
    out[tot[:, 0] == 0] = 1.0 / k
    return out


def confusions_from_soft_labels(L: np.ndarray, q: np.ndarray, smoothing: float = 0.0) -> np.ndarray:
    """Empirical ``P(lambda_j = l | Y = y)`` under soft labels ``q`` (``(m, k, k + 1)``, abstain in column 0)."""
    n, m = L.shape
    C = np.zeros((m, q.shape[1], q.shape[1] + 1), dtype=np.float64)
    for sl in _row_chunks(n, m):
        C += soft_counts(L, q[sl], chunk=sl)
    C += smoothing
    return C / C.sum(axis=2, keepdims=True)


def probs_to_preds(proba: Any, tie_break: str = "random", *, seed: int = 0, prior: Any = None,
                   tol: float = 1e-9) -> tuple[np.ndarray, np.ndarray]:
    """Hard labels from class probabilities with an explicit tie policy.

    Args:
        proba: ``(n, k)`` probabilities.
        tie_break: ``"random"`` (uniform among tied classes; ``np.random.default_rng([seed, 7919])``, so the same
            call gives the same answer), ``"first"`` (lowest class id), ``"prior"`` (largest ``prior``, then lowest
            id) or ``"abstain"`` (``-1``).
        seed: seed of the random policy.
        prior: ``(k,)`` class balance, needed by ``"prior"``.
        tol: classes within ``tol`` of the row maximum are tied.

    Returns:
        ``(labels int64 (n,), tied bool (n,))``.
    """
    if tie_break not in TIE_BREAKS:
        raise ConfigError(f"tie_break must be one of {TIE_BREAKS}, got {tie_break!r}.")
    proba = np.asarray(proba, dtype=np.float64)
    top = proba.max(axis=1, keepdims=True)
    tied_cls = proba >= top - tol
    ties = tied_cls.sum(axis=1) > 1
    pred = proba.argmax(axis=1).astype(np.int64)
    if ties.any():
        sub = tied_cls[ties]
        if tie_break == "first":
            pred[ties] = sub.argmax(axis=1)
        elif tie_break == "prior":
            if prior is None:
                raise ConfigError("tie_break='prior' needs the class balance (prior=...).")
            pred[ties] = np.where(sub, np.asarray(prior, dtype=np.float64)[None, :], -np.inf).argmax(axis=1)
        elif tie_break == "abstain":
            pred[ties] = ABSTAIN
        else:
            u = np.random.default_rng([seed, 7919]).random(sub.shape)
            pred[ties] = np.where(sub, u, -1.0).argmax(axis=1)
    return pred, ties


def _warn_unvoted_classes(L: np.ndarray, k: int) -> None:
    """Warn when a given ``num_classes`` exceeds the classes the LFs vote (their posteriors come from the prior)."""
    voted = np.flatnonzero(vote_counts(L, k).sum(axis=0) > 0)
    missing = sorted(set(range(k)) - set(voted.tolist()))
    if missing:
        warnings.warn(f"num_classes={k} but no labeling function ever votes class(es) {missing} (classes voted: "
                      f"{voted.tolist()}); those classes can only come from the class balance. If the task has "
                      f"{int(voted.max()) + 1} classes, pass num_classes={int(voted.max()) + 1}.", UserWarning,
                      stacklevel=3)


# ----------------------------------------------------------------------------------------------------------------


class LabelModel(ABC):
    """Abstract base of all label models (data programming, arXiv 1605.07723; WRENCH protocol, arXiv 2109.11377).

    Subclasses implement ``_fit`` (fill ``class_balance_`` if it was not given, and the model parameters),
    ``_proba_covered`` and ``_lf_confusions``, and list their persistent arrays in ``_param_names``.

    Args:
        num_classes: ``k``; inferred from the data at ``fit`` time when ``None`` (``max(L) + 1``, at least 2).
        seed: seed of the model's own random generators (tie breaking, any random initialisation). The global
            numpy / torch generators are never used or reseeded.

    Attributes:
        class_balance_: the ``(k,)`` class balance used, after ``fit``.
        class_balance_source: ``"given" | "uniform" | "dev" | "estimated"``.
        fit_report_: dict with at least ``model, n, m, k, class_balance_source, converged, n_iter, fit_time_s``.
    """

    #: Registry name (``make_label_model(name)``).
    name: ClassVar[str] = ""
    #: Fewest LFs the model can be fitted with.
    min_lfs: ClassVar[int] = 1
    #: Whether the model assumes conditionally independent LFs (then ``fit`` warns about dependent LF clusters).
    assumes_independence: ClassVar[bool] = False
    #: Whether ``fit`` accepts LF columns that never vote (the model then ignores them and warns).
    tolerates_silent_lfs: ClassVar[bool] = False
    #: Names of the fitted numpy arrays that ``state_dict`` persists (besides ``class_balance_``).
    _param_names: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            _REGISTRY[cls.name] = cls

    def __init__(self, num_classes: int | None = None, *, seed: int = 0) -> None:
        self.num_classes = None if num_classes is None else _check_int("num_classes", num_classes, 2)
        self.seed = _check_int("seed", seed, 0)
        self.class_balance_: np.ndarray | None = None
        self.class_balance_source: str | None = None
        self.fit_report_: dict[str, Any] = {}
        self.num_lfs_: int | None = None
        self.k_: int | None = None
        self.lf_names_: list[str] | None = None

    # -- configuration ------------------------------------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serialisable), used by ``save``/``load`` and ``repr``."""
        return {"num_classes": self.num_classes, "seed": self.seed}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    # -- fitting ------------------------------------------------------------------------------------------------

    def fit(self, L: Any, class_balance: Any = None, *, dev_L: Any = None, dev_y: Any = None,
            lf_names: Sequence[str] | None = None) -> LabelModel:
        """Fit the model on a label matrix.

        Args:
            L: ``n x m`` label matrix (``-1`` abstain, classes ``0..k-1``), numpy or torch.
            class_balance: ``None`` (``"dev"`` if ``dev_y`` is given, else ``"estimated"``), ``"uniform"``,
                ``"dev"``, ``"estimated"`` or an array of ``k`` probabilities (recorded as ``"given"``; pass the gold
                training frequencies here for an *oracle* prior and say so when reporting).
            dev_L: optional ``n_dev x m`` label matrix of a labelled dev set (used by models that can estimate
                parameters from labels, e.g. :class:`WeightedMajorityVote`).
            dev_y: optional ``(n_dev,)`` gold labels of the dev set.
            lf_names: optional names of the ``m`` LFs (kept for reports and error messages).

        Returns:
            ``self``.

        Raises:
            DataError: invalid label matrix (see :func:`validate_label_matrix`), mismatched dev set.
            ConfigError: invalid ``class_balance``.
        """
        t0 = time.perf_counter()
        L = validate_label_matrix(L, self.num_classes, min_lfs=self.min_lfs,
                                  require_votes_per_lf=not self.tolerates_silent_lfs, lf_names=lf_names,
                                  check_inferred_classes=dev_y is None)
        if self.tolerates_silent_lfs and not covered_mask(L).any():
            raise DataError(f"every labeling function abstains on every row of L ({L.shape[0]} rows x {L.shape[1]} "
                            f"LFs); there is nothing to fit. Check that the LFs were applied to this data.")
        k = self.num_classes if self.num_classes is not None else max(int(L.max()) + 1, 2)
        if self.num_classes is not None and not self.__dict__.get("_internal", False):
            _warn_unvoted_classes(L, k)  # a caller's sub-fit (auto's selection) warns once for the whole matrix
        dev_yv = None
        if dev_y is not None:
            dev_yv = np.asarray(_to_numpy(dev_y, "dev_y")).reshape(-1)
            if dev_yv.dtype.kind not in "iu" or dev_yv.size == 0:
                raise DataError(f"dev_y must be a non-empty integer array of class ids, got dtype {dev_yv.dtype}.")
            k_dev = int(dev_yv.max()) + 1
            if self.num_classes is None and k_dev > k:
                if not self.__dict__.get("_internal", False):  # the class count comes from dev_y alone: say so
                    warnings.warn(f"dev_y holds class(es) {list(range(k, k_dev))} that no labeling function votes (L "
                                  f"votes classes 0..{k - 1}), so the model gets {k_dev} classes, and those can only "
                                  f"come from the class balance. If the task has them, pass num_classes={k_dev} to "
                                  f"say so; if not, fix dev_y.", UserWarning, stacklevel=2)
                k = k_dev
            if dev_yv.min() < 0 or dev_yv.max() >= k:
                raise DataError(f"dev_y holds labels {int(dev_yv.min())}..{int(dev_yv.max())}, outside 0..{k - 1}.")
            dev_yv = dev_yv.astype(np.int64)
        dev_Lv = None
        if dev_L is not None:
            dev_Lv = validate_label_matrix(dev_L, k, lf_names=lf_names, name="dev_L")
            if dev_Lv.shape[1] != L.shape[1]:
                raise DataError(f"dev_L has {dev_Lv.shape[1]} columns but L has {L.shape[1]}; both must use the "
                                f"same labeling functions.")
            if dev_yv is None or dev_yv.shape[0] != dev_Lv.shape[0]:
                raise DataError("dev_L needs dev_y with one gold label per row of dev_L.")
        p, source = resolve_class_balance(class_balance, k, dev_yv)
        self.k_, self.num_lfs_ = k, L.shape[1]
        self.lf_names_ = list(lf_names) if lf_names is not None else None
        self.class_balance_ = p
        self.class_balance_source = source
        self.fit_report_ = {"model": self.name, "n": int(L.shape[0]), "m": int(L.shape[1]), "k": int(k),
                            "class_balance_source": source, "converged": True, "n_iter": 0}
        if self.assumes_independence and not self.__dict__.get("_internal", False):
            self._warn_dependencies(L, k)
        self._fit(L, dev_Lv, dev_yv)
        if self.class_balance_ is None:  # pragma: no cover - a subclass bug, not user input
            raise RuntimeError(f"{type(self).__name__}._fit did not set class_balance_.")
        self.class_balance_ = np.asarray(self.class_balance_, dtype=np.float64)
        self.fit_report_["class_balance"] = self.class_balance_.tolist()
        self.fit_report_["fit_time_s"] = time.perf_counter() - t0
        return self

    def _warn_dependencies(self, L: np.ndarray, k: int) -> None:
        """Warn (and record ``fit_report_["dependent_lf_clusters"]``) when strongly dependent LFs are found.

        Conditional-independence models count a duplicated rule once per copy; on such matrices they can fall far
        below majority vote, and they should not do so silently. Checked on at most 100,000 rows.
        """
        from lightning_ws.labelmodels.matrix import lf_clusters

        sub = L if L.shape[0] <= 100_000 else L[np.random.default_rng([self.seed, 31]).choice(
            L.shape[0], 100_000, replace=False)]
        groups = [g for g in lf_clusters(sub, k) if len(g) > 1]
        self.fit_report_["dependent_lf_clusters"] = groups
        if groups:
            names = [[self.lf_names_[j] if self.lf_names_ else j for j in g] for g in groups[:5]]
            warnings.warn(f"{type(self).__name__} assumes conditionally independent labeling functions, but "
                          f"{len(groups)} cluster(s) of strongly dependent LFs were found (e.g. {names}); it counts "
                          f"each copy of a duplicated rule separately and may fall below majority vote. Use "
                          f"make_label_model('auto') (which tests merging them), merge them with "
                          f"lightning_ws.labelmodels.merge_clusters, or drop duplicates.", UserWarning, stacklevel=3)

    @abstractmethod
    def _fit(self, L: np.ndarray, dev_L: np.ndarray | None, dev_y: np.ndarray | None) -> None:
        """Fit parameters; set ``self.class_balance_`` when it is ``None`` (label-free estimate)."""

    @abstractmethod
    def _proba_covered(self, L: np.ndarray) -> np.ndarray:
        """``(n, k)`` probabilities; rows without votes are overwritten by the base class."""

    @abstractmethod
    def _lf_confusions(self) -> np.ndarray:
        """``(m, k, k + 1)`` confusion tensor (see the module docstring)."""

    # -- inference ----------------------------------------------------------------------------------------------

    @property
    def is_fitted(self) -> bool:
        """Whether ``fit`` (or ``load``) has run."""
        return self.class_balance_ is not None and self.k_ is not None

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise ConfigError(f"{type(self).__name__} is not fitted; call fit(L) first or load a saved model.")

    def _validate_predict(self, L: Any) -> np.ndarray:
        self._check_fitted()
        L = validate_label_matrix(L, self.k_, lf_names=self.lf_names_, allow_no_rows=True)
        if L.shape[1] != self.num_lfs_:
            raise DataError(f"L has {L.shape[1]} columns but the model was fitted on {self.num_lfs_} labeling "
                            f"functions; pass the same LFs in the same order.")
        return L

    def predict_proba(self, L: Any) -> np.ndarray:
        """Class probabilities ``(n, k)`` (float64, rows sum to 1).

        Rows where every LF abstains get :meth:`_uncovered_proba` (``class_balance_``, except where a model says
        otherwise: :class:`~lightning_ws.labelmodels.AutoLabelModel`); find them with :meth:`covered_mask`.
        """
        L = self._validate_predict(L)
        if not L.shape[0]:
            return np.zeros((0, self.k_))
        proba = self._proba_covered(L)
        cov = self._covered_rows(L)
        if not cov.all():
            proba[~cov] = self._uncovered_proba()
        return proba

    def covered_rows(self, L: Any) -> np.ndarray:
        """``(n,)`` bool: True where at least one LF this fitted model uses votes (the rows it labels from votes;
        the others get :meth:`_uncovered_proba`). Equal to :meth:`covered_mask` except where the model ignores some
        LFs (:class:`~lightning_ws.labelmodels.AutoLabelModel`: LFs silent or constant on the fit matrix)."""
        return self._covered_rows(self._validate_predict(L))

    def _covered_rows(self, L: np.ndarray) -> np.ndarray:
        return covered_mask(L)

    def _uncovered_proba(self) -> np.ndarray:
        """``(k,)`` what rows where every LF abstains get: the class balance."""
        return self.class_balance_

    @staticmethod
    def covered_mask(L: Any) -> np.ndarray:
        """``(n,)`` bool: True where at least one LF votes (rows the model actually labels)."""
        return covered_mask(L)

    def predict(self, L: Any, tie_break: str = "random", *, abstain_uncovered: bool = False, tol: float = 1e-9,
                return_ties: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Hard labels (int64, ``-1`` where the policy abstains).

        Args:
            L: label matrix.
            tie_break: how to resolve classes whose probabilities are within ``tol`` of the maximum:
                ``"random"`` (uniform among the tied classes, generator seeded from ``seed``: the same call gives
                the same answer), ``"first"`` (lowest class id, WRENCH), ``"prior"`` (largest ``class_balance_``,
                then lowest id) or ``"abstain"`` (``-1``).
            abstain_uncovered: return ``-1`` for rows where every LF abstains (every LF the model uses:
                :meth:`covered_rows`).
            tol: tie tolerance on probabilities.
            return_ties: also return the ``(n,)`` bool mask of tied rows (tie rate = ``mask.mean()``).
        """
        L = self._validate_predict(L)
        pred, ties = probs_to_preds(self.predict_proba(L), tie_break, seed=self.seed, prior=self.class_balance_,
                                    tol=tol)
        if abstain_uncovered:
            pred[~self._covered_rows(L)] = ABSTAIN
        return (pred, ties) if return_ties else pred

    def score(self, L: Any, y: Any, metrics: Sequence[str] = ("accuracy",), tie_break: str = "random", *,
              pos_label: int = 1, abstain_uncovered: bool = False) -> dict[str, float]:
        """Score the hard labels of :meth:`predict` against gold labels (snorkel's ``LabelModel.score``).

        Args:
            L: label matrix.
            y: gold labels ``(n,)``; rows with ``-1`` (no gold label) are left out.
            metrics: any of ``"accuracy"``, ``"f1"`` (binary F1 of ``pos_label``) and ``"coverage"`` (fraction of
                the scored rows with a prediction other than ``-1``).
            tie_break, abstain_uncovered: as in :meth:`predict`.
            pos_label: positive class of ``"f1"``.

        Returns:
            ``{metric: value}``; NaN when no row has a gold label.

        Unlike snorkel (``tie_break_policy="abstain"``, abstained predictions dropped before scoring), a ``-1``
        prediction counts as wrong here: accuracy on the rows a model chooses to label flatters the model that
        abstains most. Snorkel's figure is ``score(L, y, tie_break="abstain", abstain_uncovered=True)`` restricted
        to the rows where :meth:`predict` returns a label; ``coverage`` says how many those are.
        """
        metrics = [metrics] if isinstance(metrics, str) else list(metrics)
        bad = [m for m in metrics if m not in SCORE_METRICS]
        if bad or not metrics:
            raise ConfigError(f"metrics must name one or more of {SCORE_METRICS}, got {metrics!r}.")
        pred = self.predict(L, tie_break, abstain_uncovered=abstain_uncovered)  # checks that the model is fitted
        yv = validate_gold_labels(y, pred.shape[0], self.k_, self.k_)
        if "f1" in metrics and not 0 <= pos_label < self.k_:
            raise ConfigError(f"pos_label must be a class id in 0..{self.k_ - 1}, got {pos_label!r}.")
        keep = yv != ABSTAIN
        return {m: score_predictions(yv[keep], pred[keep], m, pos_label) for m in metrics}

    # -- LF parameters ------------------------------------------------------------------------------------------

    @property
    def lf_confusions(self) -> np.ndarray:
        """``(m, k, k + 1)``: ``[j, y, l + 1] = P(lambda_j = l | Y = y)``, column 0 = abstain; rows sum to 1."""
        self._check_fitted()
        return self._lf_confusions()

    @property
    def lf_accuracies(self) -> np.ndarray:
        """``(m,)``: ``P(lambda_j = Y | lambda_j votes)`` implied by ``lf_confusions`` and ``class_balance_``."""
        conf = self.lf_confusions
        p = self.class_balance_
        k = conf.shape[1]
        correct = sum(p[y] * conf[:, y, y + 1] for y in range(k))
        votes = (p[None, :] * (1.0 - conf[:, :, 0])).sum(axis=1)
        return np.divide(correct, votes, out=np.full_like(correct, np.nan), where=votes > 0)

    # -- persistence --------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """``{"meta": JSON-able dict, "arrays": {name: float64 numpy array}}`` - everything needed to predict."""
        self._check_fitted()
        arrays = {"class_balance": np.asarray(self.class_balance_, dtype=np.float64)}
        for nm in self._param_names:
            arrays[nm] = np.asarray(getattr(self, nm), dtype=np.float64)
        meta = {"format_version": _FORMAT_VERSION, "class": type(self).__name__, "name": self.name,
                "config": self.get_config(), "k": self.k_, "num_lfs": self.num_lfs_, "lf_names": self.lf_names_,
                "class_balance_source": self.class_balance_source, "fit_report": _jsonable(self.fit_report_),
                "extra": _jsonable(self._extra_state())}
        return {"meta": meta, "arrays": arrays}

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the model's class must match)."""
        meta, arrays = state["meta"], state["arrays"]
        if meta.get("name") != self.name:
            raise DataError(f"state was saved by label model {meta.get('name')!r}, not {self.name!r}.")
        if meta.get("format_version", 0) > _FORMAT_VERSION:
            raise DataError(f"state format {meta.get('format_version')} is newer than this version of "
                            f"lightning_ws understands ({_FORMAT_VERSION}); upgrade lightning_ws.")
        self.k_, self.num_lfs_ = int(meta["k"]), int(meta["num_lfs"])
        self.lf_names_ = meta.get("lf_names")
        self.class_balance_source = meta["class_balance_source"]
        self.fit_report_ = dict(meta.get("fit_report", {}))
        self.class_balance_ = np.asarray(arrays["class_balance"], dtype=np.float64)
        for nm in self._param_names:
            if nm not in arrays:
                raise DataError(f"saved state lacks the array {nm!r} that {type(self).__name__} needs.")
            setattr(self, nm, np.asarray(arrays[nm], dtype=np.float64))
        self._load_extra_state(meta.get("extra", {}))

    def save(self, path: str | Path) -> Path:
        """Write ``path/label_model.json`` and ``path/label_model.safetensors`` atomically; return the folder."""
        import torch

        from lightning_ws.io import save_json, save_tensors

        state = self.state_dict()
        folder = Path(path)
        save_tensors(folder / "label_model.safetensors",
                     {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state["arrays"].items()})
        save_json(folder / "label_model.json", state["meta"])
        return folder

    @classmethod
    def load(cls, path: str | Path) -> LabelModel:
        """Load a model written by :meth:`save` (dispatches on the saved model name)."""
        from lightning_ws.io import load_json, load_tensors

        folder = Path(path)
        meta = load_json(folder / "label_model.json")
        tensors, _ = load_tensors(folder / "label_model.safetensors")
        name = meta.get("name")
        if name not in _REGISTRY:
            raise DataError(f"{folder}: unknown label model {name!r}; known: {sorted(_REGISTRY)}.")
        target = _REGISTRY[name]
        if cls is not LabelModel and not issubclass(target, cls):
            raise DataError(f"{folder} holds a {target.__name__}, not a {cls.__name__}.")
        model = target(**meta["config"])
        model.load_state_dict({"meta": meta, "arrays": {k: v.numpy() for k, v in tensors.items()}})
        return model


def registry() -> dict[str, type[LabelModel]]:
    """Name -> class of every label model."""
    return dict(_REGISTRY)
