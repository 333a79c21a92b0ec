"""WRENCH-format test folders derived from the shipped sets."""

from __future__ import annotations

import json
from pathlib import Path

from lightning_ws.data.wrench_loader import DATA_DIR


def youtube_with_silent_lf(folder: Path, every: int = 7) -> Path:
    """Write the shipped YouTube set to ``folder`` with an 11th LF (``lf_10``, votes spam) that never votes on train
    and votes on every ``every``-th row of valid and test (no readme, so every LF gets a generic name)."""
    src = DATA_DIR / "wrench" / "youtube"
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        rows = json.loads((src / f"{split}.json").read_text())
        for i, row in enumerate(rows.values()):
            row["weak_labels"] = list(row["weak_labels"]) + [1 if split != "train" and i % every == 0 else -1]
        (folder / f"{split}.json").write_text(json.dumps(rows))
    (folder / "label.json").write_text((src / "label.json").read_text())
    return folder
