"""The raw UCI YouTube Spam Collection, the video as a domain: :func:`load_youtube_comments`."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lightning_ws.data._common import DATA_DIR
from lightning_ws.errors import DataError, DataFileNotFoundError

__all__ = ["YouTubeComments", "load_youtube_comments"]


@dataclass(frozen=True)
class YouTubeComments:
    """The raw UCI YouTube Spam Collection: comments of five videos, the video as the domain.

    Attributes:
        comment_ids, authors, dates, texts: per-comment fields of the original CSVs.
        labels: ``1`` = spam, ``0`` = ham, shape ``(n,)``.
        domains: index into ``domain_names`` per comment, shape ``(n,)``.
        domain_names: the video of each domain (``"Psy"``, ``"KatyPerry"``, ...).
    """

    comment_ids: list[str]
    authors: list[str]
    dates: list[str]
    texts: list[str]
    labels: np.ndarray
    domains: np.ndarray
    domain_names: list[str]

    def __len__(self) -> int:
        return len(self.texts)


def load_youtube_comments(folder: str | Path | None = None) -> YouTubeComments:
    """Load the raw YouTube Spam Collection (five CSVs, ``COMMENT_ID,AUTHOR,DATE,CONTENT,CLASS``).

    Args:
        folder: a folder of ``Youtube0N-<Video>.csv`` files; defaults to the shipped copy.

    Returns:
        :class:`YouTubeComments` whose ``domains`` give each comment's video.
    """
    folder = Path(folder) if folder is not None else DATA_DIR / "wrench" / "youtube" / "raw"
    files = sorted(folder.glob("Youtube*.csv")) if folder.is_dir() else []
    if not files:
        raise DataFileNotFoundError(f"no Youtube*.csv files in {folder}. Pass the folder of the UCI YouTube Spam "
                                    f"Collection CSVs, or leave the argument out to use the shipped copy.")
    cids, authors, dates, texts, labels, domains, names = [], [], [], [], [], [], []
    for d, path in enumerate(files):
        names.append(path.stem.split("-", 1)[-1])
        with path.open("r", encoding="utf-8", errors="replace", newline="") as fh:
            reader = csv.DictReader(fh)
            missing = {"COMMENT_ID", "AUTHOR", "DATE", "CONTENT", "CLASS"} - set(reader.fieldnames or [])
            if missing:
                raise DataError(f"{path}: missing CSV columns {sorted(missing)}.")
            for row in reader:
                cids.append(row["COMMENT_ID"])
                authors.append(row["AUTHOR"])
                dates.append(row["DATE"] or "")
                texts.append(row["CONTENT"])
                labels.append(int(row["CLASS"]))
                domains.append(d)
    return YouTubeComments(comment_ids=cids, authors=authors, dates=dates, texts=texts,
                           labels=np.asarray(labels, dtype=np.int64), domains=np.asarray(domains, dtype=np.int64),
                           domain_names=names)

