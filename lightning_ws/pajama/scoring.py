"""Judge programs and how they score pairs: the committed hand-written set, and scoring in the sandbox.

Programs are ``judging_function(query, response) -> float`` (PAJAMA, arXiv 2506.10403): they see one response at a
time, use only the standard library and the text, and run only inside :class:`lightning_ws.programs.ProgramSandbox`
(never in this process). Scores are cached per (program hash, data hash) through
:func:`lightning_ws.programs.apply_programs`.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lightning_ws.errors import DataError

__all__ = [
    "JUDGE_ENTRY",
    "JUDGE_IMPORTS",
    "RUBRICS",
    "PairScores",
    "cpu_seconds",
    "handwritten_judges",
    "score_pairs",
]

#: The entry point of a judge program.
JUDGE_ENTRY = "judging_function"
#: Imports a judge program may use (spec §7.3: ``re``, ``math``, ``collections``, ``string``, ``statistics``).
JUDGE_IMPORTS: tuple[str, ...] = ("re", "math", "collections", "string", "statistics")
#: PAJAMA's ten rubrics (spec §7.2), by short key.
RUBRICS: dict[str, str] = {
    "relevance": "Relevance to the query",
    "language": "Language quality and readability",
    "completeness": "Completeness and coverage",
    "factual": "Factual-accuracy indicators",
    "coherence": "Logical coherence and argument structure",
    "clarity": "Clarity and conciseness",
    "reasoning": "Reasoning transparency and step-wise formulation",
    "calibration": "Epistemic calibration and uncertainty communication",
    "structure": "Structural organization and formatting",
    "evidence": "Evidence density and specificity",
}


def handwritten_judges() -> list[Any]:
    """The committed hand-written judge programs (``lightning_ws/pajama/judges/*.py``) as
    :class:`~lightning_ws.programs.Program` objects (``family="handwritten"``, ``prompt_id`` = rubric key), sorted by
    name, each statically checked with the judge import allow-list."""
    from lightning_ws.programs.generate import check_program
    from lightning_ws.programs.store import Program

    folder = Path(__file__).resolve().parent / "judges"
    out = []
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        src = path.read_text(encoding="utf-8")
        rubric = path.stem.rsplit("_", 1)[0]
        chk = check_program(src, JUDGE_ENTRY, n_args=2, allowed_imports=JUDGE_IMPORTS)
        out.append(Program(source=src, entry=JUDGE_ENTRY, task="pajama", family="handwritten", prompt_id=rubric,
                           name=path.stem, model="hand-written", checks=chk.to_dict(),
                           extra={"rubric": RUBRICS.get(rubric, rubric), "hand_written": True}))
    return out


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and its reaped children so far."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


@dataclass
class PairScores:
    """``scores`` ``(n, 2, V)`` (NaN = failed call), program ``names`` / ``hashes``, sandbox ``errors`` and
    ``stats``, wall ``seconds``, and per-program error rate."""

    scores: np.ndarray
    names: list[str]
    hashes: list[str]
    errors: list[dict[str, Any]] = field(default_factory=list)
    stats: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def error_rates(self) -> np.ndarray:
        """Share of (row, response) calls per program that returned no score."""
        return np.isnan(self.scores).mean(axis=(0, 1))

    def take(self, index: Any) -> PairScores:
        return PairScores(self.scores[np.asarray(index)], self.names, self.hashes, self.errors, self.stats,
                          self.seconds)


def score_pairs(programs: Sequence[Any], queries: Sequence[str], responses_a: Sequence[str],
                responses_b: Sequence[str], *, sandbox: Any = None, cache_dir: str | Path | None = None,
                progress: bool = False, **sandbox_kwargs: Any) -> PairScores:
    """Score both responses of every pair with every program, in the sandbox.

    Args:
        programs: judge programs (:class:`~lightning_ws.programs.Program`, dicts or source strings).
        queries, responses_a, responses_b: the pairs.
        sandbox: a running :class:`~lightning_ws.programs.ProgramSandbox` (else one is started and closed).
        cache_dir: per-program column cache (``None`` = none).
        progress: progress bar.

    Returns:
        :class:`PairScores`.
    """
    n = len(queries)
    if not (len(responses_a) == len(responses_b) == n):
        raise DataError(f"queries, responses_a, responses_b differ in length: {n}, {len(responses_a)}, "
                        f"{len(responses_b)}.")
    if not programs:
        raise DataError("no judge programs to run; pass hand-written or generated programs.")
    from lightning_ws.programs.apply import apply_programs

    rows = [(q, r) for q, r in zip(queries, responses_a)] + [(q, r) for q, r in zip(queries, responses_b)]
    t0 = time.perf_counter()
    app = apply_programs(list(programs), rows, output="float", entry=JUDGE_ENTRY, sandbox=sandbox,
                         cache_dir=cache_dir, progress=progress, **sandbox_kwargs)
    L = np.asarray(app.L, dtype=np.float64)
    scores = np.stack([L[:n], L[n:]], axis=1)
    return PairScores(scores, app.names, app.hashes, app.errors, app.stats, time.perf_counter() - t0)
