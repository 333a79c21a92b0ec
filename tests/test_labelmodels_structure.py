"""Robust-PCA structure learning (Varma et al. 2019): recovery of planted LF dependencies, LFAnalysis report, auto."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_ws.errors import ConfigError
from lightning_ws.labelmodels import (
    ALIASES,
    LABEL_MODEL_NAMES,
    AutoLabelModel,
    LabelModelName,
    LFAnalysis,
    learn_structure_rpca,
    lf_clusters,
    make_regime_label_matrix,
    structure_recovery,
)
from lightning_ws.labelmodels.base import registry


@pytest.mark.parametrize(("k", "m", "lf_type"), [(2, 16, "multi"), (6, 24, "single"), (4, 16, "mixed")])
def test_rpca_recovers_planted_dependencies(k, m, lf_type):
    # copy_prob 0.5: members copy their leader on half the rows - too weak for the agreement clusters (firing
    # correlation ~0.5 < 0.7), a real dependency all the same.
    d = make_regime_label_matrix(4000, k=k, m=m, lf_type=lf_type, cluster_frac=0.4, cluster_size=3,
                                 copy_prob=0.5, seed=1)
    planted = [c for c in d.clusters if len(c) > 1]
    est = learn_structure_rpca(d.L, k)
    rec = structure_recovery([list(e) for e in est.edges], planted)
    assert rec["precision"] >= 0.8 and rec["recall"] >= 0.6, rec
    assert est.rank <= k - 1
    agree = structure_recovery(lf_clusters(d.L, k), planted)
    assert agree["recall"] <= rec["recall"]
    if lf_type == "multi":  # votes that copy on half the rows: invisible to the agreement clusters
        assert agree["recall"] == 0.0 < rec["recall"]
    comps = est.components(m)
    assert sorted(j for g in comps for j in g) == list(range(m))


@pytest.mark.parametrize(("k", "lf_type"), [(2, "multi"), (6, "single")])
def test_rpca_no_false_edges_on_independent_lfs(k, lf_type):
    # same-class single-class LFs are correlated through Y alone: the low-rank part must absorb that
    d = make_regime_label_matrix(4000, k=k, m=24, lf_type=lf_type, seed=2)
    est = learn_structure_rpca(d.L, k)
    assert len(est.edges) <= 1, est.edges


def test_rpca_duplicates_and_arguments():
    d = make_regime_label_matrix(3000, k=3, m=10, seed=3)
    L = np.concatenate([d.L, d.L[:, :1]], axis=1)  # an exact duplicate makes the covariance singular
    est = learn_structure_rpca(L, 3)
    assert (0, 10) in est.edges
    with pytest.raises(ConfigError, match="sparsity"):
        learn_structure_rpca(L, 3, sparsity=0)
    with pytest.raises(ConfigError, match="threshold"):
        learn_structure_rpca(L, 3, threshold=1.5)
    assert structure_recovery([], [[0, 1]])["recall"] == 0.0


def test_lfanalysis_reports_rpca_edges_beside_clusters():
    d = make_regime_label_matrix(3000, k=3, m=12, cluster_frac=0.5, cluster_size=3, copy_prob=0.6, seed=0)
    a = LFAnalysis(d.L, num_classes=3)
    edges = a.rpca_edges()
    assert edges and all(set(e) <= {"lfs", "partial_corr", "cluster"} for e in edges)
    names = a.lf_names
    planted = {frozenset((names[i], names[j])) for c in d.clusters for i in c for j in c if i < j}
    assert all(frozenset(e["lfs"]) in planted for e in edges)
    table = a.to_table()
    assert "clusters of strongly dependent LFs" in table and "Varma et al. 2019" in table


def test_auto_structure_option():
    d = make_regime_label_matrix(3000, k=3, m=12, cluster_frac=0.5, cluster_size=3, copy_prob=0.6, seed=0)
    a = AutoLabelModel(3, structure="both").fit(d.L)
    planted = [sorted(c) for c in d.clusters if len(c) > 1]
    assert [sorted(c) for c in a.clusters_ if len(c) > 1] == sorted(planted)
    assert "rpca_edges" in a.fit_report_
    mv = (AutoLabelModel(3, candidates=()).fit(d.L).predict(d.L) == d.y).mean()
    assert (a.predict(d.L) == d.y).mean() >= mv - 0.005
    with pytest.raises(ConfigError, match="structure"):
        AutoLabelModel(3, structure="graph")


def test_names_derive_from_registry():
    from typing import get_args

    assert set(LABEL_MODEL_NAMES) == set(registry())
    assert LABEL_MODEL_NAMES[-1] == "auto"
    assert set(get_args(LabelModelName)) == set(LABEL_MODEL_NAMES) | set(ALIASES)


def test_datamodule_label_model_is_literal():
    import inspect

    from lightning_ws.datamodules.weak_supervision import PseudoLabelDataModule

    ann = inspect.signature(PseudoLabelDataModule.__init__).parameters["label_model"].annotation
    assert ann in ("LabelModelName", LabelModelName)
    assert not hasattr(PseudoLabelDataModule, "_known_models")


def test_lfanalysis_table_skips_rpca_on_wide_matrices(monkeypatch):
    import lightning_ws.labelmodels.matrix as mx

    d = make_regime_label_matrix(500, k=3, m=8, seed=0)
    monkeypatch.setattr(mx, "_TABLE_RPCA_MAX_COLUMNS", 5)
    a = LFAnalysis(d.L, num_classes=3)
    assert "not computed" in a.to_table() and a._structure is None
    assert isinstance(a.rpca_edges(), list)  # explicit access still computes it
    assert "not computed" not in a.to_table()
