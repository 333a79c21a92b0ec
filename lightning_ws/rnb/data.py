"""Text sources with domains for R&B experiments (no Lightning import).

:func:`load_mixture_source` returns a fixed, seeded train/eval split of texts with labels and original domains; the
regroup CLI and :class:`lightning_ws.datamodules.rnb.MixtureDataModule` both call it, so regrouped domain ids written by
the CLI line up row by row with the data module's training set.
"""

from __future__ import annotations

import csv
import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lightning_ws.errors import ConfigError, DataError, DataFileNotFoundError
from lightning_ws.io import read_jsonl

__all__ = ["MixtureTexts", "load_mixture_source", "texts_fingerprint", "SOURCES"]

#: Named sources: the raw YouTube comments (video = domain), plus SMS spam as a sixth domain, or a WRENCH set.
SOURCES = ("youtube_comments", "youtube_sms", "youtube", "sms")


@dataclass(frozen=True)
class MixtureTexts:
    """Texts with labels and domains, split into train and eval (for R&B, arXiv 2505.00358).

    Attributes:
        train_texts, eval_texts: the texts.
        train_labels, eval_labels: ``(n,)`` int64 class ids.
        train_domains, eval_domains: ``(n,)`` int64 original domain ids.
        domain_names: one name per original domain.
        num_classes: number of classes.
        source: the source string it was loaded from.
        test_texts, test_labels, test_domains: the held-out test split (empty when the source has none and
            ``test_fraction`` is 0); never used for validation or checkpoint selection.
    """

    train_texts: list[str]
    train_labels: np.ndarray
    train_domains: np.ndarray
    eval_texts: list[str]
    eval_labels: np.ndarray
    eval_domains: np.ndarray
    domain_names: list[str]
    num_classes: int
    source: str
    test_texts: list[str] = field(default_factory=list)
    test_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    test_domains: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def texts_fingerprint(*splits: Sequence[str]) -> str:
    """SHA-256 (hex) of the texts of each split, in order: ties a regroup result to the exact rows it was fitted on.

    Reordering, editing, adding or removing a row, or moving a row between splits changes the fingerprint.
    """
    h = hashlib.sha256()
    for i, texts in enumerate(splits):
        h.update(f"\x1esplit{i}:{len(texts)}\x1e".encode())
        for t in texts:
            b = str(t).encode("utf-8")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
    return h.hexdigest()


