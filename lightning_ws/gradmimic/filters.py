"""Offline Grad-Mimic filters: binarise recorded mimic weights per round, aggregate the votes (arXiv 2501.06708, §5).

A *round* is one epoch (the paper's code stores one value per sample per epoch) or one step. The input is a table
``values`` of shape ``(R, N)``: sample ``n``'s value in round ``r`` (``NaN`` when the sample was not seen). Values are
*relative* batch weights ``B * w`` (uniform weight = 1), so the paper's ``1/B`` threshold is the threshold 1 here and
batches of different sizes are comparable. Each round becomes a vote (1 keep, 0 drop, -1 abstain); an aggregator turns
the ``(N, R)`` vote matrix into keep probabilities. Plain numpy; no Lightning.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lightning_ws.errors import ConfigError, DataError
from lightning_ws.gradmimic.signal import table_signal, warn_no_signal

__all__ = [
    "ABSTAIN",
    "BINARIZERS",
    "AGGREGATORS",
    "binarize",
    "two_means_1d",
    "gmm_1d",
    "vote_matrix",
    "aggregate_votes",
    "top_p_indices",
    "FilterResult",
    "MimicScoreFilter",
]

ABSTAIN = -1
BINARIZERS = ("threshold", "kmeans", "gmm")
AGGREGATORS = ("majority", "label_model", "last")
NO_SIGNAL_POLICIES = ("raise", "warn")


def two_means_1d(x: np.ndarray) -> float:
    """Exact 1-D 2-means: the split point between the two clusters minimising the within-cluster sum of squares.

    Returns the midpoint between the largest value of the low cluster and the smallest of the high cluster
    (``inf`` when there are fewer than two distinct values: everything then falls in one cluster).
    """
    v = np.sort(np.asarray(x, dtype=np.float64).ravel())
    n = v.size
    if n < 2 or v[0] == v[-1]:
        return math.inf
    cs, cs2 = np.cumsum(v), np.cumsum(v * v)
    k = np.arange(1, n)  # size of the low cluster
    low_sse = cs2[k - 1] - cs[k - 1] ** 2 / k
    hi_sum, hi_sq = cs[-1] - cs[k - 1], cs2[-1] - cs2[k - 1]
    high_sse = hi_sq - hi_sum**2 / (n - k)
    sse = low_sse + high_sse
    sse[v[k - 1] == v[k]] = np.inf  # never split ties
    j = int(np.argmin(sse)) + 1
    return float((v[j - 1] + v[j]) / 2)


def gmm_1d(x: np.ndarray, *, max_iter: int = 200, tol: float = 1e-8, reg: float = 1e-6) -> np.ndarray:
    """Posterior of the higher-mean component of a 2-component 1-D Gaussian mixture fitted by EM, shape ``(n,)``.

    Initialised from the exact 2-means split (deterministic, no random restarts); variances are floored at
    ``reg * var(x) + 1e-12``. With fewer than two distinct values every posterior is 1 (one cluster, all kept).
    """
    v = np.asarray(x, dtype=np.float64).ravel()
    cut = two_means_1d(v)
    if not math.isfinite(cut):
        return np.ones_like(v)
    floor = reg * float(v.var()) + 1e-12
    hi = v > cut
    pi = np.array([1 - hi.mean(), hi.mean()])
    mu = np.array([v[~hi].mean(), v[hi].mean()])
    var = np.array([max(v[~hi].var(), floor), max(v[hi].var(), floor)])
    prev = -np.inf
    for _ in range(max_iter):
        logp = -0.5 * ((v[:, None] - mu) ** 2 / var + np.log(2 * np.pi * var)) + np.log(np.clip(pi, 1e-300, None))
        mx = logp.max(1, keepdims=True)
        ll_i = mx[:, 0] + np.log(np.exp(logp - mx).sum(1))
        resp = np.exp(logp - ll_i[:, None])
        nk = resp.sum(0) + 1e-300
        pi = nk / v.size
        mu = (resp * v[:, None]).sum(0) / nk
        var = np.maximum((resp * (v[:, None] - mu) ** 2).sum(0) / nk, floor)
        ll = float(ll_i.mean())
        if ll - prev < tol:
            break
        prev = ll
    return resp[:, int(np.argmax(mu))]


def binarize(values: np.ndarray, method: str = "threshold", *, threshold: float = 1.0) -> np.ndarray:
    """Turn one round of relative weights into votes: 1 keep, 0 drop, -1 (``ABSTAIN``) where the value is NaN.

    Args:
        values: ``(N,)`` relative weights ``B * w`` of one round (NaN = sample not seen in the round).
        method: ``"threshold"`` (keep when the value exceeds ``threshold``; 1.0 = the paper's ``1/B`` rule),
            ``"kmeans"`` (exact 1-D 2-means, keep the high cluster) or ``"gmm"`` (2-component Gaussian mixture, keep
            when the high-mean component's posterior exceeds 0.5, the DivideMix-style split of arXiv 2002.07394).
        threshold: only for ``"threshold"``.

    Returns:
        int8 array ``(N,)`` in {-1, 0, 1}.
    """
    if method not in BINARIZERS:
        raise ConfigError(f"binarizer must be one of {BINARIZERS}, got {method!r}.")
    v = np.asarray(values, dtype=np.float64).ravel()
    seen = ~np.isnan(v)
    out = np.full(v.shape, ABSTAIN, dtype=np.int8)
    if not seen.any():
        return out
    s = v[seen]
    if method == "threshold":
        keep = s > threshold
    elif method == "kmeans":
        keep = s > two_means_1d(s) if math.isfinite(two_means_1d(s)) else np.ones_like(s, dtype=bool)
    else:
        keep = gmm_1d(s) > 0.5
    out[seen] = keep.astype(np.int8)
    return out


def vote_matrix(values: np.ndarray, method: str = "threshold", *, threshold: float = 1.0) -> np.ndarray:
    """Binarise every round of a ``(R, N)`` table; return the ``(N, R)`` vote matrix (a label matrix, -1 = abstain)."""
    t = np.asarray(values, dtype=np.float64)
    if t.ndim != 2:
        raise DataError(f"values must be a (rounds, samples) table, got shape {t.shape}.")
    return np.stack([binarize(row, method, threshold=threshold) for row in t], axis=1) if t.shape[0] else \
        np.zeros((t.shape[1], 0), dtype=np.int8)


def aggregate_votes(votes: np.ndarray, method: str = "majority", *, label_model: str = "dawid_skene",
                    label_model_kwargs: dict[str, Any] | None = None) -> np.ndarray:
    """Keep probability per sample from an ``(N, R)`` vote matrix (1 keep, 0 drop, -1 abstain).

    Args:
        votes: the vote matrix from :func:`vote_matrix`.
        method: ``"majority"`` (fraction of non-abstaining rounds that vote keep), ``"last"`` (the last non-abstaining
            vote, what the reference code's top-p selection uses) or ``"label_model"`` (a weak-supervision label model
            from :mod:`lightning_ws.labelmodels`, ``make_label_model(label_model, num_classes=2,
            **label_model_kwargs)``, fitted on the votes as binary labeling functions with its default, label-free
            class balance; the paper does not name its label model, spec §14.1; default Dawid-Skene EM).
        label_model: registry name passed to ``make_label_model``.
        label_model_kwargs: extra keyword arguments for ``make_label_model``.

    Returns:
        float array ``(N,)``; samples with no vote at all get 0.5 (no evidence either way).
    """
    if method not in AGGREGATORS:
        raise ConfigError(f"aggregator must be one of {AGGREGATORS}, got {method!r}.")
    L = np.asarray(votes)
    if L.ndim != 2:
        raise DataError(f"votes must be an (N, rounds) matrix, got shape {L.shape}.")
    if not np.isin(L, (ABSTAIN, 0, 1)).all():
        raise DataError("votes must contain only -1 (abstain), 0 (drop) and 1 (keep).")
    covered = (L != ABSTAIN).any(1)
    prob = np.full(L.shape[0], 0.5)
    if L.shape[1] == 0 or not covered.any():
        return prob
    if method == "majority":
        n_keep = (L == 1).sum(1)
        n_vote = (L != ABSTAIN).sum(1)
        prob[covered] = n_keep[covered] / n_vote[covered]
    elif method == "last":
        last = np.full(L.shape[0], ABSTAIN)
        for r in range(L.shape[1]):
            last = np.where(L[:, r] != ABSTAIN, L[:, r], last)
        prob[covered] = last[covered].astype(np.float64)
    else:
        try:
            from lightning_ws.labelmodels import make_label_model
        except ImportError as err:  # pragma: no cover - depends on the installed tree
            raise ConfigError("aggregator='label_model' needs lightning_ws.labelmodels (make_label_model), which is "
                              "not importable here; use aggregator='majority' or 'last'.") from err
        kwargs = {"num_classes": 2, **(label_model_kwargs or {})}
        model = make_label_model(label_model, **kwargs)
        Lc = L[covered].astype(np.int64)
        model.fit(Lc)
        p = np.asarray(model.predict_proba(Lc), dtype=np.float64)
        if p.ndim != 2 or p.shape != (Lc.shape[0], 2):
            raise DataError(f"label model {label_model!r} returned probabilities of shape {p.shape}, expected "
                            f"({Lc.shape[0]}, 2) for binary keep/drop votes.")
        prob[covered] = p[:, 1]
    return prob


def top_p_indices(values: np.ndarray, p: float) -> np.ndarray:
    """Indices of the top ``ceil(p * N)`` samples by value, highest first (NaN ranks last; ties by lower index)."""
    if not 0.0 < p <= 1.0:
        raise ConfigError(f"top-p fraction must be in (0, 1], got {p!r}.")
    v = np.asarray(values, dtype=np.float64).ravel()
    key = np.where(np.isnan(v), -np.inf, v)
    order = np.lexsort((np.arange(v.size), -key))
    return order[: int(math.ceil(p * v.size))]


@dataclass
class FilterResult:
    """Output of :meth:`MimicScoreFilter.fit`.

    Attributes:
        keep_mask: bool ``(N,)``, ``keep_prob >= 0.5`` (ties keep: no majority to drop a sample).
        keep_prob: float ``(N,)`` keep probability from the aggregator.
        votes: int8 ``(N, R)`` per-round votes (-1 abstain).
        quality: dataset-quality estimate = fraction of samples kept (the paper's simulation estimate).
        mean_value: mean over samples of the per-sample mean relative weight (the paper's DataComp estimate, in
            relative-weight units).
        sample_mean: ``(N,)`` per-sample mean relative weight over rounds (NaN if never seen).
        last_value: ``(N,)`` the last round's value per sample.
        reliable: ``False`` when the table (or the run that recorded it) carries no per-sample signal; then
            ``quality`` is NaN and ``keep_mask`` keeps every sample (there is no evidence to drop one), while
            ``keep_prob``/``votes`` hold what the binariser made of the noise.
        reasons: why the result is not reliable (empty when it is).
        signal: the table's signal statistics (:func:`~lightning_ws.gradmimic.signal.table_signal`).
    """

    keep_mask: np.ndarray
    keep_prob: np.ndarray
    votes: np.ndarray
    quality: float
    mean_value: float
    sample_mean: np.ndarray = field(repr=False)
    last_value: np.ndarray = field(repr=False)
    reliable: bool = True
    reasons: tuple[str, ...] = ()
    signal: dict[str, float] = field(default_factory=dict)

    def top_p(self, p: float, *, by: str = "mean") -> np.ndarray:
        """Top-``p`` sample indices by per-sample ``"mean"`` relative weight or by the ``"last"`` round's value."""
        if by not in ("mean", "last"):
            raise ConfigError(f"top_p(by=...) must be 'mean' or 'last', got {by!r}.")
        return top_p_indices(self.sample_mean if by == "mean" else self.last_value, p)


class MimicScoreFilter:
    """Offline mimic-score filter: per-round binarisation + vote aggregation (arXiv 2501.06708, §5 / spec §9.5).

    Defaults the paper leaves open: rounds are epochs; values are relative weights ``B * w`` (threshold 1 = ``1/B``);
    the ``gmm`` binariser is initialised from the exact 2-means split; ``keep_prob >= 0.5`` keeps (ties keep).

    No-signal check (not in the paper: its binarisers split any table in two and report a clean fraction even when the
    weights are noise): a table is refused when it is flat (the per-sample mean values have a standard deviation below
    ``min_spread``) or when its per-sample ranking is not reproduced between consecutive rounds (mean Spearman
    correlation below ``min_consistency``; needs two rounds), or when the caller passes ``no_signal_reasons`` (the
    callback passes what its training-time checks found). ``on_no_signal="raise"`` raises a DataError naming the
    reason; ``"warn"`` warns and returns ``reliable=False`` with ``quality = NaN`` and every sample kept. A table can be
    consistent and still wrong (a reference in another feature space ranks samples consistently by their own loss):
    only the training-time checks of :class:`~lightning_ws.callbacks.gradmimic.GradMimicCallback` can see that.

    Args:
        binarizer: ``"threshold"``, ``"kmeans"`` or ``"gmm"``.
        aggregator: ``"majority"``, ``"label_model"`` or ``"last"``.
        threshold: threshold for the ``threshold`` binariser, in relative-weight units.
        label_model: name for ``lightning_ws.labelmodels.make_label_model`` (``aggregator="label_model"`` only).
        label_model_kwargs: keyword arguments for it.
        min_spread: flat-table threshold on the standard deviation of per-sample mean values.
        min_consistency: threshold on the mean round-to-round Spearman correlation.
        on_no_signal: ``"raise"`` (default) or ``"warn"``.

    Example:
        >>> import numpy as np
        >>> table = np.array([[1.8, 0.2, 1.5, 0.1], [1.6, 0.3, np.nan, 0.2]])
        >>> MimicScoreFilter("threshold", "majority").fit(table).keep_mask.tolist()
        [True, False, True, False]
    """

    def __init__(self, binarizer: str = "gmm", aggregator: str = "majority", *, threshold: float = 1.0,
                 label_model: str = "dawid_skene", label_model_kwargs: dict[str, Any] | None = None,
                 min_spread: float = 1e-3, min_consistency: float = 0.1, on_no_signal: str = "raise") -> None:
        if binarizer not in BINARIZERS:
            raise ConfigError(f"binarizer must be one of {BINARIZERS}, got {binarizer!r}.")
        if aggregator not in AGGREGATORS:
            raise ConfigError(f"aggregator must be one of {AGGREGATORS}, got {aggregator!r}.")
        if not (isinstance(threshold, (int, float)) and math.isfinite(threshold)):
            raise ConfigError(f"threshold must be a finite number, got {threshold!r}.")
        if on_no_signal not in NO_SIGNAL_POLICIES:
            raise ConfigError(f"on_no_signal must be one of {NO_SIGNAL_POLICIES}, got {on_no_signal!r}.")
        if not (isinstance(min_spread, (int, float)) and min_spread >= 0 and isinstance(min_consistency, (int, float))):
            raise ConfigError(f"need min_spread >= 0 and a numeric min_consistency, got {min_spread!r}, "
                              f"{min_consistency!r}.")
        self.min_spread = float(min_spread)
        self.min_consistency = float(min_consistency)
        self.on_no_signal = on_no_signal
        self.binarizer = binarizer
        self.aggregator = aggregator
        self.threshold = float(threshold)
        self.label_model = label_model
        self.label_model_kwargs = dict(label_model_kwargs or {})

    def check(self, values: np.ndarray) -> tuple[dict[str, float], list[str]]:
        """The table's signal statistics and the reasons (empty: none) why it carries no per-sample signal."""
        t = np.asarray(values, dtype=np.float64)
        sig = table_signal(t)
        reasons = []
        if not sig["spread"] >= self.min_spread:
            reasons.append(f"the recorded weights are flat (std of per-sample mean relative weight {sig['spread']:.2e} "
                           f"< {self.min_spread:g}): the re-weighting was uniform (tau too large for the score scale, "
                           f"or W_ref == W_t), so nothing distinguishes one sample from another")
        if math.isfinite(sig["consistency"]) and sig["consistency"] < self.min_consistency:
            reasons.append(f"the per-sample ranking is not reproduced between rounds (mean Spearman correlation "
                           f"{sig['consistency']:+.3f} < {self.min_consistency:g}): the weights follow batch "
                           f"composition, not the samples")
        return sig, reasons

    def fit(self, values: np.ndarray, *, no_signal_reasons: tuple[str, ...] | list[str] = ()) -> FilterResult:
        """Binarise each round of the ``(R, N)`` relative-weight table and aggregate; see :class:`FilterResult`.

        Args:
            values: the ``(R, N)`` table.
            no_signal_reasons: reasons found elsewhere (e.g. during training) why the weights carry no signal.

        Raises:
            DataError: the table carries no per-sample signal and ``on_no_signal="raise"``.
        """
        t = np.asarray(values, dtype=np.float64)
        if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
            raise DataError(f"values must be a non-empty (rounds, samples) table, got shape {t.shape}.")
        sig, reasons = self.check(t)
        reasons = [*no_signal_reasons, *reasons]
        if reasons:
            msg = ("the Grad-Mimic weights carry no per-sample signal, so no clean fraction or keep mask can be "
                   "derived from them: " + "; ".join(reasons) + ".")
            if self.on_no_signal == "raise":
                raise DataError(msg + " Pass on_no_signal='warn' to get the (unreliable) votes anyway.")
            warn_no_signal(msg)
        votes = vote_matrix(t, self.binarizer, threshold=self.threshold)
        prob = aggregate_votes(votes, self.aggregator, label_model=self.label_model,
                               label_model_kwargs=self.label_model_kwargs)
        keep = prob >= 0.5
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (never-seen samples) -> NaN
            sample_mean = np.nanmean(t, axis=0)
        last = np.full(t.shape[1], np.nan)
        for row in t:
            last = np.where(np.isnan(row), last, row)
        reliable = not reasons
        return FilterResult(keep_mask=keep if reliable else np.ones_like(keep),
                            keep_prob=prob, votes=votes, quality=float(keep.mean()) if reliable else math.nan,
                            mean_value=float(np.nanmean(sample_mean)) if (~np.isnan(sample_mean)).any() else math.nan,
                            sample_mean=sample_mean, last_value=last, reliable=reliable, reasons=tuple(reasons),
                            signal=sig)
