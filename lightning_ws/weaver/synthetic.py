"""Synthetic verification data with known verifier accuracies (for tests and benchmarks of Weaver, arXiv 2506.18203).

Each problem ``p`` has a correct rate ``r_p ~ Beta(a, b)``; candidate ``n`` is correct with probability ``r_p``.
Correct candidates share the answer ``"c"``; wrong ones draw from ``num_wrong_answers`` distractors (so majority vote
is informative but fooled on hard problems). Verifier ``v`` first votes with the given TPR/TNR (conditionally
independent given correctness), then reports a continuous score ``offset_v + scale_v * (vote + noise * N(0, 1))``
so verifiers live on different native scales, as real reward models do.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lightning_ws.errors import ConfigError
from lightning_ws.weaver.data import VerificationData

__all__ = ["make_synthetic_verification"]


def make_synthetic_verification(num_problems: int, num_candidates: int, tpr: Sequence[float], tnr: Sequence[float],
                                *, beta: tuple[float, float] = (1.0, 1.5), num_wrong_answers: int = 3,
                                noise: float = 0.3, missing_rate: float = 0.0, seed: int = 0) -> VerificationData:
    """Draw a :class:`VerificationData` with ``len(tpr)`` verifiers of known TPR/TNR (see the module docstring).

    Args:
        num_problems, num_candidates: ``P`` and ``N``.
        tpr, tnr: per-verifier true-positive / true-negative rates of the underlying binary vote.
        beta: Beta parameters of the per-problem correct rate (default mean 0.4, like the spec's [check] toy).
        num_wrong_answers: distinct wrong answers per problem.
        noise: Gaussian noise added to the vote before scaling (0 = exactly binary scores).
        missing_rate: fraction of scores set to NaN (missing).
        seed: seed of the data's own generator.
    """
    tpr, tnr = np.asarray(tpr, dtype=np.float64), np.asarray(tnr, dtype=np.float64)
    if tpr.shape != tnr.shape or tpr.ndim != 1 or tpr.size == 0:
        raise ConfigError("tpr and tnr must be equal-length non-empty sequences (one entry per verifier).")
    if ((tpr < 0) | (tpr > 1) | (tnr < 0) | (tnr > 1)).any():
        raise ConfigError("tpr and tnr must lie in [0, 1].")
    if num_problems < 1 or num_candidates < 1 or num_wrong_answers < 1:
        raise ConfigError("num_problems, num_candidates and num_wrong_answers must be >= 1.")
    rng = np.random.default_rng(seed)
    P, N, V = int(num_problems), int(num_candidates), tpr.size
    rate = rng.beta(beta[0], beta[1], size=P)
    y = rng.random((P, N)) < rate[:, None]
    wrong = rng.integers(0, num_wrong_answers, size=(P, N))
    # distractor popularity is skewed so the top wrong answer can beat the correct one on hard problems
    answers = [["c" if y[p, n] else f"w{wrong[p, n] if rng.random() < 0.5 else 0}" for n in range(N)]
               for p in range(P)]
    u = rng.random((P, N, V))
    vote = np.where(y[:, :, None], u < tpr, u >= tnr).astype(np.float64)
    scale = rng.uniform(0.5, 5.0, size=V)
    offset = rng.uniform(-3.0, 3.0, size=V)
    scores = offset + scale * (vote + noise * rng.standard_normal((P, N, V)))
    if missing_rate > 0:
        scores[rng.random((P, N, V)) < missing_rate] = np.nan
    return VerificationData(scores=scores, answers=answers, verifier_names=[f"verifier_{v}" for v in range(V)],
                            verifier_kinds=["reward_model"] * V, correct=y)
