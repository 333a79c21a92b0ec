"""Grad-Mimic (arXiv 2501.06708) algorithm core: closed-form mimic scores, batch weights, filters. No Lightning.

* :mod:`~lightning_ws.gradmimic.scores`: per-sample mimic scores of a linear layer from its inputs and output
  gradients (``proj``/``cos``), the GraNd and RHO-LOSS baseline scores, the batch softmax and the weighted gradient;
* :mod:`~lightning_ws.gradmimic.filters`: binarisers (``1/B`` threshold, 1-D 2-means, 2-component GMM), vote
  aggregation (majority, label model, last round) and :class:`MimicScoreFilter`;
* :mod:`~lightning_ws.gradmimic.records`: :class:`ScoreLog`, per-sample weights/scores keyed by sample id;
* :mod:`~lightning_ws.gradmimic.reference`: loading and checking reference weights, running the reference;
* :mod:`~lightning_ws.gradmimic.loss`: :func:`reduce_per_sample_loss` for modules (weighted sum under ``all_params``);
* :mod:`~lightning_ws.gradmimic.signal`: when the direction carries signal: scores in output space, the alignment
  kappa, the filter's table checks, and the RHO-LOSS holdout selection baseline.

The Lightning callback is :class:`lightning_ws.callbacks.gradmimic.GradMimicCallback`.
"""

from lightning_ws.gradmimic.filters import (
    ABSTAIN,
    AGGREGATORS,
    BINARIZERS,
    FilterResult,
    MimicScoreFilter,
    aggregate_votes,
    binarize,
    gmm_1d,
    top_p_indices,
    two_means_1d,
    vote_matrix,
)
from lightning_ws.gradmimic.loss import reduce_per_sample_loss
from lightning_ws.gradmimic.records import ScoreLog
from lightning_ws.gradmimic.signal import (
    GradMimicSignalWarning,
    alignment_counts,
    kappa_from_counts,
    output_mimic_scores,
    reducible_loss_selection,
    table_signal,
)
from lightning_ws.gradmimic.reference import check_same_architecture, load_reference_state, reference_layer
from lightning_ws.gradmimic.scores import (
    SCORE_VARIANTS,
    TargetDirection,
    batch_scores,
    batch_softmax_weights,
    batch_softmax_weights_checked,
    grand_scores,
    mimic_scores,
    per_sample_grad_norms,
    per_sample_layer_grads,
    rho_scores,
    target_direction,
    weight_entropy,
    weighted_layer_grad,
)

__all__ = [
    "ABSTAIN", "AGGREGATORS", "BINARIZERS", "SCORE_VARIANTS", "FilterResult", "GradMimicSignalWarning",
    "MimicScoreFilter", "ScoreLog", "TargetDirection", "alignment_counts", "kappa_from_counts", "output_mimic_scores",
    "reduce_per_sample_loss", "reducible_loss_selection", "table_signal",
    "aggregate_votes", "batch_scores", "batch_softmax_weights", "batch_softmax_weights_checked", "binarize", "check_same_architecture", "gmm_1d", "grand_scores",
    "load_reference_state", "mimic_scores", "per_sample_grad_norms", "per_sample_layer_grads", "reference_layer",
    "rho_scores", "target_direction", "top_p_indices", "two_means_1d", "vote_matrix", "weight_entropy",
    "weighted_layer_grad",
]
