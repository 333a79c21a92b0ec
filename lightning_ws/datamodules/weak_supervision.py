"""Pseudolabels from a label model, served to Lightning: :class:`PseudoLabelDataModule`.

The training split's labeling-function votes (the WRENCH label matrix, or votes of Python labeling functions applied
here) are aggregated by a label model from :mod:`lightning_ws.labelmodels`; the end model then trains on the label
model's posteriors (soft targets, with the noise-aware soft cross-entropy of data programming, arXiv:1605.07723) or
on its hard predictions. Gold labels are used only for validation and test (and, if asked, a labelled dev set for
the class balance).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from lightning.pytorch.utilities import rank_zero_info

from lightning_ws.contracts import WEIGHT
from lightning_ws.data import WrenchSplit
from lightning_ws.datamodules.text import TextClassificationDataModule
from lightning_ws.errors import ConfigError, DataError, check_choice
from lightning_ws.labelmodels.factory import LabelModelName

__all__ = ["PseudoLabelDataModule", "balance_targets", "argmax_random_ties"]


def argmax_random_ties(probs: np.ndarray, rng: np.random.Generator, atol: float = 1e-9) -> np.ndarray:
    """Row-wise argmax of ``probs`` with ties (within ``atol`` of the row maximum) broken uniformly at random.

    ``np.argmax`` sends every tie to the lowest class id; with few votes per row (TREC: 1.8 on average) ties are
    common and that bias makes class 0 look far more frequent (and the pseudolabels more or less accurate) than they
    are.

    Args:
        probs: ``(n, k)`` scores.
        rng: the caller's seeded generator.
        atol: scores within ``atol`` of the row maximum count as tied.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        return np.zeros(p.shape[0] if p.ndim else 0, dtype=np.int64)
    tied = p >= p.max(1, keepdims=True) - atol
    noise = rng.random(p.shape)
    return np.where(tied, noise, -1.0).argmax(1).astype(np.int64)


