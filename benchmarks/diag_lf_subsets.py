"""Diagnostic (issue 16): ``auto`` on random subsets of the real WRENCH LFs shipped here (YouTube, SMS, TREC).

Each draw keeps a random quarter, half or three quarters of a set's hand-written LFs (seeded per draw), fits every
model label-free on the train matrix and scores it on train (transductive) and on test, all rows. Fewer LFs give
other coverage, other dependence and other class skew than the full sets, with real LF errors, so this probes
``auto`` on real matrices it was not tuned on. It is not a held-out *set*: the texts and the LF pool are the shipped
ones, and the full-set rows of ``bench_labelmodels.py`` were looked at while ``auto`` was built.

Metric: accuracy (YouTube, TREC) or the spam class's F1 (SMS), in points; every model's ties, uncovered rows
included, are broken by the same seeded coin. Snorkel 0.10 (``pip install '.[bench]'``) is fitted with its
defaults (uniform prior, 100 epochs); without it the snorkel columns print ``-``.

Run: ``OMP_NUM_THREADS=1 python benchmarks/diag_lf_subsets.py`` (about 1 minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_labelmodels import _fit_snorkel, _snorkel
from diag_rare_class_f1 import f1_pos
from diag_wrench_shapes import _pred

from lightning_ws.data import load_wrench
from lightning_ws.labelmodels import make_label_model

SETS = ("youtube", "sms", "trec")
FRACTIONS = (0.25, 0.5, 0.75)


def subset_columns(m: int, k: int, frac: float, draw: int) -> np.ndarray:
    """The sorted LF columns of draw ``draw`` that keep ``frac`` of ``m`` LFs (at least 3) of a ``k``-class set: the
    LF subsets this script and the other WRENCH LF-subset diagnostics share."""
    size = max(3, round(frac * m))
    return np.sort(np.random.default_rng([draw, size, k]).choice(m, size, replace=False))


def wrench_matrices(task: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int, int]:
    """The shipped set ``task``'s train and test label matrices and gold labels, its number of classes and of LFs."""
    splits = {s: load_wrench(task, s) for s in ("train", "test")}
    W = {s: np.asarray(splits[s].weak_labels) for s in splits}
    y = {s: np.asarray(splits[s].labels) for s in splits}
    return W, y, len(splits["train"].class_names), W["train"].shape[1]


def _metric(task: str, y: np.ndarray, pred: np.ndarray) -> float:
    return f1_pos(y, pred) if task == "sms" else 100.0 * float((pred == y).mean())


def _cell(x: list[float]) -> str:
    if not x:
        return "-"
    return f"{np.mean(x):+.2f} / {np.min(x):+.2f} / {sum(v < -0.5 for v in x)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=8, help="subsets per set and size")
    ap.add_argument("--first-draw", type=int, default=0,
                    help="index of the first subset draw (default 0: draws 0-7 are those of the tables in BENCHMARKS.md)")
    args = ap.parse_args()
    SL = _snorkel()
    rows: list[tuple] = []
    print("| set | LFs kept (of all) | draws | auto - MV, train | auto - MV, test | auto - max(MV, snorkel), train | "
          "auto - max(MV, snorkel), test | auto picks |")
    print("|---|---|---|---|---|---|---|---|")
    for task in SETS:
        W, y, k, m = wrench_matrices(task)
        for frac in FRACTIONS:
            size = max(3, round(frac * m))
            cells: dict[str, list[float]] = {"mv_train": [], "mv_test": [], "pk_train": [], "pk_test": []}
            picks: dict[str, int] = {}
            for draw in range(args.first_draw, args.first_draw + args.draws):
                cols = subset_columns(m, k, frac, draw)
                L = {s: W[s][:, cols] for s in W}
                if not (L["train"] >= 0).any():
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    auto = make_label_model("auto", num_classes=k, seed=0).fit(L["train"])
                    mv = make_label_model("majority_vote", num_classes=k, seed=0).fit(L["train"])
                    sn = _fit_snorkel(SL, L["train"], k, None, 100, 0) if SL is not None else None
                picks[auto.selected] = picks.get(auto.selected, 0) + 1
                for s in W:
                    a = _metric(task, y[s], _pred(auto.predict_proba(L[s])))
                    b = _metric(task, y[s], _pred(mv.predict_proba(L[s])))
                    cells[f"mv_{s}"].append(a - b)
                    if sn is not None:
                        c = _metric(task, y[s], _pred(sn.predict_proba(L[s].astype(np.int64))))
                        cells[f"pk_{s}"].append(a - max(b, c))
                rows.append((task, size, draw, auto.selected, cells["mv_train"][-1], cells["mv_test"][-1]))
            picks_s = ", ".join(f"{p} {c}" for p, c in sorted(picks.items()))
            print(f"| {task} | {size} of {m} | {len(cells['mv_train'])} | {_cell(cells['mv_train'])} | "
                  f"{_cell(cells['mv_test'])} | {_cell(cells['pk_train'])} | {_cell(cells['pk_test'])} | {picks_s} |",
                  flush=True)
    print("\nCells: mean / min / draws more than 0.5 point below, in points.")
    worst = sorted(rows, key=lambda r: r[4])[:6]
    print("\nWorst draws of auto - MV on train:")
    print("| set | LFs kept | draw | auto pick | auto - MV, train | auto - MV, test |")
    print("|---|---|---|---|---|---|")
    for task, size, draw, pick, d_tr, d_te in worst:
        print(f"| {task} | {size} | {draw} | {pick} | {d_tr:+.2f} | {d_te:+.2f} |")


if __name__ == "__main__":
    main()
