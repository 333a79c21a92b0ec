"""Loki: geometry-aware prediction over a label metric space (Roberts et al., arXiv 2307.12226), Lightning-free.

* :class:`LabelMetric`: metric spaces over stable class ids (distance matrix, embeddings, trees/DAGs, networkx,
  WordNet via :func:`wordnet_metric`);
* :func:`loki_predict` / :func:`loki_predict_embedding` / :class:`LokiHead`: the Fréchet-mean rule
  ``argmin_y sum_i P_i d^2(y, λ_i)``, chunked;
* :func:`reachable_classes`, :func:`active_next_class`, :func:`select_classes`: the locus and active selection.
"""

from lightning_ws.loki.active import (
    ActiveSelection,
    LokiReachabilityWarning,
    ReachabilityReport,
    active_next_class,
    reachability_report,
    reachable_classes,
    select_classes,
)
from lightning_ws.loki.metric_space import LabelMetric, validate_distance_matrix
from lightning_ws.loki.predict import LokiHead, check_weights, loki_predict, loki_predict_embedding, loki_scores
from lightning_ws.loki.wordnet import read_wordnet_nouns, wordnet_metric

__all__ = [
    "ActiveSelection",
    "LabelMetric",
    "LokiHead",
    "LokiReachabilityWarning",
    "ReachabilityReport",
    "active_next_class",
    "check_weights",
    "loki_predict",
    "loki_predict_embedding",
    "loki_scores",
    "reachability_report",
    "reachable_classes",
    "read_wordnet_nouns",
    "select_classes",
    "validate_distance_matrix",
    "wordnet_metric",
]
