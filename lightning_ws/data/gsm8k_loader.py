"""GSM8K problems with model-written candidate solutions and their correctness: :func:`load_gsm8k_candidates`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lightning_ws.data._common import DATA_DIR, _require_file
from lightning_ws.errors import DataError
from lightning_ws.io import read_jsonl

__all__ = ["GSM8KCandidates", "extract_final_answer", "load_gsm8k_candidates"]


@dataclass(frozen=True)
class GSM8KCandidates:
    """GSM8K problems x candidate solutions with correctness.

    Attributes:
        questions: ``P`` problem statements.
        reference_solutions: ``P`` reference solutions.
        reference_answers: ``P`` final answers (the text after ``A:``), normalised.
        candidate_names: ``N`` generator names (``"6b_finetuning"``, ...), one per candidate column.
        solutions: ``P x N`` nested list of candidate solutions.
        answers: ``P x N`` nested list of extracted final answers (``None`` where none could be found).
        correct: ``(P, N)`` bool array, the file's ``is_correct`` flags.
    """

    questions: list[str]
    reference_solutions: list[str]
    reference_answers: list[str | None]
    candidate_names: list[str]
    solutions: list[list[str]]
    answers: list[list[str | None]]
    correct: np.ndarray = field(repr=False)

    @property
    def num_problems(self) -> int:
        """``P``."""
        return len(self.questions)

    @property
    def num_candidates(self) -> int:
        """``N``."""
        return len(self.candidate_names)


_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_final_answer(solution: str) -> str | None:
    """Extract the final answer of a GSM8K-style solution, normalised for comparison.

    Looks for the ``A:`` line (this file's convention) or ``####`` (GSM8K's), else takes the last number.
    Numbers are normalised: thousands separators dropped, ``3.0`` -> ``3``.
    """
    text = solution.strip()
    tail = None
    for marker in ("\nA:", "####"):
        if marker in text:
            tail = text.rsplit(marker, 1)[1]
            break
    if tail is None and text.startswith("A:"):
        tail = text[2:]
    nums = _NUM.findall(tail if tail is not None else text)
    if not nums:
        return tail.strip() or None if tail is not None else None
    val = nums[0] if tail is not None else nums[-1]
    val = val.replace(",", "")
    try:
        f = float(val)
    except ValueError:
        return val
    return str(int(f)) if f.is_integer() else repr(f)


def load_gsm8k_candidates(path: str | Path | None = None) -> GSM8KCandidates:
    """Load GSM8K problems with candidate solutions and their correctness.

    Args:
        path: a JSONL file with keys ``question``, ``ground_truth`` and, per generator, ``{"solution", "is_correct"}``
            objects; defaults to the shipped ``example_model_solutions.jsonl`` (Cobbe et al. 2021, MIT).
    """
    path = Path(path) if path is not None else DATA_DIR / "gsm8k" / "example_model_solutions.jsonl"
    _require_file(path, "GSM8K candidate file")
    rows = read_jsonl(path)
    if not rows:
        raise DataError(f"{path}: no rows.")
    names = [k for k, v in rows[0].items() if isinstance(v, dict) and "solution" in v]
    if not names:
        raise DataError(f"{path}: no candidate columns (objects with 'solution' and 'is_correct').")
    questions, refs, ref_answers, sols, answers, correct = [], [], [], [], [], []
    for i, row in enumerate(rows):
        try:
            questions.append(row["question"])
            refs.append(row["ground_truth"])
            sols.append([row[n]["solution"] for n in names])
            correct.append([bool(row[n]["is_correct"]) for n in names])
        except KeyError as err:
            raise DataError(f"{path}:{i + 1}: missing key {err}; every row needs question, ground_truth and "
                            f"the candidate columns {names}.") from None
        ref_answers.append(extract_final_answer(row["ground_truth"]))
        answers.append([extract_final_answer(s) for s in sols[-1]])
    return GSM8KCandidates(questions=questions, reference_solutions=refs, reference_answers=ref_answers,
                           candidate_names=names, solutions=sols, answers=answers,
                           correct=np.asarray(correct, dtype=bool))
