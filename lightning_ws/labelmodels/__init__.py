"""Label models for weak supervision (Lightning-free: numpy / scipy only).

Aggregate the votes of labeling functions (an ``n x m`` matrix, ``-1`` = abstain) into class probabilities:
:class:`MajorityVote`, :class:`WeightedMajorityVote`, :class:`DawidSkene`, :class:`MomentMatching` (Snorkel / MeTaL,
arXiv 1810.02840, solved to convergence) and :class:`Triplet` (FlyingSquid, arXiv 2002.11955), all behind one
:class:`LabelModel` interface; plus :func:`validate_label_matrix` and :class:`LFAnalysis`.

Example:
    >>> from lightning_ws.labelmodels import make_label_model, make_synthetic_label_matrix
    >>> data = make_synthetic_label_matrix(2000, [0.8, 0.7, 0.75, 0.9], [0.6, 0.5, 0.7, 0.3], [0.6, 0.4], seed=0)
    >>> lm = make_label_model("moment_matching", seed=0).fit(data.L)
    >>> lm.predict_proba(data.L).shape
    (2000, 2)
"""

from lightning_ws.labelmodels.auto import DEFAULT_CANDIDATES, AutoLabelModel
from lightning_ws.labelmodels.base import (
    CLASS_BALANCE_MODES,
    TIE_BREAKS,
    LabelModel,
    probs_to_preds,
    resolve_class_balance,
)
from lightning_ws.labelmodels.dawid_skene import DawidSkene
from lightning_ws.labelmodels.factory import ALIASES, LABEL_MODEL_NAMES, LabelModelName, make_label_model
from lightning_ws.labelmodels.majority import MajorityVote, WeightedMajorityVote, estimate_class_balance
from lightning_ws.labelmodels.matrix import (
    ABSTAIN,
    LFAnalysis,
    covered_mask,
    lf_clusters,
    lf_dependencies,
    merge_clusters,
    restrict_to_voted,
    validate_label_matrix,
)
from lightning_ws.labelmodels.metal_compat import MetalCompat
from lightning_ws.labelmodels.moment_matching import (
    MomentMatching,
    moment_matching_objective,
    off_diagonal_block_mask,
)
from lightning_ws.labelmodels.structure import StructureEstimate, learn_structure_rpca, structure_recovery
from lightning_ws.labelmodels.synthetic import (
    REGIMES,
    RegimeLabelMatrix,
    SyntheticLabelMatrix,
    make_regime_label_matrix,
    make_shared_abstain_label_matrix,
    make_synthetic_label_matrix,
    make_uninformative_lf_label_matrix,
)
from lightning_ws.labelmodels.triplet import Triplet, triplet_accuracies

__all__ = [
    "ABSTAIN",
    "REGIMES",
    "RegimeLabelMatrix",
    "ALIASES",
    "AutoLabelModel",
    "DEFAULT_CANDIDATES",
    "CLASS_BALANCE_MODES",
    "DawidSkene",
    "LABEL_MODEL_NAMES",
    "LabelModelName",
    "StructureEstimate",
    "learn_structure_rpca",
    "structure_recovery",
    "LFAnalysis",
    "LabelModel",
    "MajorityVote",
    "MetalCompat",
    "MomentMatching",
    "SyntheticLabelMatrix",
    "TIE_BREAKS",
    "Triplet",
    "WeightedMajorityVote",
    "covered_mask",
    "estimate_class_balance",
    "lf_clusters",
    "lf_dependencies",
    "merge_clusters",
    "restrict_to_voted",
    "make_label_model",
    "make_regime_label_matrix",
    "make_shared_abstain_label_matrix",
    "make_synthetic_label_matrix",
    "make_uninformative_lf_label_matrix",
    "moment_matching_objective",
    "off_diagonal_block_mask",
    "probs_to_preds",
    "resolve_class_balance",
    "triplet_accuracies",
    "validate_label_matrix",
]
