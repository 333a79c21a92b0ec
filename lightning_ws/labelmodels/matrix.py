"""Label matrices: validation, one-hot encodings and labeling-function (LF) analysis.

A label matrix ``L`` is an ``n x m`` integer array (numpy or torch): row ``i`` is an example, column ``j`` a labeling
function, ``L[i, j] in {-1, 0, ..., k-1}`` with ``-1`` (:data:`ABSTAIN`) meaning "LF ``j`` abstains on example ``i``".
This is the WRENCH / Snorkel convention (Ratner et al., arXiv 1711.10160; Zhang et al., arXiv 2109.11377).

Everything here is plain numpy (no Lightning, no torch required except to accept torch tensors).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from lightning_ws.errors import DataError

__all__ = [
    "validate_gold_labels",
    "ABSTAIN",
    "validate_label_matrix",
    "covered_mask",
    "LFAnalysis",
    "edge_components",
    "lf_clusters",
    "lf_dependencies",
    "merge_clusters",
    "restrict_to_voted",
]

#: Label-matrix entry meaning "this labeling function abstains".
ABSTAIN: int = -1

#: Rows per chunk for the streaming passes over large label matrices (keeps temporaries ~ tens of MB).
_CHUNK_ELEMS = 4_000_000


def _to_numpy(L: Any, name: str) -> np.ndarray:
    """Convert a numpy array / torch tensor / nested list to numpy without copying when possible."""
    if type(L).__module__.split(".")[0] == "torch":  # import torch only for torch inputs (it is slow to import)
        import torch

        if isinstance(L, torch.Tensor):
            if L.layout != torch.strided:
                raise DataError(_sparse_message(name, f"a sparse torch tensor ({L.layout})", ".to_dense()"))
            if L.dtype == torch.bool:
                raise DataError(f"{name} is a bool tensor; label matrices hold class ids in -1..k-1 "
                                f"(-1 = abstain). Convert it with .long() if True/False really mean classes 1/0.")
            return L.detach().cpu().numpy()
    if isinstance(L, np.ndarray):
        return L
    if type(L).__module__.startswith("scipy.sparse"):
        raise DataError(_sparse_message(name, f"a scipy sparse matrix ({type(L).__name__})", ".toarray()"))
    if type(L).__module__.split(".")[0] == "pandas" and hasattr(L, "isna") and hasattr(L, "to_numpy"):
        missing = np.asarray(L.isna())
        if missing.any():
            where = np.argwhere(missing.reshape(missing.shape[0], -1))[0]
            raise DataError(f"{name} (a pandas object) has a missing value at row {int(where[0])}, column "
                            f"{int(where[-1])}; encode a missing vote as -1 (abstain), e.g. "
                            f"{name}.fillna(-1).astype(int).")
        return np.asarray(L.to_numpy())  # nullable Int64 columns come back as objects; converted below
    try:
        return np.asarray(L)
    except (ValueError, TypeError) as err:
        raise DataError(f"{name} could not be converted to an array ({err}); pass an n x m integer array with "
                        f"one column per labeling function.") from None


def _sparse_message(name: str, what: str, densify: str) -> str:
    return (f"{name} is {what}; label matrices are dense with -1 for abstain, and a sparse matrix's implicit "
            f"zeros would read as votes for class 0. Convert it with {name}{densify} once abstains are stored as "
            f"-1 (a matrix in snorkel's pre-0.9 encoding, 0 = abstain and classes 1..k, becomes "
            f"{name}{densify} - 1).")


def _is_missing(value: Any) -> bool:
    return (value is None or (isinstance(value, float) and np.isnan(value))
            or type(value).__name__ in ("NAType", "NaTType"))


def validate_label_matrix(
    L: Any,
    num_classes: int | None = None,
    *,
    min_lfs: int = 1,
    require_votes_per_lf: bool = False,
    lf_names: Sequence[str] | None = None,
    name: str = "L",
    check_inferred_classes: bool = False,
    allow_no_rows: bool = False,
) -> np.ndarray:
    """Check a label matrix and return it as a 2-D numpy integer array.

    Integer inputs keep their dtype (an ``int8`` matrix of 10^8 entries stays 100 MB); integral floats are converted
    to ``int64``. Torch tensors are moved to CPU. Reference: the label-matrix convention of Snorkel
    (arXiv 1711.10160) and WRENCH (arXiv 2109.11377).

    Args:
        L: ``n x m`` label matrix, ``-1`` = abstain, classes ``0..k-1``.
        num_classes: ``k``; when ``None`` it is inferred as ``max(L) + 1`` (at least 2).
        min_lfs: the least number of columns the caller needs (e.g. 3 for triplet methods).
        require_votes_per_lf: raise if a column abstains on every row (needed when fitting; a column that never
            votes carries no information and makes per-LF parameters undefined).
        lf_names: optional LF names, used in error messages.
        name: what to call the matrix in error messages (``"L"``, ``"dev_L"``...).
        check_inferred_classes: when ``num_classes`` is ``None``, refuse a class count that the votes do not
            support: a class id below ``max(L)`` that no LF ever votes (one stray ``5`` in a binary matrix would
            otherwise silently build a 6-class model), or a top class with a handful of votes in a large matrix.
            Label models set it when they infer ``k``.
        allow_no_rows: accept a matrix with zero rows (and at least one column): predicting on an empty batch or
            split returns empty results instead of raising. Fitting needs rows.

    Returns:
        The validated matrix (same object when it was already a suitable numpy integer array).

    Raises:
        DataError: 1-D / empty input, bool / object / non-integral float / NaN entries, values outside
            ``{-1..k-1}``, fewer than ``min_lfs`` columns, or (with ``require_votes_per_lf``) an all-abstain column.
            The message names the offending row, column and value.
    """
    arr = _to_numpy(L, name)
    if arr.ndim != 2:
        raise DataError(f"{name} must be 2-D (n examples x m labeling functions), got shape {tuple(arr.shape)}. "
                        f"For a single labeling function pass L.reshape(-1, 1).")
    n, m = arr.shape
    if n == 0 and m > 0 and allow_no_rows and arr.dtype.kind in "iuf":
        return arr.astype(np.int64)
    if n == 0 or m == 0:
        raise DataError(f"{name} is empty (shape {n} x {m}); a label model needs at least one example and one "
                        f"labeling function.")
    if arr.dtype == np.bool_:
        raise DataError(f"{name} has dtype bool; label matrices hold class ids in -1..k-1 (-1 = abstain). "
                        f"Convert with L.astype(np.int64) if True/False really mean classes 1/0.")
    if arr.dtype.kind == "O":  # Python objects: ints (kept), None / NaN / pd.NA (missing votes), anything else
        missing = np.frompyfunc(_is_missing, 1, 1)(arr).astype(bool)
        if missing.any():
            i, j = map(int, np.argwhere(missing)[0])
            raise DataError(f"{name}[{i}, {j}] ({_lf(lf_names, j)}) is {arr[i, j]!r}; encode a missing vote as -1 "
                            f"(abstain).")
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise DataError(f"{name} has dtype object and holds values that are not numbers (e.g. "
                            f"{next(v for v in arr.ravel() if not isinstance(v, (int, float, np.number)))!r}); "
                            f"expected an integer array with -1 for abstain and 0..k-1 for classes. Map class "
                            f"names to ids first.") from None
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            i, j = map(int, np.argwhere(bad)[0])
            what = "NaN" if np.isnan(arr[i, j]) else f"{float(arr[i, j])} (not a class id)"
            raise DataError(f"{name}[{i}, {j}] ({_lf(lf_names, j)}) is {what}; encode a missing vote as -1 "
                            f"(abstain).")
        nonint = arr != np.round(arr)
        if nonint.any():
            i, j = map(int, np.argwhere(nonint)[0])
            raise DataError(f"{name}[{i}, {j}] ({_lf(lf_names, j)}) = {arr[i, j]!r} is not an integer; label "
                            f"matrices hold class ids in -1..k-1. Threshold scores into votes first.")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iu":
        hint = " Map class names to ids first." if arr.dtype.kind in "US" else ""
        raise DataError(f"{name} has dtype {arr.dtype}; expected an integer array with -1 for abstain and "
                        f"0..k-1 for classes.{hint}")
    lo, hi = int(arr.min()), int(arr.max())
    k = num_classes if num_classes is not None else max(hi + 1, 2)
    if lo < ABSTAIN or hi >= k:
        bad = (arr < ABSTAIN) | (arr >= k)
        i, j = map(int, np.argwhere(bad)[0])
        raise DataError(f"{name}[{i}, {j}] ({_lf(lf_names, j)}) = {int(arr[i, j])} is outside -1..{k - 1} "
                        f"(-1 = abstain, classes 0..{k - 1}). Check num_classes ({k}) or re-encode the votes.")
    if num_classes is None and check_inferred_classes and hi >= 1:
        _check_inferred_classes(arr, hi, lf_names, name)
    if m < min_lfs:
        raise DataError(f"{name} has {m} labeling function(s) but this label model needs at least {min_lfs}. "
                        f"Add labeling functions or use MajorityVote.")
    if lf_names is not None and len(lf_names) != m:
        raise DataError(f"lf_names has {len(lf_names)} names but {name} has {m} columns.")
    if require_votes_per_lf:
        votes = _column_vote_counts(arr)
        silent = np.flatnonzero(votes == 0)
        if silent.size:
            j = int(silent[0])
            raise DataError(f"{name} column {j} ({_lf(lf_names, j)}) abstains on every row, so its parameters "
                            f"cannot be estimated; drop it (columns without votes: {silent.tolist()[:10]}).")
    return arr


#: An inferred top class with at most this many votes, and at most this share of all votes, is called stray.
_STRAY_VOTES, _STRAY_SHARE = 3, 1e-3


def _check_inferred_classes(arr: np.ndarray, hi: int, lf_names: Sequence[str] | None, name: str) -> None:
    """Raise when ``k = max(L) + 1`` is not supported by the votes (see ``check_inferred_classes``)."""
    counts = np.zeros(hi + 2, dtype=np.int64)
    for sl in _row_chunks(*arr.shape):
        counts += np.bincount((arr[sl].ravel().astype(np.int64) + 1), minlength=hi + 2)
    votes = counts[1:]
    missing = np.flatnonzero(votes == 0)
    top = votes[hi]
    stray = top <= _STRAY_VOTES and top <= _STRAY_SHARE * votes.sum()
    if missing.size == 0 and not stray:
        return
    i, j = map(int, np.argwhere(arr == hi)[0])
    seen = np.flatnonzero(votes > 0).tolist()
    why = (f"classes {missing.tolist()} never receive a vote" if missing.size else
           f"class {hi} receives only {int(top)} of {int(votes.sum())} votes")
    raise DataError(f"{name}: inferring num_classes = max({name}) + 1 = {hi + 1} is not supported by the votes: {why} "
                    f"(classes voted: {seen}; first vote of {hi} at {name}[{i}, {j}], {_lf(lf_names, j)}). If that "
                    f"vote is a stray or mis-encoded value, fix the labeling function; if the task really has "
                    f"{hi + 1} classes, pass num_classes={hi + 1} explicitly.")


def _lf(lf_names: Sequence[str] | None, j: int) -> str:
    return f"LF {lf_names[j]!r}" if lf_names is not None and j < len(lf_names) else f"LF {j}"


def _row_chunks(n: int, m: int, elems: int = _CHUNK_ELEMS) -> Iterator[slice]:
    step = max(1, elems // max(m, 1))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def _column_vote_counts(L: np.ndarray) -> np.ndarray:
    n, m = L.shape
    out = np.zeros(m, dtype=np.int64)
    for sl in _row_chunks(n, m):
        out += (L[sl] != ABSTAIN).sum(axis=0)
    return out


def _constant_columns(L: np.ndarray, votes: np.ndarray | None = None) -> dict[int, int]:
    """``{column: class}`` for the LFs that vote on every row of ``L`` (at least 2 rows), always the same class: their
    vote does not depend on ``Y``. ``votes``: the per-column vote counts, when the caller has them."""
    n = L.shape[0]
    votes = _column_vote_counts(L) if votes is None else votes
    full = np.flatnonzero(votes == n)
    if not full.size or n < 2:
        return {}
    sub = L[:, full]
    same = (sub == sub[0]).all(axis=0)
    return {int(j): int(sub[0, i]) for i, j in enumerate(full) if same[i]}


def _lf_class_vote_counts(L: np.ndarray, k: int) -> np.ndarray:
    """``(m, k)`` int64: how many votes each LF casts for each class."""
    n, m = L.shape
    out = np.zeros((m, k), dtype=np.int64)
    for sl in _row_chunks(n, m):
        block = L[sl]
        for c in range(k):
            out[:, c] += (block == c).sum(axis=0)
    return out


def covered_mask(L: Any) -> np.ndarray:
    """Return a boolean ``(n,)`` mask of the rows where at least one LF votes (not all abstain)."""
    arr = _to_numpy(L, "L")
    if arr.ndim != 2:
        raise DataError(f"L must be 2-D, got shape {tuple(arr.shape)}.")
    out = np.zeros(arr.shape[0], dtype=bool)
    for sl in _row_chunks(*arr.shape):
        out[sl] = (arr[sl] != ABSTAIN).any(axis=1)
    return out


def restrict_to_voted(P: np.ndarray, L: np.ndarray, k: int) -> np.ndarray:
    """Class probabilities ``P`` ``(n, k)`` with each covered row restricted to the classes some LF voted on it.

    On a row where LFs vote, the classes no LF named get probability 0 and the rest are renormalised; rows where
    every LF abstains keep their probabilities (the class balance). A covered row whose voted classes all got
    probability 0 takes the vote shares (majority vote). A conditional-independence model (Dawid-Skene, moment
    matching) can put a covered row in a class no LF named only through the class prior and the evidence of the LFs
    that abstained; real keyword LFs do not abstain independently given the class (templates fire together), so that
    evidence is over-counted. On 75 real label matrices (WRENCH YouTube, SMS and TREC, all LFs and random subsets of
    them; ``benchmarks/diag_voted_support.py``) 15-16 % of the covered train rows got such a prediction, right on
    11 % of them where majority vote was right on 68-69 %; restricted this way, Dawid-Skene and moment matching went
    from 6.8 / 7.5 points below majority vote on average (train; SMS: spam F1) to 1.5 / 1.7 above, better on 62 / 64
    of the matrices and worse on 3. On synthetic conditionally independent LFs those predictions are the Bayes
    decision, and restricting them costs accuracy (``BENCHMARKS.md``). ``k`` is the number of classes. Returns a
    new float64 array.
    """
    P = np.asarray(P, dtype=np.float64)
    counts = vote_counts(L, k)  # chunked over rows: memory O(n k)
    voted = counts > 0
    cov = voted.any(axis=1)
    Q = np.where(voted, P, 0.0)
    total = Q.sum(axis=1, keepdims=True)
    out = np.where(total > 0, Q / np.where(total > 0, total, 1.0), 0.0)
    dead = cov & (total[:, 0] <= 0)
    if dead.any():  # every voted class at probability 0: fall back to the vote shares
        out[dead] = counts[dead] / counts[dead].sum(axis=1, keepdims=True)
    out[~cov] = P[~cov]
    return out


def vote_counts(L: np.ndarray, k: int) -> np.ndarray:
    """``(n, k)`` float64 array: how many LFs vote each class on each row."""
    n, m = L.shape
    out = np.empty((n, k), dtype=np.float64)
    for sl in _row_chunks(n, m):
        block = L[sl]
        for c in range(k):
            out[sl, c] = (block == c).sum(axis=1)
    return out


def onehot_block(L: np.ndarray, k: int, dtype: Any = np.float64) -> np.ndarray:
    """Dense one-hot of the votes of a (small) row block: ``(rows, m * k)``; abstains give all-zero blocks.

    Column ``j * k + c`` is 1 where LF ``j`` votes class ``c`` (the psi(x) encoding of MeTaL, arXiv 1810.02840).
    """
    r, m = L.shape
    out = np.empty((r, m, k), dtype=dtype)
    for c in range(k):
        np.equal(L, c, out=out[:, :, c], casting="unsafe")
    return out.reshape(r, m * k)


def gram_float32(X: np.ndarray, Y: np.ndarray | None = None) -> np.ndarray:
    """``X^T Y`` (``Y = X`` by default) of float32 0/±1 blocks, computed with torch's CPU GEMM, returned as float64.

    torch's GEMM is several times faster than numpy's bundled OpenBLAS for these tall-skinny products on the machines
    we measured; the inputs are small integers, so float32 products are exact for blocks of < 2^24 rows.
    """
    import torch

    xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    yt = xt if Y is None else torch.from_numpy(np.ascontiguousarray(Y, dtype=np.float32))
    return (xt.T @ yt).numpy().astype(np.float64)


def overlap_matrix(L: np.ndarray, k: int) -> np.ndarray:
    """``O = psi^T psi / n`` (``(m k) x (m k)``, float64), accumulated over row chunks with float32 GEMM.

    Entries are counts of 0/1 products; each chunk's counts are exact in float32 (chunks hold < 2^24 rows) and are
    summed in float64.
    """
    n, m = L.shape
    O = np.zeros((m * k, m * k), dtype=np.float64)
    for sl in _row_chunks(n, m * k, elems=8_000_000):
        O += gram_float32(onehot_block(L[sl], k, dtype=np.float32))
    return O / n


def validate_gold_labels(y: Any, n: int, num_classes: int | None, k: int, name: str = "y") -> np.ndarray:
    """``y`` as an int64 ``(n,)`` array of gold class ids, ``-1`` for a row without a gold label.

    Whole-number floats are accepted (a pandas column with NaN elsewhere comes as float); anything else, labels under
    ``-1`` and (when ``num_classes`` is given) labels ``>= num_classes`` raise :class:`DataError`; ``k`` is the class
    count the message names.
    """
    yv = np.asarray(_to_numpy(y, name)).reshape(-1)
    if yv.shape[0] != n:
        raise DataError(f"{name} has {yv.shape[0]} labels but L has {n} rows.")
    if yv.dtype.kind == "f" and np.isfinite(yv).all() and (yv == np.round(yv)).all():
        yv = yv.astype(np.int64)
    if yv.dtype.kind not in "iu":
        raise DataError(f"{name} must hold integer class ids (-1 for a row without a gold label), got dtype "
                        f"{yv.dtype}.")
    if yv.size and (yv.min() < ABSTAIN or (num_classes is not None and yv.max() >= num_classes)):
        raise DataError(f"{name} holds labels {int(yv.min())}..{int(yv.max())}; gold labels are class ids "
                        f"0..{k - 1}, or -1 for a row without one.")
    return yv.astype(np.int64)


class LFAnalysis:
    """Per-LF summary statistics of a label matrix (coverage, overlaps, conflicts, polarity, empirical accuracy).

    Definitions follow Snorkel's ``LFAnalysis`` (arXiv 1711.10160): *coverage* is the fraction of rows where the LF
    votes, *overlaps* the fraction where it votes and at least one other LF votes, *conflicts* the fraction where it
    votes and another LF votes a different class, *polarity* the sorted set of classes it emits. With gold labels,
    *correct*/*incorrect* count its votes on rows with a gold label and *emp_acc* is correct / those votes (NaN for
    an LF that never votes there).

    Args:
        L: ``n x m`` label matrix (``-1`` = abstain).
        y: optional gold labels ``(n,)``; ``-1`` marks a row without one (it counts for no LF's accuracy).
        lf_names: optional LF names (default ``lf_00``, ``lf_01``...).
        num_classes: ``k`` (inferred when ``None``).
        cluster_threshold: firing-correlation threshold of the dependency clusters (:func:`lf_clusters`).

    Dependencies: ``firing_corr`` and ``agreement`` (``(m, m)``, :func:`lf_dependencies`), ``clusters`` (lists of LF
    indices, singletons included) and ``cluster_of`` (``(m,)`` cluster id); :meth:`dependent_pairs` lists the linked
    pairs, the summary has a ``cluster`` column. Found from the label matrix alone: near-duplicate keyword rules
    are what the conditional-independence label models over-count. Beside these agreement clusters,
    :attr:`structure` holds the sparse + low-rank structure estimate of Varma et al. 2019
    (:func:`~lightning_ws.labelmodels.structure.learn_structure_rpca`, computed on first access), which also finds
    weaker dependencies; :meth:`rpca_edges` lists its edges and :meth:`to_table` reports both.

    Example:
        >>> import numpy as np
        >>> L = np.array([[0, -1, 0], [1, 1, -1], [-1, -1, -1]])
        >>> a = LFAnalysis(L, y=np.array([0, 1, 1]))
        >>> a.coverage.tolist(), round(a.total_coverage, 3)
        ([0.6666666666666666, 0.3333333333333333, 0.3333333333333333], 0.667)
    """

    def __init__(self, L: Any, y: Any | None = None, *, lf_names: Sequence[str] | None = None,
                 num_classes: int | None = None, cluster_threshold: float = 0.7) -> None:
        L = validate_label_matrix(L, num_classes, lf_names=lf_names)
        n, m = L.shape
        self.n, self.m = n, m
        self.lf_names = list(lf_names) if lf_names is not None else [f"lf_{j:02d}" for j in range(m)]
        votes = L != ABSTAIN
        n_votes = votes.sum(axis=1)
        self.coverage = votes.mean(axis=0)
        self.overlaps = (votes & (n_votes[:, None] > 1)).mean(axis=0)
        k = num_classes if num_classes is not None else max(int(L.max()) + 1, 2)
        counts = vote_counts(L, k)
        # LF j conflicts on row i if some class other than its vote receives a vote.
        conflicts = np.zeros((n, m), dtype=bool)
        for j in range(m):
            vj = votes[:, j]
            same = np.where(vj, counts[np.arange(n), np.clip(L[:, j], 0, None)], 0)
            conflicts[:, j] = vj & (n_votes - same > 0)
        self.conflicts = conflicts.mean(axis=0)
        self.polarity = [sorted({int(v) for v in np.unique(L[:, j]) if v != ABSTAIN}) for j in range(m)]
        self.total_coverage = float((n_votes > 0).mean())
        self.num_classes = k
        #: LFs that vote one and the same class on every row: their vote carries no information about ``Y``
        #: (``AutoLabelModel`` ignores them; majority vote counts them on every row)
        self.constant_lfs = [self.lf_names[j] for j in _constant_columns(L)]
        #: firing correlation and co-vote agreement of every LF pair (:func:`lf_dependencies`)
        self.firing_corr, self.agreement = lf_dependencies(L, k)
        #: clusters of strongly dependent LFs (:func:`lf_clusters`; singletons included)
        self.clusters = lf_clusters(L, k, threshold=cluster_threshold)
        self.cluster_of = np.empty(m, dtype=np.int64)
        for g, members in enumerate(self.clusters):
            self.cluster_of[members] = g
        self._L = L
        self._structure: Any = None
        self.correct: np.ndarray | None = None
        self.incorrect: np.ndarray | None = None
        self.emp_acc: np.ndarray | None = None
        self.labelled_rows: int | None = None
        if y is not None:
            yv = validate_gold_labels(y, n, num_classes, k)
            # rows without a gold label (-1, e.g. an unlabelled WRENCH train split) count neither way; before
            # session 38 every vote on them counted as incorrect
            labelled = yv != ABSTAIN
            scored = votes & labelled[:, None]
            self.correct = ((L == yv[:, None]) & scored).sum(axis=0)
            self.incorrect = scored.sum(axis=0) - self.correct
            #: rows with a gold label (``y != -1``): the rows ``correct`` / ``incorrect`` / ``emp_acc`` count
            self.labelled_rows = int(labelled.sum())
            with np.errstate(invalid="ignore", divide="ignore"):
                self.emp_acc = self.correct / scored.sum(axis=0)

    def summary(self) -> list[dict[str, Any]]:
        """One dict per LF: ``lf, polarity, coverage, overlaps, conflicts`` (+ ``correct, incorrect, emp_acc``)."""
        rows = []
        for j in range(self.m):
            row: dict[str, Any] = {"lf": self.lf_names[j], "polarity": self.polarity[j],
                                   "coverage": float(self.coverage[j]), "overlaps": float(self.overlaps[j]),
                                   "conflicts": float(self.conflicts[j]), "cluster": int(self.cluster_of[j])}
            if self.emp_acc is not None:
                row["correct"] = int(self.correct[j])
                row["incorrect"] = int(self.incorrect[j])
                row["emp_acc"] = float(self.emp_acc[j])
            rows.append(row)
        return rows

    def dependent_pairs(self, threshold: float = 0.7, min_agreement: float = 0.8) -> list[dict[str, Any]]:
        """LF pairs with firing correlation ``>= threshold`` and co-vote agreement ``>= min_agreement``, strongest
        first: ``{"lfs": (name_i, name_j), "firing_corr", "agreement"}``."""
        phi, agree = self.firing_corr, np.nan_to_num(self.agreement, nan=0.0)
        ii, jj = np.nonzero(np.triu((phi >= threshold) & (agree >= min_agreement), 1))
        pairs = [{"lfs": (self.lf_names[i], self.lf_names[j]), "firing_corr": float(phi[i, j]),
                  "agreement": float(agree[i, j])} for i, j in zip(ii, jj)]
        return sorted(pairs, key=lambda r: -r["firing_corr"])

    @property
    def structure(self) -> Any:
        """The :class:`~lightning_ws.labelmodels.structure.StructureEstimate` of the robust-PCA structure learning
        (Varma et al. 2019, arXiv 1903.05844), computed on first access with its defaults."""
        if self._structure is None:
            from lightning_ws.labelmodels.structure import learn_structure_rpca

            self._structure = learn_structure_rpca(self._L, self.num_classes)
        return self._structure

    def rpca_edges(self) -> list[dict[str, Any]]:
        """Edges of :attr:`structure`, strongest first: ``{"lfs": (name_i, name_j), "partial_corr", "cluster"}``
        where ``cluster`` says whether the agreement clustering linked the pair too."""
        st = self.structure
        return [{"lfs": (self.lf_names[i], self.lf_names[j]), "partial_corr": float(st.scores[i, j]),
                 "cluster": bool(self.cluster_of[i] == self.cluster_of[j])} for i, j in st.edges]

    def to_table(self) -> str:
        """A fixed-width text table of :meth:`summary`, with a final line giving total coverage."""
        rows = self.summary()
        cols = list(rows[0].keys())
        cells = [[_fmt(r[c]) for c in cols] for r in rows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)),
                 "  ".join("-" * w for w in widths)]
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
        lines.append(f"n={self.n}  m={self.m}  rows with at least one vote: {self.total_coverage:.4f}"
                     + (f"  rows with a gold label (emp_acc): {self.labelled_rows}"
                        if self.labelled_rows is not None and self.labelled_rows < self.n else ""))
        if self.constant_lfs:
            lines.append(f"LFs voting one class on every row (no information about the class; auto ignores them): "
                         f"{self.constant_lfs}")
        groups = [[self.lf_names[j] for j in g] for g in self.clusters if len(g) > 1]
        lines.append(f"clusters of strongly dependent LFs: {len(groups)}" + (f" {groups}" if groups else ""))
        d = sum(len(p) for p in self.polarity)
        if self._structure is None and d > _TABLE_RPCA_MAX_COLUMNS:
            lines.append(f"dependency edges, sparse + low-rank inverse covariance (Varma et al. 2019): not computed "
                         f"for the table ({d} LF-class indicator columns; access .structure to compute them)")
        else:
            edges = [e["lfs"] for e in self.rpca_edges()]
            lines.append(f"dependency edges, sparse + low-rank inverse covariance (Varma et al. 2019): {len(edges)}"
                         + (f" {edges[:20]}" + (" ..." if len(edges) > 20 else "") if edges else ""))
        return "\n".join(lines)

    def to_wandb_table(self) -> Any:
        """The summary as a ``wandb.Table`` (wandb is imported lazily)."""
        import wandb

        rows = self.summary()
        cols = list(rows[0].keys())
        return wandb.Table(columns=cols, data=[[str(r[c]) if c == "polarity" else r[c] for c in cols] for r in rows])


#: ``to_table`` computes the robust-PCA edges itself only up to this many (LF, class) indicator columns: the solver
#: runs dense ``d x d`` eigendecompositions (seconds at a few hundred columns, minutes at thousands).
_TABLE_RPCA_MAX_COLUMNS = 600


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if np.isnan(v) else f"{v:.4f}"
    return str(v)


#: Collapse a label matrix to its unique rows only when they are at most this fraction of the rows checked.
_COLLAPSE_MAX_RATIO = 0.5
#: Rows of the trial sample used to decide whether collapsing is worthwhile on large matrices.
_COLLAPSE_SAMPLE = 20_000


def unique_rows(L: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique vote patterns of a label matrix: ``(U, inverse, counts)`` with ``U[inverse] == L`` exactly.

    Each row is hashed to one int64 (a fixed random linear map, wrapping), the hashes are uniqued, and the result
    is verified row by row; on a (practically impossible) collision the rows are uniqued as byte strings instead.
    Both are far faster than ``np.unique(L, axis=0)``. Pattern order is deterministic; ``counts`` are int64.
    """
    n, m = L.shape
    coef = np.random.default_rng(0x5EED).integers(1, 2**62, size=m, dtype=np.int64) | 1  # local, fixed generator
    with np.errstate(over="ignore"):
        h = (L.astype(np.int64, copy=False) + 2) @ coef
    _, first, inverse, counts = np.unique(h, return_index=True, return_inverse=True, return_counts=True)
    U = L[first]
    inverse = inverse.reshape(-1)
    if not np.array_equal(U[inverse], L):  # hash collision: exact byte-string fallback
        lo, hi = int(L.min()), int(L.max())
        dt = np.int8 if -128 <= lo and hi <= 127 else (np.int16 if -32768 <= lo and hi <= 32767 else np.int64)
        B = np.ascontiguousarray(L, dtype=dt)
        v = B.view(np.dtype((np.void, B.shape[1] * B.itemsize))).ravel()
        _, first, inverse, counts = np.unique(v, return_index=True, return_inverse=True, return_counts=True)
        U, inverse = L[first], inverse.reshape(-1)
    return U, inverse, counts.astype(np.int64)


def collapse_rows(L: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """:func:`unique_rows` when the matrix has few distinct patterns (at most half its rows), else ``None``.

    Label models whose statistics are sums over rows (EM, overlap matrices) can then work on the ``U`` unique
    patterns with weights ``counts`` instead of the ``n`` rows - the same numbers up to float rounding. WRENCH
    matrices collapse 10-30x (SMS: 4571 rows, 143 patterns). For large ``n`` a trial on the first
    ``_COLLAPSE_SAMPLE`` rows decides first, so matrices of random-looking rows cost only the trial.
    """
    n = L.shape[0]
    if n < 4:
        return None
    if n > 2 * _COLLAPSE_SAMPLE:
        s = min(n, _COLLAPSE_SAMPLE)
        if unique_rows(L[:s])[0].shape[0] > _COLLAPSE_MAX_RATIO * s:
            return None
    U, inverse, counts = unique_rows(L)
    if U.shape[0] > _COLLAPSE_MAX_RATIO * n:
        return None
    return U, inverse, counts


def lf_dependencies(L: np.ndarray, k: int, *, min_overlap: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Pairwise dependency statistics of the LFs, from the label matrix alone.

    Returns ``(phi, agree)``, both ``(m, m)``: ``phi[i, j]`` is the Pearson correlation of the two LFs' *firing*
    indicators (``1[lambda != -1]``) over all rows, ``agree[i, j]`` the fraction of rows where both vote on which they
    vote the same class (NaN below ``min_overlap`` co-votes). Conditionally independent LFs whose firing does not
    depend on ``Y`` have ``phi ~ 0``; keyword variants of one rule fire on the same rows and agree (``phi -> 1``,
    ``agree -> 1``). Computed with two ``m x m`` GEMMs per row chunk.
    """
    n, m = L.shape
    F = np.zeros((m, m))
    A = np.zeros((m, m))
    s = np.zeros(m)
    for sl in _row_chunks(n, m, elems=8_000_000):
        block = L[sl]
        fire = (block != ABSTAIN).astype(np.float32)
        F += gram_float32(fire)
        s += fire.sum(axis=0)
        for c in range(k):
            A += gram_float32((block == c).astype(np.float32))
    pf = s / n
    cov = F / n - np.outer(pf, pf)
    sd = np.sqrt(np.maximum(pf * (1 - pf), 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        phi = cov / np.outer(sd, sd)
        agree = np.where(F >= min_overlap, A / np.maximum(F, 1), np.nan)
    phi = np.nan_to_num(phi, nan=0.0)
    np.fill_diagonal(phi, 1.0)
    np.fill_diagonal(agree, 1.0)
    return phi, agree


def lf_clusters(L: np.ndarray, k: int, *, threshold: float = 0.7, min_agreement: float = 0.8,
                min_overlap: int = 5) -> list[list[int]]:
    """Clusters of strongly dependent (near-duplicate / correlated) LFs, from the label matrix alone.

    Two LFs are linked when their firing correlation ``phi >= threshold`` (default 0.7: independent single-class LFs
    of one class are correlated through ``Y`` alone, ``phi ~ (1 - p_c) sqrt(t_i t_j)`` with ``t = P(fire | Y = c)``,
    which reaches 0.5-0.6 for high-recall rules) and they agree on at least
    ``min_agreement`` of at least ``min_overlap`` co-votes (:func:`lf_dependencies`); clusters are the connected
    components (single linkage, union-find). Every LF is in exactly one cluster; clusters are sorted by their first LF.
    This is agreement clustering: it finds duplicated and strongly overlapping rules, not weaker dependencies (for
    those, :func:`~lightning_ws.labelmodels.structure.learn_structure_rpca`, the robust-PCA structure learning of
    Varma et al., ICML 2019, arXiv 1903.05844). ``AutoLabelModel`` holds out and merges these clusters: the
    benchmark's structure ablation found them the better groups for its held-out test.
    """
    m = L.shape[1]
    phi, agree = lf_dependencies(L, k, min_overlap=min_overlap)
    link = (phi >= threshold) & (np.nan_to_num(agree, nan=0.0) >= min_agreement)
    return edge_components(m, ((int(i), int(j)) for i, j in zip(*np.nonzero(np.triu(link, 1)))))


def edge_components(m: int, edges: Any) -> list[list[int]]:
    """Connected components of an undirected graph over ``m`` nodes given its ``(i, j)`` edges (union-find;
    singletons included), each sorted, sorted by their first node."""
    parent = list(range(m))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j in edges:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for j in range(m):
        groups.setdefault(find(j), []).append(j)
    return sorted(groups.values(), key=lambda g: g[0])


def merge_clusters(L: np.ndarray, clusters: Sequence[Sequence[int]], k: int) -> np.ndarray:
    """One column per cluster: the majority of its members' votes (abstain when all abstain).

    Ties go to the tied class voted by the lowest-indexed member. Singletons are copied unchanged.
    """
    n = L.shape[0]
    out = np.empty((n, len(clusters)), dtype=np.int64)
    for g, members in enumerate(clusters):
        members = list(members)
        if len(members) == 1:
            out[:, g] = L[:, members[0]]
            continue
        block = L[:, members]
        counts = np.stack([(block == c).sum(axis=1) for c in range(k)], axis=1)
        top = counts.max(axis=1)
        # first member whose vote has the top count
        hit = (block >= 0) & (np.take_along_axis(counts, np.clip(block, 0, None), axis=1) == top[:, None])
        first = hit.argmax(axis=1)
        out[:, g] = np.where(top > 0, block[np.arange(n), first], ABSTAIN)
    return out
