"""Diagnostic (issue 16, session 48): which check of ``uncovered_balance="auto"`` keeps majority vote's vote share for
the rows without a vote, and what switching to the EM prior would have given there.

Where ``auto`` keeps majority vote label-free, every row on which all LFs abstain gets one class: the argmax of majority
vote's vote share over the covered rows, unless the class prior of a label-free Dawid-Skene fit names another class
and that fit passes the checks of :meth:`~lightning_ws.labelmodels.auto.AutoLabelModel._em_balance` (session 29). On
random subsets of the real WRENCH LFs (``diag_lf_subsets.py``'s draws) many rows get no vote, so this one decision moves
accuracy by whole points. For every subset where ``auto``'s report has an EM prior, this script takes the reason in
``fit_report_["uncovered_balance"]`` (``kept_vote_share_because``, or the source used) and computes what giving the
uncovered rows the EM prior's class instead of ``auto``'s would change, in points of accuracy over the whole split
(train, where ``auto`` is fitted, and test). Rows: set x reason; cells: mean change / subsets where it gains more than
0.5 point / subsets where it loses more than 0.5. Gold labels score the rows only; nothing here changes ``auto``.

    OMP_NUM_THREADS=1 python benchmarks/diag_uncovered_vetoes.py [--blocks 0,1600]   # about 5 minutes on one core

``--blocks``: first draws of blocks of 8 draws per set and size (``diag_lf_subsets.py --first-draw``).
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from diag_lf_subsets import FRACTIONS, SETS, subset_columns, wrench_matrices

from lightning_ws.labelmodels import make_label_model


def reason_of(report: dict) -> str:
    """The veto (numbers replaced by ``#``) or, where no veto applied, the source used."""
    text = str(report.get("kept_vote_share_because", report.get("source")))
    return re.sub(r"[\d.]+%?", "#", text)[:70]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", default="0,1600", help="first draws of blocks of 8 draws, comma-separated")
    args = ap.parse_args()
    blocks = [int(b) for b in args.blocks.split(",")]
    gains: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for task in SETS:
        W, y, k, m = wrench_matrices(task)
        for frac in FRACTIONS:
            for draw in (b + i for b in blocks for i in range(8)):
                cols = subset_columns(m, k, frac, draw)
                L = {s: W[s][:, cols] for s in W}
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    auto = make_label_model("auto", num_classes=k, seed=0).fit(L["train"])
                report = auto.fit_report_.get("uncovered_balance")
                if not report or report.get("em_prior") is None:
                    continue  # the pick is not majority vote, or the EM fit failed
                em_class = int(np.argmax(report["em_prior"]))
                auto_class = int(np.argmax(auto.predict_proba(-np.ones((1, len(cols)), dtype=np.int64))[0]))
                for s in W:
                    silent = ~(L[s] >= 0).any(axis=1)
                    if silent.any():
                        diff = int((y[s][silent] == em_class).sum()) - int((y[s][silent] == auto_class).sum())
                        gains[(task, reason_of(report))][s].append(100.0 * diff / len(y[s]))
    print(f"Random subsets of the real WRENCH LFs (blocks {blocks}, 8 draws each per set and size), auto kept majority "
          f"vote. Cells: giving the rows without a vote the EM prior's class instead of auto's, points of accuracy: "
          f"mean / gains > 0.5 / losses > 0.5")
    print("| set | auto's reason (veto, or source used) | subsets | train | test |")
    print("|---|---|---|---|---|")
    for (task, reason), d in sorted(gains.items()):
        cells = []
        for s in ("train", "test"):
            g = np.array(d[s]) if d[s] else np.zeros(1)
            cells.append(f"{g.mean():+.2f} / {int((g > 0.5).sum())} / {int((g < -0.5).sum())}")
        print(f"| {task} | {reason} | {len(d['train'])} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
