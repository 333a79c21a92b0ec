"""Loki reachability is reported when a head is built, and active selection works on every metric kind.

Issue 24, point 4.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from lightning_ws.loki import (
    LabelMetric,
    LokiHead,
    LokiReachabilityWarning,
    reachability_report,
    reachable_classes,
    select_classes,
)


def _leaf_tree(n_super=4, per=5):
    """root -> n_super superclasses -> per leaves each; only the leaves are classes (CIFAR-100's coarse/fine tree)."""
    parents = {"root": None}
    leaves = []
    for s in range(n_super):
        parents[f"s{s}"] = "root"
        for j in range(per):
            leaf = s * per + j
            parents[leaf] = f"s{s}"
            leaves.append(leaf)
    return LabelMetric.from_parents(parents, classes=leaves), leaves


def test_head_on_tree_with_leaves_as_classes_warns_zero_reachable():
    metric, leaves = _leaf_tree()
    observed = [c for c in leaves if c % 5 < 3]  # 12 observed, 8 unseen
    with pytest.warns(LokiReachabilityWarning, match="0 of 8 unseen classes reachable"):
        head = LokiHead.from_metric(metric, observed)
    rep = head.reachability
    assert rep.num_unseen == 8 and rep.unseen_reachable == 0 and rep.exact and rep.method == "lp"
    assert set(rep.unreachable) == {c for c in leaves if c % 5 >= 3}
    # brute force agrees: no weight vector ever predicts an unseen leaf
    w = torch.distributions.Dirichlet(torch.ones(len(observed))).sample((2000,), )
    pred = head(torch.log(w.float()))
    assert set(pred.tolist()) <= set(metric.index(observed).tolist())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert LokiHead.from_metric(metric, observed, reachability="off").reachability is None


def test_head_on_tree_with_internal_classes_is_quiet():
    parents = {0: None, 1: 0, 2: 0, 3: 1, 4: 1, 5: 2, 6: 2}
    metric = LabelMetric.from_parents(parents)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        head = LokiHead.from_metric(metric, [3, 4, 5, 6])
    assert head.reachability.all_reachable and head.reachability.unseen_reachable == 3


def test_embedding_metric_reachability_and_active_selection_is_not_index_order():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(12, 16))
    emb[9] *= 4.0  # far from everything
    metric = LabelMetric.from_embeddings(list(range(12)), emb)
    rep = reachability_report(metric, [0, 1, 2])
    assert rep.num_unseen == 9 and rep.unseen_reachable < 9
    with pytest.warns(LokiReachabilityWarning, match="unseen classes reachable"):
        LokiHead.from_metric(metric, [0, 1, 2])
    sel = select_classes(metric, [0, 1, 2], budget=3)
    assert sel.selected != [3, 4, 5]  # today: index order, because every candidate ties on |locus|
    d = metric.min_distance_to(metric.index([0, 1, 2]))
    assert sel.selected[0] == 9 == int(d.argmax())
    counts = sel.reachable_counts
    assert counts == sorted(counts) and counts[-1] >= 6
    # the same on a distance-matrix metric of those embeddings
    dm = LabelMetric.from_matrix(list(range(12)), torch.cdist(torch.as_tensor(emb), torch.as_tensor(emb)))
    assert select_classes(dm, [0, 1, 2], budget=3).selected == sel.selected
    assert reachable_classes(dm, [0, 1, 2]).sum() == reachable_classes(metric, [0, 1, 2]).sum()


def test_loki_classifier_reports_reachability_when_built():
    from lightning_ws.modules.loki import LokiClassifier

    metric, _ = _leaf_tree(2, 3)
    with pytest.warns(LokiReachabilityWarning, match="0 of 2 unseen"):
        model = LokiClassifier(metric=metric, observed_classes=[0, 1, 3, 4], in_features=4)
    assert model.reachability.unseen_reachable == 0
