"""The keep/drop filter ensemble: filter votes -> label model -> P(keep) -> selection -> uids and shards.

Stage 2 of Huang, Shin et al. (arXiv 2401.12225): every filter is a labeling function over image-text pairs; a label
model from :mod:`lightning_ws.labelmodels` is fitted without labels; the samples with the highest posterior P(keep)
are kept, by a posterior threshold or a top fraction (the paper's rule is not public; the subset size and the
estimated class prior are reported with every result).

**Latent structure** (``latent``). A bad pair is bad for one reason: a junk caption, a blank image, a redundant
near-duplicate, a mismatched caption. The DataComp-style rules each detect one such failure mode, so on the bad
samples they fire on *disjoint* sets: given a single "drop" class they are strongly negatively dependent, which the
conditionally independent binary label models cannot represent (measured on the demo pool: every binary model
explained only one mode, e.g. the blank images, and kept the rest; BENCHMARKS.md). With ``latent="failure_modes"``
(default) every failure mode (:attr:`FilterLF.mode`) gets its own latent class: a filter's keep vote is class 0
("keep"), its drop vote is its mode's class, and the label model is fitted with ``1 + #modes`` classes; given the
class, the rules are (close to) independent again. ``P(keep)`` is the posterior of class 0. Filters with the empty
mode (generic quality scores such as the CLIP score) share one "low quality" class, so a set of two-sided quality
filters is exactly the binary model (``latent="binary"`` forces that for every filter).

Label-free binary models have a sign ambiguity (which latent class is "keep"). It is fixed by the assumption that
the filters are better than random: if the fitted posterior agrees with the non-abstain votes less often than it
disagrees, the two columns are swapped (and the report says so). With failure-mode classes the classes are anchored
by the votes (each drop class receives only its own filters' votes); the report gives the vote agreement.

Filters that cast only one kind of vote on the whole pool (a size rule that never fires, so it votes keep everywhere)
carry no information about the pool and are left out of the fit (``lfs_constant`` in the report): moment-based models
otherwise read them as perfectly accurate keep votes and inflate the keep prior.

Correlated filters (threshold families) break conditional independence; ``dedupe_agreement`` drops an LF whose
votes agree with an earlier one on at least that share of the rows both vote on (and on nearly all rows).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lightning_ws.datacomp.filters import ABSTAIN, DROP, KEEP, FilterLF, uids_from_signals
from lightning_ws.datacomp.shards import Sample, iter_shards, save_uid_array, write_shards
from lightning_ws.errors import ConfigError, DataError

__all__ = ["FilterEnsemble", "EnsembleResult", "keep_metrics", "single_filter_keep", "write_filtered_shards"]


def keep_metrics(keep: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Precision / recall / F1 of "keep" against the truth, plus the kept share."""
    keep, truth = np.asarray(keep, bool), np.asarray(truth, bool)
    tp = float((keep & truth).sum())
    prec = tp / max(1.0, float(keep.sum()))
    rec = tp / max(1.0, float(truth.sum()))
    f1 = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
    return {"precision": prec, "recall": rec, "f1": f1, "kept": float(keep.mean()), "n_kept": int(keep.sum())}


def single_filter_keep(votes: np.ndarray) -> np.ndarray:
    """A single filter used alone: keep everything it does not vote to drop."""
    return np.asarray(votes) != DROP


@dataclass
class EnsembleResult:
    """Output of :meth:`FilterEnsemble.run`."""

    uids: list[str]
    p_keep: np.ndarray
    keep: np.ndarray
    L: np.ndarray
    lf_names: list[str]
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def kept_uids(self) -> list[str]:
        return [u for u, k in zip(self.uids, self.keep) if k]


