"""Pairwise preference data: ``(query, response_a, response_b, preferred)`` rows and deterministic splits.

The shipped sets live in ``lightning_ws/data/preferences/<name>/pairs.jsonl.gz`` (provenance and licences in that
folder's README): ``hh_rlhf`` (4,664 crowdworker-labelled HH-RLHF test pairs), ``pandalm_test`` (894 PandaLM pairs,
majority of three humans, with GPT-3.5 and PandaLM-7B verdicts) and ``llmbar`` (619 LLMBar + MT-Bench pairs, with
subsets). Any JSONL file with the same core fields loads too.

Label convention everywhere in :mod:`lightning_ws.pajama`: ``y = 0`` when response A is preferred, ``y = 1`` when
response B is; ``-1`` = unknown.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lightning_ws.errors import DataError, DataFileNotFoundError

__all__ = ["DATASETS", "PreferencePairs", "data_dir", "load_preferences", "split_by_id"]

#: The shipped preference sets.
DATASETS = ("hh_rlhf", "pandalm_test", "llmbar")


def data_dir() -> Path:
    """``lightning_ws/data/preferences``."""
    return Path(__file__).resolve().parent.parent / "data" / "preferences"


@dataclass
class PreferencePairs:
    """Rows of a pairwise preference set.

    Attributes:
        name: the set's name.
        ids, queries, responses_a, responses_b: per row.
        y: ``(n,)`` int64, 0 = A preferred, 1 = B preferred, -1 = unknown.
        subsets: per-row subset name (``""`` when the set has none).
        extra: per-row dicts of the other fields (``gpt35_verdict``, ``votes``...).
    """

    name: str
    ids: list[str]
    queries: list[str]
    responses_a: list[str]
    responses_b: list[str]
    y: np.ndarray
    subsets: list[str] = field(default_factory=list)
    extra: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index: Sequence[int] | np.ndarray) -> PreferencePairs:
        """The rows at ``index`` (in that order)."""
        idx = [int(i) for i in np.asarray(index, dtype=np.int64).reshape(-1)]
        return PreferencePairs(self.name, [self.ids[i] for i in idx], [self.queries[i] for i in idx],
                               [self.responses_a[i] for i in idx], [self.responses_b[i] for i in idx],
                               self.y[idx].copy(), [self.subsets[i] for i in idx] if self.subsets else [],
                               [self.extra[i] for i in idx] if self.extra else [])

    def swapped(self) -> PreferencePairs:
        """The same pairs with A and B exchanged (labels flipped)."""
        y = np.where(self.y < 0, self.y, 1 - self.y)
        return PreferencePairs(self.name + "[swapped]", list(self.ids), list(self.queries), list(self.responses_b),
                               list(self.responses_a), y, list(self.subsets), list(self.extra))

    def longer_is_b(self) -> np.ndarray:
        """``(n,)`` int: 1 where B is longer (characters), 0 where A is, -1 on equal length."""
        la = np.array([len(r) for r in self.responses_a])
        lb = np.array([len(r) for r in self.responses_b])
        return np.where(lb > la, 1, np.where(la > lb, 0, -1))


def _open(path: Path) -> Any:
    # utf-8-sig: a byte-order mark at the start of the file (some Windows editors write one) is skipped
    return gzip.open(path, "rt", encoding="utf-8-sig") if path.suffix == ".gz" else open(path, encoding="utf-8-sig")


#: ``preferred`` values that mean "no gold preference" (the pair is kept, its label is -1).
_UNKNOWN_PREFERENCE = ("", "none", "null", "unknown", "tie", "?")


def _preference(value: object, path: Path, ln: int) -> int:
    """0 for A, 1 for B, -1 for no gold preference; anything else is refused (it was read as unknown before)."""
    if value is None:
        return -1
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("a", "b"):
            return 0 if v == "a" else 1
        if v in _UNKNOWN_PREFERENCE:
            return -1
    raise DataError(f"{path}:{ln}: preferred is {value!r}; write \"a\" or \"b\" (the preferred response), or null / "
                    f"\"tie\" for a pair without a gold preference. (0/1 and other labels are not guessed: 1 could "
                    f"mean either response.)")


def load_preferences(name_or_path: str | Path, *, limit: int | None = None) -> PreferencePairs:
    """Load a shipped set (``hh_rlhf``, ``pandalm_test``, ``llmbar``) or a JSONL file with the fields ``id``,
    ``query``, ``response_a``, ``response_b`` and ``preferred`` (``a`` | ``b``, any case; ``null``, missing,
    ``""``, ``"tie"``, ``"unknown"`` = no gold preference, label -1).

    Raises:
        DataFileNotFoundError: unknown name / missing file.
        DataError: a row misses a field, is not a JSON object or not JSON, or its ``preferred`` is another value
            (``1``, ``"response_a"``: before session 39 these were silently read as unknown).
    """
    name = str(name_or_path)
    if name in DATASETS:
        path = data_dir() / name / "pairs.jsonl.gz"
    else:
        path = Path(name)
        name = path.name.split(".")[0]
    if not path.is_file():
        raise DataFileNotFoundError(f"preference data not found: {path}. Use one of {list(DATASETS)} or a JSONL "
                                    f"file with id, query, response_a, response_b, preferred.")
    ids, qs, ra, rb, ys, subs, extra = [], [], [], [], [], [], []
    with _open(path) as fh:
        for ln, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{ln}: not valid JSON ({err.msg}).") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{ln}: expected a JSON object with id, query, response_a, response_b and "
                                f"preferred; got {type(row).__name__}.")
            try:
                ids.append(str(row["id"]))
                qs.append(str(row["query"]))
                ra.append(str(row["response_a"]))
                rb.append(str(row["response_b"]))
            except KeyError as err:
                raise DataError(f"{path}:{ln}: missing field {err}; rows need id, query, response_a, response_b "
                                f"and preferred.") from None
            ys.append(_preference(row.get("preferred"), path, ln))
            subs.append(str(row.get("subset", "")))
            extra.append({k: v for k, v in row.items()
                          if k not in ("id", "query", "response_a", "response_b", "preferred", "subset")})
            if limit is not None and len(ids) >= limit:
                break
    return PreferencePairs(name, ids, qs, ra, rb, np.asarray(ys, dtype=np.int64), subs, extra)


def split_by_id(ids: Sequence[str], fraction: float, *, seed: int = 0, strata: Sequence[str] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic split by a salted hash of each id: ``(first, rest)`` row indices, ``first`` holding about
    ``fraction`` of the rows (of every stratum when ``strata`` is given). Independent of row order and of the RNG."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"fraction must be in (0, 1), got {fraction}.")
    keys = np.array([int(hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()[:12], 16) for i in ids])
    groups = np.asarray(strata) if strata is not None else np.zeros(len(ids), dtype=object)
    first: list[int] = []
    for g in dict.fromkeys(groups.tolist()):
        rows = np.flatnonzero(groups == g)
        rows = rows[np.argsort(keys[rows], kind="stable")]
        first += rows[: round(fraction * len(rows))].tolist()
    first_arr = np.array(sorted(first), dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(ids)), first_arr)
    return first_arr, rest