def balance_targets(targets: np.ndarray, num_classes: int, max_weight: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced training targets: every class gets the same total target mass ("balanced" class weighting).

    With soft targets ``q`` (``(n, k)``; hard ``(n,)`` labels are one-hot), class ``c`` has mass ``m_c = mean_i q_ic``
    and gets the factor ``f_c = 1 / (k' m_c)`` (``k'`` = classes with mass; a class without mass keeps factor 0).
    Soft cross-entropy with class weights, ``-sum_c f_c q_ic log p_ic``, is written as an example weight
    ``w_i = sum_c f_c q_ic`` times the cross-entropy against the re-weighted target ``q'_ic = f_c q_ic / w_i`` (the
    posterior under a uniform class prior). Then ``mean_i w_i q'_ic = f_c m_c`` is the same for every class, so an end
    model cannot fit the pseudolabels' skew (TREC: 65% of the label model's mass on DESC against 21% in the gold
    labels) by predicting the majority class. Weights are clipped at ``max_weight`` times their mean and normalised
    to mean 1 (clipping makes the balance approximate for rows of very rare classes).

    Args:
        targets: soft ``(n, k)`` rows or hard ``(n,)`` class ids.
        num_classes: ``k``.
        max_weight: cap on a weight relative to the mean (default 10).

    Returns:
        ``(targets', weights)``: targets of the input's kind (soft rows re-weighted and renormalised; hard labels
        unchanged) and ``(n,)`` float64 weights with mean 1.
    """
    t = np.asarray(targets)
    hard = t.ndim == 1
    q = np.eye(num_classes)[t.astype(np.int64)] if hard else t.astype(np.float64)
    if q.shape[0] == 0:
        return t, np.zeros(0)
    mass = q.mean(0)
    present = mass > 1e-12
    factor = np.zeros(num_classes)
    factor[present] = 1.0 / (present.sum() * mass[present])
    scaled = q * factor
    w = scaled.sum(1)
    safe = np.maximum(w, 1e-300)
    new_q = np.where(w[:, None] > 0, scaled / safe[:, None], q)
    w = w / max(w.mean(), 1e-12)
    w = np.minimum(w, float(max_weight))
    w = w / max(w.mean(), 1e-12)
    if hard:
        return t, w
    return new_q.astype(t.dtype if t.dtype.kind == "f" else np.float64), w


def accuracy_vs_gold(pred: np.ndarray, gold: np.ndarray) -> float | None:
    """Accuracy of hard pseudolabels on the rows that carry a gold label (``gold >= 0``); ``None`` when none does
    (an unlabelled training split). A diagnostic of the pseudolabel datamodules: gold labels never reach training."""
    known = np.asarray(gold) >= 0
    return float((np.asarray(pred)[known] == np.asarray(gold)[known]).mean()) if known.any() else None


class PseudoLabelDataModule(TextClassificationDataModule):
    """Text classification trained from label-model pseudolabels instead of gold labels.

    Args:
        dataset: WRENCH data set name (``"youtube"``, ``"sms"``) or folder (see :class:`TextClassificationDataModule`).
        label_model: a label-model name for :func:`lightning_ws.labelmodels.make_label_model` (``majority_vote``,
            ``weighted_majority_vote``, ``dawid_skene``, ``moment_matching``, ``triplet``).
        label_model_kwargs: constructor arguments of that model (``seed`` defaults to this module's ``seed``).
        label_model_path: load a saved label model (``LabelModel.save``) instead of fitting one.
        save_label_model: where to save the fitted label model (safetensors + JSON; never overwrites an existing
            file unless it is the same path given as ``label_model_path``).
        class_balance: ``None`` (the label model's default: estimated without labels), ``"uniform"``,
            ``"estimated"``, ``"dev"`` (from the gold labels of the ``valid`` split) or ``k`` probabilities.
        soft_labels: train on posteriors (``True``, default) or on hard predictions (``False``).
        drop_uncovered: drop training rows where every labeling function abstains (default ``True``: their
            "label" would only be the prior). With ``False`` they are kept with the prior as target.
        labeling_functions: optional Python labeling functions ``f(text) -> int`` (``-1`` = abstain) to apply to
            the training texts instead of using the shipped label matrix; applied in parallel, cached.
        lf_cache_dir: cache folder for applied labeling functions (``None`` = no cache).
        lf_workers: processes used to apply labeling functions (``1`` = in this process).
        tie_break: tie-breaking of hard pseudolabels (see ``LabelModel.predict``).
        class_weighting: ``"balanced"`` trains on :func:`balance_targets` (class-weighted soft cross-entropy,
            written as re-weighted targets plus a per-row loss weight: batches carry ``weight``), so every class
            carries the same total target mass; ``"none"`` trains on the targets as they are; ``"auto"`` (default) is ``"balanced"`` for ``k > 2``
            and ``"none"`` for binary tasks. Why: labeling functions of one class often fire far more than the others
            (TREC: DESC rules cover 84% of the rows), the label model's posteriors inherit that skew, and a short
            fine-tune then predicts the majority class for almost every row (TREC, 30 steps: 498 of 500 test rows,
            accuracy 0.28; balanced: see BENCHMARKS.md).
        **others: as :class:`TextClassificationDataModule`.

    Attributes:
        label_model: the fitted (or loaded) label model, after ``setup("fit")``.
        label_model_report: coverage, kept rows, class balance and its source, ``auto``'s pick and the covered rows
            where that pick alone would name a class no LF voted (``None`` for other models) and whether they keep
            to the voted classes (``support_used``: ``"voted"``, or ``"model"`` where ``support="auto"`` trusts
            the pick's own probabilities), the targets' class mass, the class
            weighting used, and the pseudolabels' accuracy against the gold training labels (a diagnostic only, with
            ties between classes broken at random by a generator seeded with ``seed``; gold labels never reach
            training; computed on the rows that have one, ``None`` for an unlabelled train split).
    """

    _train_needs_gold = False  # the targets are pseudolabels: an unlabelled train split is fine

    def __init__(
        self,
        dataset: str = "youtube",
        label_model: LabelModelName = "auto",
        label_model_kwargs: dict[str, Any] | None = None,
        label_model_path: str | None = None,
        save_label_model: str | None = None,
        class_balance: Literal["uniform", "estimated", "dev"] | list[float] | None = None,
        soft_labels: bool = True,
        drop_uncovered: bool = True,
        labeling_functions: Sequence[Callable[[str], int]] | None = None,
        lf_cache_dir: str | None = None,
        lf_workers: int = 1,
        tie_break: Literal["random", "first", "prior", "abstain"] = "random",
        class_weighting: Literal["auto", "balanced", "none"] = "auto",
        tokenizer: str | None = None,
        max_length: int = 64,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        train_limit: int | None = None,
    ) -> None:
        super().__init__(dataset=dataset, tokenizer=tokenizer, max_length=max_length, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, num_workers=num_workers, seed=seed, train_limit=train_limit)
        from lightning_ws.labelmodels import make_label_model

        if lf_workers < 1:
            raise ConfigError(f"lf_workers must be >= 1, got {lf_workers}.")
        check_choice("class_weighting", class_weighting, Literal["auto", "balanced", "none"])
        kwargs = dict(label_model_kwargs or {})
        kwargs.setdefault("seed", seed)
        kwargs.setdefault("num_classes", self.num_classes)
        if label_model_path is None:
            make_label_model(label_model, **kwargs)  # fail fast on an unknown name or bad arguments
        elif not Path(label_model_path).exists():
            raise ConfigError(f"label_model_path {label_model_path!r} does not exist; fit a label model first "
                              f"(`lightning-ws labelmodel ...` or save_label_model=...) or leave it empty.")
        self._label_model_name = label_model
        self._label_model_kwargs = kwargs
        self._label_model_path = label_model_path
        self._save_label_model = save_label_model
        self._class_balance = class_balance
        self._soft = soft_labels
        self._drop_uncovered = drop_uncovered
        self._lfs = list(labeling_functions) if labeling_functions is not None else None
        self._lf_cache_dir = lf_cache_dir
        self._lf_workers = lf_workers
        self._tie_break = tie_break
        self._class_weighting = class_weighting
        self.label_model = None
        self.label_model_report: dict[str, Any] = {}
        self.lf_analysis: list[dict[str, Any]] = []

    def label_matrix(self, data: WrenchSplit) -> np.ndarray:
        """The training split's label matrix: the shipped one, or the given labeling functions applied to texts."""
        if self._lfs is None:
            return data.weak_labels
        from lightning_ws.labelmodels.lf_apply import apply_lfs

        return apply_lfs(self._lfs, data.texts, workers=self._lf_workers, cache_dir=self._lf_cache_dir)

    def _lf_names(self, data: WrenchSplit, m: int) -> list[str] | None:
        """The LF names of the label matrix's columns (the split's, or the given functions'), if there are ``m``."""
        names = getattr(data, "lf_names", None) if self._lfs is None else [
            getattr(f, "name", None) or getattr(f, "__name__", f"lf_{j:02d}") for j, f in enumerate(self._lfs)]
        return list(names) if names is not None and len(names) == m else None

    def _fit_label_model(self, L: np.ndarray, lf_names: list[str] | None = None):
        from lightning_ws.labelmodels import LabelModel, make_label_model

        if self._label_model_path is not None:
            return LabelModel.load(self._label_model_path)
        model = make_label_model(self._label_model_name, **self._label_model_kwargs)
        fit_kwargs: dict[str, Any] = {}
        if self._class_balance == "dev":
            dev = self.load_split("valid")
            dev_L = dev.weak_labels if self._lfs is None else self.label_matrix(dev)
            fit_kwargs.update(dev_L=dev_L, dev_y=dev.labels)
        model.fit(L, class_balance=self._class_balance, lf_names=lf_names, **fit_kwargs)
        if self._save_label_model is not None:
            target = Path(self._save_label_model)
            if target.exists():
                raise ConfigError(f"save_label_model: {target} already exists; choose a new path (existing files "
                                  f"are never overwritten).")
            model.save(target)
        return model

    def train_targets(self, data: WrenchSplit) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Rows kept, pseudolabels (soft ``(n, k)`` float32 or hard ``(n,)`` int64), and ``weight`` when the class
        weighting is balanced."""
        L = self.label_matrix(data)
        if L.shape[0] != data.n:
            raise DataError(f"the label matrix has {L.shape[0]} rows for {data.n} training texts.")
        names = self._lf_names(data, L.shape[1])
        self.label_model = model = self._fit_label_model(L, names)
        covered = model.covered_rows(L)  # a vote of an LF the model ignores (auto: constant on train) labels nothing
        probs = model.predict_proba(L)
        rows = np.flatnonzero(covered) if self._drop_uncovered else np.arange(data.n)
        if rows.size == 0:
            raise DataError("every labeling function abstains on every training row: nothing to train on.")
        if self._soft:
            labels = probs[rows].astype(np.float32)
            hard = argmax_random_ties(probs[rows], np.random.default_rng(self.seed))
        else:
            hard = np.asarray(model.predict(L, tie_break=self._tie_break))[rows]
            keep = hard >= 0  # tie_break="abstain" marks unresolved ties with -1: drop them
            rows, hard = rows[keep], hard[keep]
            labels = hard.astype(np.int64)
        weighting = self._class_weighting
        if weighting == "auto":
            weighting = "balanced" if self.num_classes > 2 else "none"
        extras: dict[str, np.ndarray] = {}
        mass = labels.mean(0) if self._soft else np.bincount(labels, minlength=self.num_classes) / max(labels.size, 1)
        if weighting == "balanced":
            labels, weight = balance_targets(labels, self.num_classes)
            extras[WEIGHT] = weight.astype(np.float32)
        fit_rep = model.fit_report_
        self.label_model_report = {
            "label_model": type(model).__name__,
            # AutoLabelModel: what it chose, and how many covered rows its pick alone would give a class no LF voted
            "label_model_pick": (f"{fit_rep['selected']}/{fit_rep.get('variant', 'raw')}" if "selected" in fit_rep
                                 else None),
            "unvoted_argmax_rows": fit_rep.get("support", {}).get("unvoted_argmax_rows"),
            "support_used": fit_rep.get("support", {}).get("used"),  # "voted" or "model" (auto's support_)
            "class_balance": np.asarray(model.class_balance_).round(4).tolist(),
            "class_balance_source": model.class_balance_source,
            "coverage": float(covered.mean()),
            "rows_kept": int(rows.size),
            "rows_total": int(data.n),
            "targets": "soft" if self._soft else "hard",
            "target_class_mass": np.asarray(mass, dtype=np.float64).round(4).tolist(),
            "class_weighting": weighting,
            "pseudolabel_accuracy_vs_gold": accuracy_vs_gold(hard, data.labels[rows]),
            "gold_train_rows": int(data.has_gold.sum()),
        }
        from lightning_ws.labelmodels.matrix import LFAnalysis

        self.lf_analysis = LFAnalysis(L, data.gold_labels, lf_names=names,
                                      num_classes=self.num_classes).summary()  # W&B's LF table (wandb_training.py)
        rank_zero_info("[PseudoLabelDataModule] " + ", ".join(f"{k}={v}" for k, v in self.label_model_report.items()))
        return rows, labels, extras
