"""Train an end model on labels from LLM-written programs: :class:`ProgramLabelDataModule`.

Programs (from a :class:`~lightning_ws.programs.store.ProgramStore`, or the shipped recorded responses) run in the
sandbox on the training texts (never in this process); their votes, alone or combined with the data set's
hand-written labeling functions (``joint`` or the ScriptoriumWS ``cascade``), go through a label model from
:mod:`lightning_ws.labelmodels`; the end model trains on the posteriors (soft) or hard labels. Gold labels are used
for validation and test only, and -- when asked -- for dev filtering of programs on the ``valid`` split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from lightning.pytorch.utilities import rank_zero_info

from lightning_ws.contracts import WEIGHT
from lightning_ws.data import WrenchSplit
from lightning_ws.datamodules.text import TextClassificationDataModule
from lightning_ws.errors import ConfigError, DataError

__all__ = ["ProgramLabelDataModule"]


class ProgramLabelDataModule(TextClassificationDataModule):
    """Text classification trained from program labels (ScriptoriumWS arXiv 2502.12366, Alchemist 2407.11004).

    Args:
        dataset: WRENCH data set name or folder.
        programs: ``"recorded"`` (the shipped recorded responses for ``task``) or a program-store folder.
        task: task name of the programs (default: ``dataset``).
        prompt_ids: which prompts' programs to use (default: all of the store / recording).
        combine: ``generated`` (programs only), ``human`` (the data set's LFs only), ``joint`` (one label model over
            both) or ``cascade`` (human first, programs for the rows no human LF covers).
        label_model: a name for :func:`lightning_ws.labelmodels.make_label_model`; default ``"auto"``, the package's
            default (:class:`~lightning_ws.labelmodels.AutoLabelModel`: majority vote unless another model beats it
            by a label-free criterion), as in :class:`~lightning_ws.datamodules.PseudoLabelDataModule`.
        label_model_kwargs: its constructor arguments (``seed`` defaults to ``seed``).
        class_balance: ``None`` (estimated without labels), ``"uniform"`` or ``k`` probabilities.
        soft_labels: train on posteriors (default) or hard labels.
        drop_uncovered: drop training rows no source votes on (``cascade`` covers every row).
        class_weighting: ``"balanced"`` trains on class-balanced targets with a per-row loss weight
            (:func:`~lightning_ws.datamodules.weak_supervision.balance_targets`), ``"none"`` on the targets as they
            are; ``"auto"`` (default, as in ``PseudoLabelDataModule``) is ``"balanced"`` for ``k > 2`` and ``"none"``
            for binary tasks.
        dedup: drop programs whose training votes equal an earlier program's (behavioural de-duplication).
        min_dev_accuracy, min_dev_coverage: keep programs with at least this accuracy / coverage on the ``valid``
            split (uses its gold labels; ``0`` = no filtering, the papers' setting).
        cache_dir: cache of program outputs by (program hash, data hash).
        sandbox: :class:`~lightning_ws.programs.sandbox.SandboxConfig` fields (workers, timeouts, ...).
        progress: a progress bar (tqdm, on stderr) while the programs run on the training texts.
        **others: as :class:`TextClassificationDataModule`.

    Under ``fast_dev_run`` only the first 256 training rows are labelled (a smoke test of the whole path).

    Attributes:
        label_report: programs used, coverage, class balance and its source, sandbox errors and layers, and the
            pseudolabels' accuracy against the gold training labels (a diagnostic; gold never reaches training).
    """

    _train_needs_gold = False  # the targets are pseudolabels: an unlabelled train split is fine

    def __init__(
        self,
        dataset: str = "youtube",
        programs: str = "recorded",
        task: str | None = None,
        prompt_ids: Sequence[str] | None = None,
        combine: Literal["generated", "human", "joint", "cascade"] = "generated",
        label_model: str = "auto",
        label_model_kwargs: dict[str, Any] | None = None,
        class_balance: Literal["uniform"] | list[float] | None = None,
        soft_labels: bool = True,
        drop_uncovered: bool = True,
        class_weighting: Literal["auto", "balanced", "none"] = "auto",
        dedup: bool = True,
        min_dev_accuracy: float = 0.0,
        min_dev_coverage: float = 0.0,
        cache_dir: str | None = None,
        sandbox: dict[str, Any] | None = None,
        progress: bool = True,
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
        from lightning_ws.programs.apply import COMBINE_MODES
        from lightning_ws.programs.sandbox import SandboxConfig

        if combine not in COMBINE_MODES:
            raise ConfigError(f"combine must be one of {COMBINE_MODES}, got {combine!r}.")
        if class_weighting not in ("auto", "balanced", "none"):
            raise ConfigError(f"class_weighting must be 'auto', 'balanced' or 'none', got {class_weighting!r}.")
        if class_balance == "dev":
            raise ConfigError("class_balance='dev' is not offered here; pass null (estimated), 'uniform' or k "
                              "probabilities.")
        kwargs = dict(label_model_kwargs or {})
        kwargs.setdefault("seed", seed)
        make_label_model(label_model, num_classes=self.num_classes, **kwargs)  # fail fast
        SandboxConfig(**(sandbox or {}))  # fail fast on a bad sandbox setting
        self.programs_source = programs
        self.task = task or (dataset if isinstance(dataset, str) else None)
        self.prompt_ids = list(prompt_ids) if prompt_ids else None
        self.combine = combine
        self.label_model_name = label_model
        self.label_model_kwargs = kwargs
        self.class_balance = class_balance
        self.soft = soft_labels
        self.drop_uncovered = drop_uncovered
        self.class_weighting = class_weighting
        self.dedup = dedup
        self.min_dev_accuracy = min_dev_accuracy
        self.min_dev_coverage = min_dev_coverage
        self.cache_dir = cache_dir
        self.sandbox_kwargs = dict(sandbox or {})
        self.progress = progress
        self.combined = None
        self.label_report: dict[str, Any] = {}
        self.lf_analysis: list[dict[str, Any]] = []

    def load_programs(self) -> list[Any]:
        """The valid programs to apply."""
        from lightning_ws.programs.generate import recorded_programs
        from lightning_ws.programs.store import ProgramStore

        if self.programs_source == "recorded":
            progs = recorded_programs(self.task, self.prompt_ids)
        else:
            store = ProgramStore(self.programs_source)
            progs = [p for p in store.select(task=self.task)
                     if self.prompt_ids is None or p.prompt_id in self.prompt_ids]
        progs = [p for p in progs if p.valid]
        if not progs and self.combine != "human":
            raise DataError(f"no valid programs for task {self.task!r} (prompts {self.prompt_ids or 'all'}) in "
                            f"{self.programs_source!r}; generate some with `lightning-ws programs generate`.")
        return progs

    def train_targets(self, data: WrenchSplit) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Rows kept, their pseudolabels (soft ``(n, k)`` float32 or hard ``(n,)`` int64) and, with balanced class
        weighting, a per-row ``weight``."""
        from lightning_ws.datamodules.weak_supervision import accuracy_vs_gold, balance_targets
        from lightning_ws.programs.apply import apply_programs, combine_sources, dedup_programs, filter_programs
        from lightning_ws.programs.sandbox import ProgramSandbox

        L_gen = None
        report: dict[str, Any] = {"combine": self.combine}
        trainer = getattr(self, "trainer", None)
        if trainer is not None and getattr(trainer, "fast_dev_run", False):
            # a smoke test: label only the first rows (Lightning runs a batch or two anyway)
            n_smoke = min(data.n, 256)
            data = WrenchSplit(name=data.name, split=data.split, ids=data.ids[:n_smoke], texts=data.texts[:n_smoke],
                               labels=data.labels[:n_smoke], weak_labels=data.weak_labels[:n_smoke],
                               lf_names=data.lf_names, class_names=data.class_names)
            report["fast_dev_run_rows"] = n_smoke
        if self.combine != "human":
            progs = self.load_programs()
            with ProgramSandbox(**self.sandbox_kwargs) as sb:
                app = apply_programs(progs, data.texts, num_classes=self.num_classes, sandbox=sb,
                                     cache_dir=self.cache_dir, progress=self.progress)
                keep = list(range(len(progs)))
                if self.dedup:
                    keep, _ = dedup_programs(app.L)
                if self.min_dev_accuracy > 0 or self.min_dev_coverage > 0:
                    dev = self.load_split("valid")
                    dev_app = apply_programs([progs[j] for j in keep], dev.texts, num_classes=self.num_classes,
                                             sandbox=sb, cache_dir=self.cache_dir)
                    ok = filter_programs(dev_app.L, dev.labels, min_coverage=self.min_dev_coverage,
                                         min_accuracy=self.min_dev_accuracy)
                    keep = [keep[j] for j in ok]
                report.update(programs=len(progs), programs_used=len(keep), sandbox_errors=len(app.errors),
                              sandbox_layers=app.layers, cache_hits=app.cache_hits)
            L_gen = app.L[:, keep]
            gen_names = [f"program:{getattr(progs[j], 'id', j)}" for j in keep]
        L_h = data.weak_labels if self.combine in ("human", "joint", "cascade") else None
        comb = combine_sources(L_h, L_gen, mode=self.combine, label_model=self.label_model_name,
                               num_classes=self.num_classes, class_balance=self.class_balance,
                               seed=self.label_model_kwargs.get("seed", self.seed),
                               label_model_kwargs={k: v for k, v in self.label_model_kwargs.items() if k != "seed"})
        self.combined = comb
        rows = np.flatnonzero(comb.covered) if self.drop_uncovered else np.arange(data.n)
        if rows.size == 0:
            raise DataError("no source votes on any training row: nothing to train on.")
        hard = comb.probs[rows].argmax(1)
        labels = comb.probs[rows].astype(np.float32) if self.soft else hard.astype(np.int64)
        mass = labels.mean(0) if self.soft else np.bincount(labels, minlength=self.num_classes) / max(labels.size, 1)
        weighting = self.class_weighting
        if weighting == "auto":
            weighting = "balanced" if self.num_classes > 2 else "none"
        extras: dict[str, np.ndarray] = {}
        if weighting == "balanced":
            labels, weight = balance_targets(labels, self.num_classes)
            extras[WEIGHT] = np.asarray(weight, dtype=np.float32)
        model = next(iter(comb.models.values()))
        inner = getattr(model, "inner_", None)
        report.update(label_model=type(model).__name__ + (f" -> {type(inner).__name__}" if inner is not None else ""),
                      unvoted_argmax_rows=model.fit_report_.get("support", {}).get("unvoted_argmax_rows"),
                      support_used=model.fit_report_.get("support", {}).get("used"),
                      class_balance_source=model.class_balance_source,
                      class_balance=np.asarray(model.class_balance_).round(4).tolist(),
                      coverage=float(comb.covered.mean()), rows_kept=int(rows.size), rows_total=int(data.n),
                      targets="soft" if self.soft else "hard",
                      target_class_mass=np.asarray(mass, dtype=np.float64).round(4).tolist(),
                      class_weighting=weighting,
                      pseudolabel_accuracy_vs_gold=accuracy_vs_gold(hard, data.labels[rows]),
                      gold_train_rows=int(data.has_gold.sum()))
        self.label_report = report
        from lightning_ws.labelmodels.matrix import LFAnalysis

        parts = [(m, names) for m, names in ((L_h, [f"human:{n}" for n in (data.lf_names or [])]),
                                             (L_gen, gen_names if L_gen is not None else [])) if m is not None]
        if parts:  # the LF table of every source that voted (W&B, lightning_ws.wandb_training)
            L_all = np.hstack([m for m, _ in parts])
            names = [n for m, ns in parts for n in (ns if len(ns) == m.shape[1] else
                                                     [f"lf_{i}" for i in range(m.shape[1])])]
            self.lf_analysis = LFAnalysis(L_all, data.gold_labels, lf_names=names,
                                          num_classes=self.num_classes).summary()
        rank_zero_info("[ProgramLabelDataModule] " + ", ".join(f"{k}={v}" for k, v in report.items()
                                                                   if k != "sandbox_layers"))
        return rows, labels, extras