class FilterEnsemble:
    """Combine filter LFs with a binary label model and select a subset.

    Args:
        lfs: the filters (:class:`~lightning_ws.datacomp.filters.FilterLF`).
        label_model: a name for :func:`lightning_ws.labelmodels.make_label_model`: ``"dawid_skene"`` (default:
            class-conditional confusion matrices with abstain as an observed vote, which is what one-sided failure
            rules need; chunked E-steps, so it scales to DataComp pools; chosen on a development pool, see
            BENCHMARKS.md), ``"moment_matching"`` / ``"snorkel"``, ``"auto"``, ``"majority_vote"``, ``"triplet"``
            (FlyingSquid, binary only: use it with ``latent="binary"``).
        label_model_kwargs: extra constructor arguments.
        threshold: keep rows with ``P(keep) >= threshold`` (default 0.5 when ``top_fraction`` is None).
        top_fraction: keep this share of the pool with the highest ``P(keep)`` instead (ties broken by uid).
        dedupe_agreement: drop LFs that agree with an earlier LF on at least this share of jointly-voted rows (None
            = off).
        class_balance: the label model's class prior: ``"estimated"`` (label-free, default), ``"uniform"`` (over the
            latent classes: keep and every failure mode), or ``[P(drop), P(keep)]`` (binary latent only).
        latent: ``"failure_modes"`` (one latent drop class per filter mode; see module docstring) or ``"binary"``.
        drop_constant: leave filters that cast only one kind of vote (all keep or all drop) out of the fit.
        seed: label-model seed.
    """

    def __init__(self, lfs: Sequence[FilterLF], *, label_model: str = "dawid_skene",
                 label_model_kwargs: Mapping[str, Any] | None = None, threshold: float | None = None,
                 top_fraction: float | None = None, dedupe_agreement: float | None = 0.99,
                 class_balance: str | Sequence[float] = "estimated",
                 latent: Literal["failure_modes", "binary"] = "failure_modes", drop_constant: bool = True,
                 seed: int = 0) -> None:
        if not lfs:
            raise ConfigError("FilterEnsemble needs at least one filter LF.")
        names = [lf.name for lf in lfs]
        if len(set(names)) != len(names):
            raise ConfigError(f"filter names must be unique, got {names}.")
        if threshold is not None and top_fraction is not None:
            raise ConfigError("give either threshold or top_fraction, not both.")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"threshold must lie in [0, 1], got {threshold}.")
        if top_fraction is not None and not 0.0 < top_fraction <= 1.0:
            raise ConfigError(f"top_fraction must lie in (0, 1], got {top_fraction}.")
        if dedupe_agreement is not None and not 0.5 < dedupe_agreement <= 1.0:
            raise ConfigError(f"dedupe_agreement must lie in (0.5, 1] or be None, got {dedupe_agreement}.")
        if latent not in ("failure_modes", "binary"):
            raise ConfigError(f"latent must be 'failure_modes' or 'binary', got {latent!r}.")
        if not isinstance(class_balance, str) and latent == "failure_modes" and len(
                {lf.mode for lf in lfs}) > 1:
            raise ConfigError("a [P(drop), P(keep)] class balance fixes a binary model; with several failure modes use "
                              "latent='binary' or class_balance='estimated' / 'uniform'.")
        self.latent = latent
        self.drop_constant = bool(drop_constant)
        self.lfs = list(lfs)
        self.label_model = label_model
        self.label_model_kwargs = dict(label_model_kwargs or {})
        self.threshold = 0.5 if threshold is None and top_fraction is None else threshold
        self.top_fraction = top_fraction
        self.dedupe_agreement = dedupe_agreement
        self.class_balance = class_balance if isinstance(class_balance, str) else list(class_balance)
        self.seed = seed

    def votes(self, signals: Mapping[str, np.ndarray]) -> np.ndarray:
        """The ``(n, m)`` int8 label matrix of all LFs (1 keep, 0 drop, -1 abstain)."""
        return np.stack([lf(signals) for lf in self.lfs], axis=1)

    def _dedupe(self, L: np.ndarray) -> list[int]:
        keep: list[int] = []
        for j in range(L.shape[1]):
            dup = False
            for i in keep:
                both = (L[:, i] != ABSTAIN) & (L[:, j] != ABSTAIN)
                same_cov = ((L[:, i] != ABSTAIN) == (L[:, j] != ABSTAIN)).mean()
                if both.any() and same_cov >= self.dedupe_agreement and (
                        (L[both, i] == L[both, j]).mean() >= self.dedupe_agreement):
                    dup = True
                    break
            if not dup:
                keep.append(j)
        return keep

    def run(self, signals: Mapping[str, np.ndarray]) -> EnsembleResult:
        """Vote, fit the label model, compute P(keep), select. ``signals`` as from
        :func:`~lightning_ws.datacomp.filters.load_signal_caches` (must hold ``uid_hi``/``uid_lo``)."""
        from lightning_ws.labelmodels import make_label_model

        if "uid_hi" not in signals or "uid_lo" not in signals:
            raise DataError("signals need uid_hi / uid_lo columns (load them with load_signal_caches).")
        uids = uids_from_signals(signals)
        L = self.votes(signals)
        names = [lf.name for lf in self.lfs]
        used = self._dedupe(L) if self.dedupe_agreement is not None else list(range(L.shape[1]))
        silent = [j for j in used if not (L[:, j] != ABSTAIN).any()]  # no votes: nothing to estimate
        used = [j for j in used if j not in silent]
        constant: list[int] = []
        if self.drop_constant:
            constant = [j for j in used if not ((L[:, j] == KEEP).any() and (L[:, j] == DROP).any())
                        and not (L[:, j] == ABSTAIN).any()]
            used = [j for j in used if j not in constant]
        if not used:
            raise DataError("no filter casts both keep and drop votes (or abstains) on this pool; nothing to fit. "
                            f"Constant filters: {[names[j] for j in constant]}; silent: {[names[j] for j in silent]}.")
        Lu = L[:, used]
        # latent classes: 0 = keep, then one drop class per failure mode (binary: one drop class)
        modes: list[str] = []
        for j in used:
            mode = self.lfs[j].mode if self.latent == "failure_modes" else ""
            if (L[:, j] == DROP).any() and mode not in modes:
                modes.append(mode)
        if not modes:
            modes = [""]
        M = np.full(Lu.shape, ABSTAIN, dtype=np.int64)
        for c, j in enumerate(used):
            mode = self.lfs[j].mode if self.latent == "failure_modes" else ""
            drop_class = 1 + modes.index(mode) if mode in modes else ABSTAIN  # keep-only filters cast no drop
            M[:, c] = np.where(Lu[:, c] == KEEP, 0, np.where(Lu[:, c] == DROP, drop_class, ABSTAIN))
        k = 1 + len(modes)
        balance = self.class_balance
        if not isinstance(balance, str):  # given as [P(drop), P(keep)] -> class order (keep, drop)
            balance = [balance[1], balance[0]]
        try:
            lm = make_label_model(self.label_model, num_classes=k, seed=self.seed, **self.label_model_kwargs)
        except ConfigError as err:
            raise ConfigError(f"{err} With {len(modes)} failure modes the label model needs {k} classes; use a "
                              f"multi-class model (dawid_skene, moment_matching, auto) or latent='binary'.") from err
        covered = (M != ABSTAIN).any(1)
        if not covered.any():
            raise DataError("every filter abstains on every row; nothing to fit.")
        lm.fit(M[covered], class_balance=balance, lf_names=[names[j] for j in used])
        proba = lm.predict_proba(M)
        prior = np.asarray(lm.class_balance_, dtype=float)
        # anchoring: the fitted classes must agree with the votes more often than not
        pred = proba.argmax(1)
        voted = M != ABSTAIN
        agree = float((M == pred[:, None])[voted].mean()) if voted.any() else 1.0
        flipped = k == 2 and agree < 0.5
        if flipped:  # binary sign ambiguity: swap keep and drop
            proba, prior = proba[:, ::-1], prior[::-1]
            agree = 1.0 - agree
        p_keep = np.ascontiguousarray(proba[:, 0])
        keep = self.select(p_keep, uids)
        report: dict[str, Any] = {
            "label_model": lm.name if hasattr(lm, "name") else self.label_model,
            "latent": self.latent, "failure_modes": [m or "quality" for m in modes],
            "n": int(L.shape[0]), "n_kept": int(keep.sum()), "kept_share": float(keep.mean()),
            "selection": {"threshold": self.threshold, "top_fraction": self.top_fraction},
            "class_prior_keep": float(prior[0]),
            "class_prior_modes": {(m or "quality"): float(prior[1 + i]) for i, m in enumerate(modes)},
            "sign_flipped": flipped, "vote_agreement": agree,
            "lfs_used": [names[j] for j in used], "lfs_silent": [names[j] for j in silent],
            "lfs_constant": [names[j] for j in constant],
            "lfs_deduplicated": [names[j] for j in range(len(names))
                                 if j not in used and j not in silent and j not in constant],
            "lf_stats": {names[j]: {"coverage": float((L[:, j] != ABSTAIN).mean()),
                                    "keep_votes": float((L[:, j] == KEEP).mean()),
                                    "drop_votes": float((L[:, j] == DROP).mean())} for j in range(len(names))},
            "lf_correlation": _vote_correlation(L, names),
        }
        return EnsembleResult(uids=uids, p_keep=p_keep, keep=keep, L=L, lf_names=names, report=report)

    def select(self, p_keep: np.ndarray, uids: Sequence[str]) -> np.ndarray:
        """Boolean keep mask from the posterior (threshold or top fraction; ties by uid)."""
        p_keep = np.asarray(p_keep, dtype=np.float64)
        if self.top_fraction is None:
            return p_keep >= self.threshold
        n_keep = int(round(self.top_fraction * len(p_keep)))
        order = sorted(range(len(p_keep)), key=lambda i: (-p_keep[i], uids[i]))
        keep = np.zeros(len(p_keep), bool)
        keep[order[:n_keep]] = True
        return keep


