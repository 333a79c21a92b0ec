"""Weaver: verifier-ensemble selection with a weak-supervision label model (arXiv 2506.18203). Lightning-free.

Example:
    >>> from lightning_ws.weaver import Weaver, make_synthetic_verification
    >>> data = make_synthetic_verification(50, 8, [0.9, 0.8, 0.6, 0.55], [0.85, 0.8, 0.5, 0.6], seed=0)
    >>> w = Weaver().fit(data, mode="label_free")
    >>> w.score(data).shape, w.select(data).shape
    ((50, 8), (50,))
"""

from lightning_ws.weaver.data import (
    NO_ANSWER,
    VerificationData,
    load_gsm8k_verification,
    load_weaver_table,
    present_candidates,
    unanswered_candidates,
)
from lightning_ws.weaver.select import (
    MODES,
    TIE_BREAKS,
    Binarizer,
    ScoreNormalizer,
    VerifierFilter,
    Weaver,
    first_sample_select,
    majority_vote_scores,
    majority_vote_select,
    select_candidates,
    tie_rate,
)
from lightning_ws.weaver.answer_model import AnswerLevelModel
from lightning_ws.weaver.leniency import ProblemOffsets, estimate_problem_offsets
from lightning_ws.weaver.structure import detect_verifier_groups, pool_groups
from lightning_ws.weaver.suite import SUITE, make_suite_set
from lightning_ws.weaver.synthetic import make_synthetic_verification

__all__ = [
    "SUITE",
    "AnswerLevelModel",
    "MODES",
    "NO_ANSWER",
    "ProblemOffsets",
    "TIE_BREAKS",
    "Binarizer",
    "ScoreNormalizer",
    "VerificationData",
    "VerifierFilter",
    "Weaver",
    "first_sample_select",
    "load_gsm8k_verification",
    "load_weaver_table",
    "majority_vote_scores",
    "majority_vote_select",
    "make_suite_set",
    "make_synthetic_verification",
    "detect_verifier_groups",
    "estimate_problem_offsets",
    "pool_groups",
    "present_candidates",
    "select_candidates",
    "tie_rate",
    "unanswered_candidates",
]
