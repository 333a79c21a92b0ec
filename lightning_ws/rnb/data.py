"""Text sources with domains for R&B experiments (no Lightning import).

:func:`load_mixture_source` returns a fixed, seeded train/eval split of texts with labels and original domains; the
regroup CLI and :class:`lightning_ws.datamodules.rnb.MixtureDataModule` both call it, so regrouped domain ids written by
the CLI line up row by row with the data module's training set.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lightning_ws.errors import ConfigError, DataError, DataFileNotFoundError
from lightning_ws.io import read_jsonl

__all__ = ["MixtureTexts", "load_mixture_source", "SOURCES"]

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


def _split(n: int, domains: np.ndarray, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-domain random split (every domain keeps ``round(eval_fraction * size)`` eval rows, at least one train row)."""
    rng = np.random.default_rng(seed)
    tr, ev = [], []
    for d in np.unique(domains):
        rows = np.flatnonzero(domains == d)
        rows = rows[rng.permutation(len(rows))]
        k = min(len(rows) - 1, int(round(eval_fraction * len(rows))))
        ev.append(rows[:k])
        tr.append(rows[k:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(ev))


def _read_table(path: Path) -> tuple[list[str], np.ndarray, np.ndarray, list[str] | None, list[str]]:
    """Read ``text``, ``label`` (optional, default 0), ``domain`` (optional) and ``split`` (optional) columns."""
    rows: list[dict] = []
    if path.suffix.lower() == ".jsonl":
        rows = read_jsonl(path)
    elif path.suffix.lower() == ".csv":
        with path.open("r", encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
    else:
        raise ConfigError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl or .csv with a 'text' column.")
    if not rows:
        raise DataError(f"{path}: no rows.")
    if any("text" not in r for r in rows):
        raise DataError(f"{path}: every row needs a 'text' field (optional: 'label', 'domain', 'split').")
    texts = [str(r["text"]) for r in rows]
    try:
        labels = np.asarray([int(r.get("label", 0) or 0) for r in rows], dtype=np.int64)
    except ValueError as err:
        raise DataError(f"{path}: 'label' must be an integer class id ({err}).") from None
    names = sorted({str(r["domain"]) for r in rows if "domain" in r}) if "domain" in rows[0] else []
    lookup = {n: i for i, n in enumerate(names)}
    domains = np.asarray([lookup[str(r["domain"])] if names else 0 for r in rows], dtype=np.int64)
    splits = [str(r.get("split", "")) for r in rows]
    return texts, labels, domains, (names or None), splits


def load_mixture_source(source: str, *, eval_fraction: float = 0.2, split_seed: int = 0) -> MixtureTexts:
    """Load texts with domains and a seeded train/eval split (data side of R&B experiments, arXiv 2505.00358).

    Args:
        source: ``"youtube_comments"`` (raw UCI YouTube spam, the five videos as domains), ``"youtube_sms"`` (those
            plus the WRENCH SMS training texts as a sixth domain ``"SMS"``), ``"youtube"`` / ``"sms"`` / a WRENCH folder
            (train = its train split, eval = its test split, one domain), or a ``.jsonl``/``.csv`` file with a ``text``
            column and optional ``label``, ``domain`` and ``split`` (``train``/``eval``) columns.
        eval_fraction: fraction of each domain held out for evaluation when the source has no fixed split.
        split_seed: seed of that split.

    Raises:
        ConfigError: bad ``eval_fraction`` or unknown source type.
        DataFileNotFoundError: a path that does not exist.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise ConfigError(f"eval_fraction must lie in (0, 1), got {eval_fraction}.")
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
        tr, ev = _split(len(texts), domains, eval_fraction, split_seed)
        return MixtureTexts([texts[i] for i in tr], labels[tr], domains[tr], [texts[i] for i in ev], labels[ev],
                            domains[ev], names, int(max(labels.max() + 1, 2)), source)
    path = Path(source)
    if source in ("youtube", "sms") or path.is_dir():
        tr_s, te_s = load_wrench(source, "train"), load_wrench(source, "test")
        return MixtureTexts(list(tr_s.texts), tr_s.labels, np.zeros(tr_s.n, dtype=np.int64), list(te_s.texts),
                            te_s.labels, np.zeros(te_s.n, dtype=np.int64), [tr_s.name], tr_s.num_classes, source)
    if not path.is_file():
        raise DataFileNotFoundError(f"mixture source {source!r} is neither a named source ({', '.join(SOURCES)}), a "
                                    f"WRENCH folder, nor an existing .jsonl/.csv file.")
    texts, labels, domains, names, splits = _read_table(path)
    if any(s for s in splits):
        bad = {s for s in splits} - {"train", "eval"}
        if bad:
            raise DataError(f"{path}: 'split' must be 'train' or 'eval'; found {sorted(bad)}.")
        tr = np.flatnonzero(np.asarray(splits) == "train")
        ev = np.flatnonzero(np.asarray(splits) == "eval")
        if len(tr) == 0 or len(ev) == 0:
            raise DataError(f"{path}: the 'split' column must contain both 'train' and 'eval' rows.")
    else:
        tr, ev = _split(len(texts), domains, eval_fraction, split_seed)
    names = names or ["all"]
    return MixtureTexts([texts[i] for i in tr], labels[tr], domains[tr], [texts[i] for i in ev], labels[ev],
                        domains[ev], names, int(max(labels.max() + 1, 2)), source)
