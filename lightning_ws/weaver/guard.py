"""Answer agreement as a per-candidate feature (Weaver, arXiv 2506.18203).

:func:`answer_share` is what the label-free guard of :class:`~lightning_ws.weaver.Weaver` and the distilled
cross-encoder (:class:`~lightning_ws.modules.weaver.WeaverCrossEncoder`, ``use_agreement=True``) read from the
candidates alone: the fraction of a problem's candidates that reached the same extracted answer. It needs no verifier,
so a deployed student can compute it from its N sampled candidates. The guard itself lives in
:meth:`~lightning_ws.weaver.Weaver.fit` (criterion in its docstring and in ``report_["guard"]``). Lightning-free (numpy).
"""

from __future__ import annotations

import numpy as np

from lightning_ws.errors import DataError

__all__ = ["answer_share"]


def answer_share(answer_ids: np.ndarray, present: np.ndarray | None = None) -> np.ndarray:
    """``(P, N)`` fraction of the problem's candidates that share each candidate's answer (0 without an answer).

    ``present`` (optional ``(P, N)`` bool, :meth:`~lightning_ws.weaver.VerificationData.present`): the fraction is
    of the problem's present candidates, so padding a problem to a common ``N`` does not dilute its shares."""
    ids = np.asarray(answer_ids)
    if ids.ndim != 2:
        raise DataError(f"answer_ids must have shape (P, N); got {ids.shape}.")
    same = (ids[:, :, None] == ids[:, None, :]) & (ids[:, :, None] >= 0)
    if present is None:
        return same.sum(axis=2) / ids.shape[1]
    pres = np.asarray(present, dtype=bool)
    if pres.shape != ids.shape:
        raise DataError(f"present must have shape {ids.shape}; got {pres.shape}.")
    return same.sum(axis=2) / np.maximum(pres.sum(axis=1, keepdims=True), 1)