def _vote_correlation(L: np.ndarray, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Pearson correlation of the LFs' votes mapped to +1 keep / -1 drop / 0 abstain."""
    X = np.where(L == KEEP, 1.0, np.where(L == DROP, -1.0, 0.0))
    sd = X.std(0)
    C = np.corrcoef(X.T) if (sd > 0).all() else np.full((L.shape[1],) * 2, np.nan)
    return {a: {b: (None if np.isnan(C[i, j]) else round(float(C[i, j]), 4)) for j, b in enumerate(names)}
            for i, a in enumerate(names)}


def write_filtered_shards(src: str | Sequence[str], out_dir: str | Path, keep_uids: Iterable[str], *,
                          samples_per_shard: int = 1000, overwrite: bool = False) -> tuple[list[Path], int]:
    """Copy the samples whose uid is in ``keep_uids`` into new shards (same layout); returns (paths, n written)."""
    keep = set(keep_uids)
    n = 0

    def gen() -> Iterable[Sample]:
        nonlocal n
        for s in iter_shards(src):
            if s.uid in keep:
                n += 1
                s.meta.pop("__url__", None)
                yield s

    paths = write_shards(gen(), out_dir, samples_per_shard=samples_per_shard, overwrite=overwrite)
    return paths, n


def save_submission(path: str | Path, result: EnsembleResult) -> Path:
    """The DataComp submission of a result: sorted ``u8,u8`` uids of the kept samples."""
    return save_uid_array(path, result.kept_uids)


__all__.append("save_submission")
