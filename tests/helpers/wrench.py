"""WRENCH-format test folders derived from the shipped sets."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from lightning_ws.data.wrench_loader import DATA_DIR


def _youtube_with_votes(folder: Path, votes: Callable[[str, int, list[int]], list[int]]) -> Path:
    """Write the shipped YouTube set to ``folder`` with each row's ``weak_labels`` replaced by ``votes(split, i,
    weak_labels)`` (no readme, so every LF gets a generic name)."""
    src = DATA_DIR / "wrench" / "youtube"
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        rows = json.loads((src / f"{split}.json").read_text())
        for i, row in enumerate(rows.values()):
            row["weak_labels"] = votes(split, i, list(row["weak_labels"]))
        (folder / f"{split}.json").write_text(json.dumps(rows))
    (folder / "label.json").write_text((src / "label.json").read_text())
    return folder


def youtube_with_silent_lf(folder: Path, every: int = 7) -> Path:
    """Write the shipped YouTube set to ``folder`` with an 11th LF (``lf_10``, votes spam) that never votes on train
    and votes on every ``every``-th row of valid and test (no readme, so every LF gets a generic name)."""
    return _youtube_with_votes(folder, lambda split, i, wl: wl + [1 if split != "train" and i % every == 0 else -1])


def youtube_without_train_labels(folder: Path, test_unlabelled_every: int = 0) -> Path:
    """Write the shipped YouTube set to ``folder`` with no gold label on train (WRENCH's ``-1`` on the first third of
    the rows, ``null`` on the second, no ``label`` key on the rest) and, with ``test_unlabelled_every > 0``, label -1
    on every such row of test (the readme is copied, so the LFs keep their names)."""
    src = DATA_DIR / "wrench" / "youtube"
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        rows = json.loads((src / f"{split}.json").read_text())
        n = len(rows)
        for i, row in enumerate(rows.values()):
            if split == "train":
                if i < n // 3:
                    row["label"] = -1
                elif i < 2 * n // 3:
                    row["label"] = None
                else:
                    del row["label"]
            elif split == "test" and test_unlabelled_every and i % test_unlabelled_every == 0:
                row["label"] = -1
        (folder / f"{split}.json").write_text(json.dumps(rows))
    for name in ("label.json", "readme.txt"):
        (folder / name).write_text((src / name).read_text())
    return folder


def youtube_with_lfs(folder: Path, columns: list[int]) -> Path:
    """Write the shipped YouTube set to ``folder`` keeping only the LF ``columns`` (no readme: generic LF names)."""
    return _youtube_with_votes(folder, lambda split, i, wl: [wl[j] for j in columns])


def youtube_with_constant_lf(folder: Path, vote: int = 1) -> Path:
    """Write the shipped YouTube set to ``folder`` with an 11th LF (``lf_10``) that votes ``vote`` on every row of
    every split (no readme, so every LF gets a generic name)."""
    return _youtube_with_votes(folder, lambda split, i, wl: wl + [vote])