def _split(n: int, domains: np.ndarray, eval_fraction: float, seed: int, test_fraction: float = 0.0
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-domain random split: every domain keeps ``round(eval_fraction * size)`` eval rows (the first rows of its
    seeded permutation, so they do not depend on ``test_fraction``), then ``round(test_fraction * size)`` test rows,
    and at least one train row."""
    rng = np.random.default_rng(seed)
    tr, ev, te = [], [], []
    for d in np.unique(domains):
        rows = np.flatnonzero(domains == d)
        rows = rows[rng.permutation(len(rows))]
        k = min(len(rows) - 1, int(round(eval_fraction * len(rows))))
        t = min(len(rows) - 1 - k, int(round(test_fraction * len(rows))))
        ev.append(rows[:k])
        te.append(rows[k:k + t])
        tr.append(rows[k + t:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(ev)), np.sort(np.concatenate(te))


_SPLIT_ALIASES = {"train": "train", "eval": "eval", "val": "eval", "valid": "eval", "validation": "eval",
                  "test": "test"}


def _read_rows(path: Path) -> list[dict]:
    if path.suffix.lower() == ".jsonl":
        rows = read_jsonl(path)
    elif path.suffix.lower() == ".csv":
        with path.open("r", encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
    else:
        raise ConfigError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl or .csv (see docs/rnb.md, "
                          "'Your own data').")
    if not rows:
        raise DataError(f"{path}: no rows.")
    return rows


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def _column(path: Path, rows: list[dict], col: str, role: str, hint: str) -> list:
    """Values of ``col`` in every row; a clear error naming the column when it is absent or has empty cells."""
    columns = sorted({k for r in rows[:1000] for k in r})
    if not any(col in r for r in rows):
        raise DataError(f"{path}: no {role} column {col!r} (columns found: {columns}). {hint}")
    bad = [i for i, r in enumerate(rows) if _missing(r.get(col))]
    if bad:
        raise DataError(f"{path}: {len(bad)} row(s) have no value in the {role} column {col!r} (first rows, 0-based: "
                        f"{bad[:5]}); fill them or drop those rows.")
    return [r[col] for r in rows]


def _class_id(v: object) -> int:
    if isinstance(v, bool):
        raise ValueError(f"boolean label {v!r}")
    if isinstance(v, int):
        return v
    f = float(str(v).strip()) if not isinstance(v, float) else v
    if not f.is_integer():
        raise ValueError(f"non-integer label {v!r}")
    return int(f)


def _read_table(path: Path, text_column: str, label_column: str | None, domain_column: str | None,
                split_column: str | None, domain_column_given: bool
                ) -> tuple[list[str], np.ndarray, np.ndarray, list[str] | None, list[str]]:
    """Read the text, label, domain and split columns of a JSONL/CSV file (see :func:`load_mixture_source`)."""
    rows = _read_rows(path)
    texts = [str(t) for t in _column(path, rows, text_column, "text",
                                     "Pass text_column=<the name of your text column>.")]
    if label_column is None:
        labels = np.zeros(len(rows), dtype=np.int64)
    else:
        raw = _column(path, rows, label_column, "label",
                      "Pass label_column=<your label column>, or label_column=None for unlabelled text (every row "
                      "then gets class 0).")
        try:
            labels = np.asarray([_class_id(v) for v in raw], dtype=np.int64)
        except (TypeError, ValueError) as err:
            raise DataError(f"{path}: label column {label_column!r} must hold integer class ids 0..k-1 ({err}); map "
                            "class names to ids first.") from None
        if labels.min() < 0:
            raise DataError(f"{path}: label column {label_column!r} has negative class ids (min {labels.min()}); "
                            "class ids must be 0..k-1 (map abstains/unknowns out of the file first).")
    names: list[str] | None = None
    domains = np.zeros(len(rows), dtype=np.int64)
    if domain_column is not None:
        if not domain_column_given and not any(domain_column in r for r in rows):
            warnings.warn(f"{path}: no {domain_column!r} column (columns found: {sorted(rows[0])}); the file is one "
                          "domain 'all'. Pass domain_column=<your column> to use its domains, or domain_column=None "
                          "to silence this (e.g. before `lightning-ws rnb regroup`).", UserWarning, stacklevel=3)
        else:
            raw_d = [str(v) for v in _column(path, rows, domain_column, "domain",
                                             "Pass domain_column=<your domain column>, or domain_column=None for one "
                                             "domain (e.g. to regroup it).")]
            names = sorted(set(raw_d))
            lookup = {n: i for i, n in enumerate(names)}
            domains = np.asarray([lookup[v] for v in raw_d], dtype=np.int64)
    splits = [""] * len(rows)
    if split_column is not None and any(split_column in r for r in rows):
        splits = [str(r.get(split_column, "") or "").strip().lower() for r in rows]
    return texts, labels, domains, names, splits


def load_mixture_source(source: str, *, eval_fraction: float = 0.2, split_seed: int = 0, test_fraction: float = 0.0,
                        text_column: str = "text", label_column: str | None = "label",
                        domain_column: str | None = "domain", split_column: str | None = "split") -> MixtureTexts:
    """Load texts with domains and a seeded train/eval(/test) split (data side of R&B experiments, arXiv 2505.00358).

    Args:
        source: ``"youtube_comments"`` (raw UCI YouTube spam, the five videos as domains), ``"youtube_sms"`` (those
            plus the WRENCH SMS training texts as a sixth domain ``"SMS"``), ``"youtube"`` / ``"sms"`` / a WRENCH folder
            (train = its train split, eval = its valid split, test = its test split, one domain), or a
            ``.jsonl``/``.csv`` file (columns named by the ``*_column`` arguments; see docs/rnb.md).
        eval_fraction: fraction of each domain held out for evaluation when the source has no fixed split.
        split_seed: seed of that split.
        test_fraction: fraction of each domain held out as a test split (default 0: none) when the source has no fixed
            split. The eval rows do not depend on it (they are drawn first); the test rows come out of training.
        text_column: file sources: the text column (must exist in every row).
        label_column: file sources: the integer class-id column (must exist and be non-empty in every row);
            ``None`` = unlabelled text, every row class 0.
        domain_column: file sources: the domain column (any values; names sorted, ids ``0..m-1``). A column named
            explicitly must exist; the default ``"domain"`` may be absent (one domain ``"all"``, with a warning);
            ``None`` = one domain, silently.
        split_column: file sources: optional column with ``train`` / ``eval`` (aliases ``val``, ``valid``,
            ``validation``) / ``test`` per row; when present it fixes the split (``eval_fraction``/``test_fraction``
            are then unused) and must contain both ``train`` and ``eval`` rows.

    Raises:
        ConfigError: bad fractions or unknown source type.
        DataError: a named column is missing or has empty cells, non-integer or negative labels, bad split values.
        DataFileNotFoundError: a path that does not exist.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise ConfigError(f"eval_fraction must lie in (0, 1), got {eval_fraction}.")
    if not 0.0 <= test_fraction < 1.0 or eval_fraction + test_fraction >= 1.0:
        raise ConfigError(f"test_fraction must lie in [0, 1) with eval_fraction + test_fraction < 1, got "
                          f"{test_fraction} (eval_fraction {eval_fraction}).")
    from lightning_ws.data import load_wrench, load_youtube_comments

    if source in ("youtube_comments", "youtube_sms"):
        yt = load_youtube_comments()
        texts, labels, domains, names = list(yt.texts), yt.labels, yt.domains, list(yt.domain_names)
        if source == "youtube_sms":
            sms = load_wrench("sms", "train")
            texts += list(sms.texts)
            labels = np.concatenate([labels, sms.labels])
            domains = np.concatenate([domains, np.full(sms.n, len(names), dtype=np.int64)])
            names.append("SMS")
        return _make(texts, labels, domains, names, source, *_split(len(texts), domains, eval_fraction, split_seed,
                                                                    test_fraction))
    path = Path(source)
    if source in ("youtube", "sms") or path.is_dir():
        tr_s, va_s, te_s = load_wrench(source, "train"), load_wrench(source, "valid"), load_wrench(source, "test")
        return MixtureTexts(list(tr_s.texts), tr_s.labels, np.zeros(tr_s.n, dtype=np.int64), list(va_s.texts),
                            va_s.labels, np.zeros(va_s.n, dtype=np.int64), [tr_s.name], tr_s.num_classes, source,
                            list(te_s.texts), te_s.labels, np.zeros(te_s.n, dtype=np.int64))
    if not path.is_file():
        raise DataFileNotFoundError(f"mixture source {source!r} is neither a named source ({', '.join(SOURCES)}), a "
                                    f"WRENCH folder, nor an existing .jsonl/.csv file.")
    texts, labels, domains, names, splits = _read_table(path, text_column, label_column, domain_column, split_column,
                                                        domain_column_given=domain_column != "domain")
    if any(s for s in splits):
        bad = {s for s in splits} - set(_SPLIT_ALIASES)
        if bad:
            raise DataError(f"{path}: split column {split_column!r} must hold train / eval (or val, valid, "
                            f"validation) / test; found {sorted(bad)}.")
        canon = np.asarray([_SPLIT_ALIASES[s] for s in splits])
        tr, ev, te = (np.flatnonzero(canon == k) for k in ("train", "eval", "test"))
        if len(tr) == 0 or len(ev) == 0:
            raise DataError(f"{path}: the split column {split_column!r} must contain both 'train' and 'eval' rows.")
    else:
        tr, ev, te = _split(len(texts), domains, eval_fraction, split_seed, test_fraction)
    return _make(texts, labels, domains, names or ["all"], source, tr, ev, te)


def _make(texts: list[str], labels: np.ndarray, domains: np.ndarray, names: list[str], source: str, tr: np.ndarray,
          ev: np.ndarray, te: np.ndarray) -> MixtureTexts:
    return MixtureTexts([texts[i] for i in tr], labels[tr], domains[tr], [texts[i] for i in ev], labels[ev],
                        domains[ev], list(names), int(max(labels.max() + 1, 2)), source, [texts[i] for i in te],
                        labels[te], domains[te])
