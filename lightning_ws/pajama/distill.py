"""Distillation pieces without Lightning: the Bradley-Terry loss, pairwise accuracy, (query, response) encoding,
and program labels for a training pool (PAJAMA arXiv 2506.10403, spec §10 and §12.6).

The reference fuses its validation rows into training and evaluates on test every epoch; here the labelled rows
used to tune the program judges are kept out of training (they are the validation set), and the program labels of
the training pool come from the label model fitted on that pool *without* its labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ProgramLabels",
    "bradley_terry_loss",
    "encode_query_response",
    "pairwise_accuracy",
    "program_labels",
    "resolve_programs",
]


def bradley_terry_loss(r_a: torch.Tensor, r_b: torch.Tensor, target: torch.Tensor,
                       weight: torch.Tensor | None = None) -> torch.Tensor:
    """Bradley-Terry loss with a soft target ``t = P(B preferred)``:
    ``-(t log sigma(r_B - r_A) + (1 - t) log sigma(r_A - r_B))``, averaged (weighted by ``weight`` when given).
    With hard targets this is the reference's ``-log sigma(r_chosen - r_rejected)``."""
    z = (r_b - r_a).float()
    t = target.float()
    per = -(t * F.logsigmoid(z) + (1 - t) * F.logsigmoid(-z))
    if weight is None:
        return per.mean()
    w = weight.float()
    return (per * w).sum() / w.sum().clamp_min(1e-12)


def pairwise_accuracy(r_a: torch.Tensor, r_b: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pair credit: 1 when the higher reward is the preferred response (``y``: 0 = A, 1 = B), 0.5 on a tie."""
    pred_b = (r_b > r_a).float()
    tie = (r_b == r_a).float()
    return (1 - tie) * (pred_b == y.float()).float() + 0.5 * tie


def encode_query_response(tokenizer: Any, queries: Sequence[str], responses: Sequence[str], max_length: int
                          ) -> list[list[int]]:
    """``[CLS] query-tail [SEP] response-head [SEP]`` ids: the response keeps up to ``max_length - 3 -
    min(len(query), budget // 2)`` tokens from its start, the query the rest from its *end* (the last turns of a
    dialogue matter most)."""
    budget = max_length - 3
    q_ids = tokenizer(list(queries), add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls is None or sep is None:
        cls = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        sep = tokenizer.eos_token_id
    out = []
    for q, r in zip(q_ids, r_ids):
        keep_q = min(len(q), budget // 2)
        r = r[: budget - keep_q]
        q = q[len(q) - (budget - len(r)):] if len(q) > budget - len(r) else q
        out.append([cls] + list(q) + [sep] + list(r) + [sep])
    return out


@dataclass
class ProgramLabels:
    """Program labels of a training pool: ``p_b`` (P(B preferred)), ``covered`` (some selected program voted) and
    the fitted pipeline's summary."""

    p_b: np.ndarray
    covered: np.ndarray
    summary: dict[str, Any]


def program_labels(train: Any, tune: Any, programs: Sequence[Any] | str = "handwritten", *,
                   aggregator: str = "auto", sandbox: Any = None, cache_dir: str | Path | None = None,
                   workers: int | None = None, seed: int = 0) -> ProgramLabels:
    """Label ``train`` (:class:`~lightning_ws.pajama.data.PreferencePairs`, labels unused) with program judges
    tuned on ``tune`` (labelled pairs): bounds, thresholds and selection on ``tune``; the label model fitted
    without labels on ``tune`` + ``train`` votes."""
    from lightning_ws.pajama.pipeline import ProgramJudgePipeline
    from lightning_ws.pajama.scoring import score_pairs

    progs = resolve_programs(programs)
    kw = {} if workers is None else {"workers": workers}
    st = score_pairs(progs, tune.queries, tune.responses_a, tune.responses_b, sandbox=sandbox, cache_dir=cache_dir,
                     **kw)
    sp = score_pairs(progs, train.queries, train.responses_a, train.responses_b, sandbox=sandbox,
                     cache_dir=cache_dir, **kw)
    pipe = ProgramJudgePipeline(aggregator=aggregator, seed=seed).fit(st.scores, tune.y, pool_scores=sp.scores,
                                                                       names=st.names)
    p = pipe.predict_proba(sp.scores)
    covered = (pipe.votes(sp.scores)[:, pipe.chosen] >= 0).any(1)
    return ProgramLabels(p, covered, pipe.summary())


def resolve_programs(programs: Sequence[Any] | str) -> list[Any]:
    """``"handwritten"`` (the committed set), a :class:`~lightning_ws.programs.ProgramStore` folder (its valid
    ``judging_function`` programs), or a list of programs."""
    from lightning_ws.errors import DataError

    if isinstance(programs, str):
        if programs == "handwritten":
            from lightning_ws.pajama.scoring import handwritten_judges

            return handwritten_judges()
        from lightning_ws.programs.store import ProgramStore

        if not Path(programs).is_dir():
            raise DataError(f"programs: {programs!r} is neither 'handwritten' nor a program-store folder.")
        progs = [p for p in ProgramStore(programs) if p.valid and p.entry == "judging_function"]
        if not progs:
            raise DataError(f"no valid judging_function programs in the store {programs}; generate some with "
                            f"`lightning-ws pajama generate` or use programs: handwritten.")
        return progs
    return list(programs)
