"""The fitted program-judge pipeline: normalise -> differences -> thresholds -> selection -> aggregation.

:class:`ProgramJudgePipeline` works on score arrays (Lightning-free, no sandbox); :class:`ProgramJudge` wraps it
with the programs and a sandbox so it judges raw ``(query, response_a, response_b)`` triples (what the bias probes
and the distillation labels need). PAJAMA: arXiv 2506.10403 (spec §9, with the fixes of §12.3-12.5).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lightning_ws.errors import ConfigError, DataError
from lightning_ws.pajama.aggregate import (
    PairwiseAggregator,
    RobustNormalizer,
    Selection,
    ThresholdFit,
    ThresholdTuner,
    pairwise_metrics,
    pairwise_votes,
    score_differences,
    select_programs,
)

__all__ = ["REFERENCE_CONFIG", "JudgeConfig", "ProgramJudge", "ProgramJudgePipeline"]


@dataclass
class JudgeConfig:
    """Settings of :class:`ProgramJudgePipeline` (defaults: ours; :data:`REFERENCE_CONFIG`: the reference's rules).

    Args:
        q_low, q_high: normalisation percentiles (1, 99).
        objective, min_coverage, grid, n_grid, prefer: :class:`~lightning_ws.pajama.aggregate.ThresholdTuner`.
        min_accuracy, rank_by, k, k_metric: :func:`~lightning_ws.pajama.aggregate.select_programs`.
        aggregator: ``"majority_vote"`` or a label-model name (default ``"auto"``, the library's label-free
            safeguard), fitted without labels.
        k_aggregator: the aggregator used while choosing ``k`` (default ``"majority_vote"``: one label-model fit per
            candidate ``k`` costs seconds and the reference's own notes say the label model barely beats majority
            vote; set it to ``aggregator`` for the reference's choice).
        fit_pool: what the label model is fitted on: ``"pool"`` (the unlabeled rows passed to :meth:`fit`, plus
            validation; default) or ``"val"`` (validation only, as the reference).
        dedup: behavioural de-duplication: of programs whose validation votes are identical, only the first is
            kept (the others are dropped as duplicates before ranking; default True).
        seed: label-model seed.
    """

    q_low: float = 1.0
    q_high: float = 99.0
    objective: Literal["wilson", "accuracy_x_coverage", "covered_accuracy"] = "wilson"
    min_coverage: float = 0.2
    grid: Literal["quantile", "reference"] = "quantile"
    n_grid: int = 40
    prefer: Literal["coverage", "larger"] = "coverage"
    min_accuracy: float = 0.5
    rank_by: Literal["objective", "accuracy"] = "objective"
    k: int | None = None
    k_metric: Literal["all", "covered"] = "all"
    aggregator: str = "auto"
    k_aggregator: str = "majority_vote"
    fit_pool: Literal["pool", "val"] = "pool"
    dedup: bool = True
    seed: int = 0


#: The reference's rules (spec §9): fixed grid 0..0.14, covered accuracy with ties to the larger threshold, no
#: minimum coverage, rank by covered accuracy, ``k`` by covered accuracy, label model fitted on validation only.
REFERENCE_CONFIG = JudgeConfig(objective="covered_accuracy", min_coverage=0.0, grid="reference", prefer="larger",
                               rank_by="accuracy", k_metric="covered", fit_pool="val", aggregator="dawid_skene",
                               k_aggregator="dawid_skene")


class ProgramJudgePipeline:
    """Fit on labelled validation scores, then judge any scores (see the module docstring).

    Example::

        pipe = ProgramJudgePipeline().fit(val_scores, y_val, pool_scores=test_scores)   # labels: validation only
        p_b = pipe.predict_proba(test_scores)                                              # P(B preferred)
    """

    def __init__(self, config: JudgeConfig | None = None, **overrides: Any) -> None:
        base = asdict(config) if config is not None else {}
        base.update(overrides)
        self.config = JudgeConfig(**base)
        self.normalizer = RobustNormalizer(self.config.q_low, self.config.q_high)
        self.thresholds: ThresholdFit | None = None
        self.selection: Selection | None = None
        self.aggregator: PairwiseAggregator | None = None
        self.names: list[str] = []

    def votes(self, scores: np.ndarray) -> np.ndarray:
        """``(n, V)`` votes of every program (thresholds applied; not only the selected ones)."""
        if self.thresholds is None:
            raise ConfigError("ProgramJudgePipeline is not fitted; call fit() first.")
        return pairwise_votes(score_differences(self.normalizer.transform(scores)), self.thresholds.thresholds)

    def fit(self, val_scores: np.ndarray, y_val: np.ndarray, *, pool_scores: np.ndarray | None = None,
            names: Sequence[str] | None = None) -> ProgramJudgePipeline:
        """Fit bounds, thresholds and selection on validation (labels), the aggregator on the unlabeled pool."""
        c = self.config
        y_val = np.asarray(y_val)
        if len(y_val) != len(val_scores):
            raise DataError(f"y_val has {len(y_val)} rows, val_scores {len(val_scores)}.")
        self.names = list(names) if names is not None else [f"program_{j}" for j in range(val_scores.shape[2])]
        self.normalizer.fit(val_scores)
        d_val = score_differences(self.normalizer.transform(val_scores))
        self.thresholds = ThresholdTuner(c.objective, c.min_coverage, c.grid, c.n_grid, c.prefer).fit(d_val, y_val)
        L_val = pairwise_votes(d_val, self.thresholds.thresholds)
        pool = L_val
        if c.fit_pool == "pool" and pool_scores is not None:
            pool = np.vstack([L_val, self.votes(pool_scores)])
        duplicates: dict[int, str] = {}
        if c.dedup:
            from lightning_ws.programs.apply import dedup_programs

            _, groups = dedup_programs(L_val)
            duplicates = {j: f"same validation votes as {self.names[k]}" for k, g in groups.items() for j in g[1:]}
        self.selection = select_programs(L_val, y_val, self.thresholds, min_accuracy=c.min_accuracy,
                                         require_feasible=c.min_coverage > 0, rank_by=c.rank_by, k=c.k,
                                         k_metric=c.k_metric, aggregator=c.k_aggregator, pool_L=pool,
                                         exclude=duplicates)
        if not self.selection.chosen:
            raise DataError("no judge program passed the validation filters (accuracy >= "
                            f"{c.min_accuracy}, coverage >= {c.min_coverage}); lower them or add programs. "
                            f"Dropped: {self.selection.dropped}")
        self.aggregator = PairwiseAggregator(c.aggregator, seed=c.seed).fit(pool[:, self.selection.chosen])
        return self

    @property
    def chosen(self) -> list[int]:
        if self.selection is None:
            raise ConfigError("ProgramJudgePipeline is not fitted; call fit() first.")
        return self.selection.chosen

    def predict_proba(self, scores: np.ndarray) -> np.ndarray:
        """``(n,)`` P(B preferred) (0.5 where every selected program abstains)."""
        if self.aggregator is None:
            raise ConfigError("ProgramJudgePipeline is not fitted; call fit() first.")
        return self.aggregator.predict_proba(self.votes(scores)[:, self.chosen])

    def evaluate(self, scores: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """:func:`~lightning_ws.pajama.aggregate.pairwise_metrics` of the aggregate on labelled scores."""
        return pairwise_metrics(self.predict_proba(scores), y)

    def summary(self) -> dict[str, Any]:
        """JSON-able description: config, bounds, thresholds, selection (with names)."""
        if self.thresholds is None or self.selection is None:
            raise ConfigError("ProgramJudgePipeline is not fitted; call fit() first.")
        return {"config": asdict(self.config), "normalizer": self.normalizer.to_dict(),
                "programs": self.thresholds.rows(self.names),
                "selected": [self.names[j] for j in self.chosen], "k": self.selection.k,
                "dropped": {self.names[j]: why for j, why in self.selection.dropped.items()},
                "k_curve": self.selection.curve}

    def save(self, path: str | Path) -> Path:
        """Write :meth:`summary` as JSON (atomically)."""
        from lightning_ws.io import atomic_write_text, to_jsonable

        path = Path(path)
        atomic_write_text(path, json.dumps(to_jsonable(self.summary()), indent=1))
        return path


class ProgramJudge:
    """A fitted pipeline plus its programs: judges raw triples by scoring them in the sandbox.

    ``judge(queries, responses_a, responses_b) -> (n,)`` P(B preferred); programs outside the selection are not run.
    """

    def __init__(self, programs: Sequence[Any], pipeline: ProgramJudgePipeline, *, sandbox: Any = None,
                 cache_dir: str | Path | None = None) -> None:
        self.programs = list(programs)
        self.pipeline = pipeline
        self.sandbox = sandbox
        self.cache_dir = cache_dir
        self.name = "programs"

    def scores(self, queries: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> np.ndarray:
        from lightning_ws.pajama.scoring import score_pairs

        chosen = self.pipeline.chosen
        sub = score_pairs([self.programs[j] for j in chosen], queries, responses_a, responses_b,
                          sandbox=self.sandbox, cache_dir=self.cache_dir).scores
        full = np.full((len(queries), 2, len(self.programs)), np.nan)
        full[:, :, chosen] = sub
        return full

    def __call__(self, queries: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> np.ndarray:
        return self.pipeline.predict_proba(self.scores(queries, responses_a, responses_b))
