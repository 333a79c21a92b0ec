"""Diagnostic (issue 16): predictions on covered rows outside the voted classes, and where all-abstain rows should go.

On a row where some LFs vote, a conditional-independence model (Dawid-Skene, moment matching) can still predict a
class that no LF named on that row: the class prior and the LFs that abstained outweigh the votes. This script
measures, on real label matrices, how often that happens and how often it is right, and what restricting each
covered row to its voted classes (:func:`lightning_ws.labelmodels.restrict_to_voted`) does, for the models alone and
for ``AutoLabelModel``'s default ``support="voted"`` (the chosen model's predictions restricted) against
``support="model"`` (its own probabilities, the behaviour before session 17). A last table compares rules for
the rows where every LF abstains (majority vote's vote shares, the models' class balances, Dawid-Skene's posterior
of the all-abstain pattern).

Matrices: the shipped WRENCH YouTube, SMS and TREC label matrices, all LFs and the random subsets of
``diag_lf_subsets.py`` (a quarter, half and three quarters of the LFs, 8 draws each): 75 matrices. Models are fitted
label-free on train and scored on train (transductive) and test, all rows; metric accuracy (YouTube, TREC) or spam
F1 (SMS), in points; ties broken by the same seeded coin for every model.

Run: ``OMP_NUM_THREADS=1 python benchmarks/diag_voted_support.py`` (about 30 seconds on 2 CPU cores).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from diag_lf_subsets import FRACTIONS, SETS, _metric, subset_columns, wrench_matrices
from diag_wrench_shapes import _pred

from lightning_ws.labelmodels import DawidSkene, make_label_model, restrict_to_voted
from lightning_ws.labelmodels.matrix import vote_counts

MODELS = ("dawid_skene", "moment_matching")


def _matrices(draws: int):
    """``(set, label, k, {split: L}, {split: y})`` for every full set and LF subset."""
    for task in SETS:
        W, y, k, m = wrench_matrices(task)
        yield task, f"all {m}", k, W, y
        for frac in FRACTIONS:
            for draw in range(draws):
                cols = subset_columns(m, k, frac, draw)
                L = {s: W[s][:, cols] for s in W}
                if (L["train"] >= 0).any():
                    yield task, f"{cols.size} of {m}", k, L, y


def _unvoted(pred: np.ndarray, L: np.ndarray, k: int) -> np.ndarray:
    """Covered rows whose prediction no LF voted on that row."""
    counts = vote_counts(L, k)
    return (counts.sum(axis=1) > 0) & (counts[np.arange(L.shape[0]), pred] == 0)


def _cell(x: list[float]) -> str:
    return f"{np.mean(x):+.2f} / {np.min(x):+.2f} / {sum(v < -0.5 for v in x)}" if x else "-"


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=8, help="subsets per set and size")
    args = ap.parse_args()
    splits = ("train", "test")
    d_model = {(n, s, v): [] for n in MODELS for s in splits for v in ("model", "voted")}
    d_auto = {(s, v): [] for s in splits for v in ("auto", "voted", "model")}
    unv = {n: [0, 0, 0, 0] for n in MODELS}  # covered rows, unvoted predictions, right there, MV right there
    unc: dict[tuple[str, str], list[int]] = {}
    n_mat = 0
    for task, label, k, L, y in _matrices(args.draws):
        n_mat += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mv = make_label_model("majority_vote", num_classes=k, seed=0).fit(L["train"])
            fits = {n: make_label_model(n, num_classes=k, seed=0).fit(L["train"]) for n in MODELS}
            autos = {v: make_label_model("auto", num_classes=k, seed=0, support=v).fit(L["train"])
                     for v in ("auto", "voted", "model")}
            ds_cat = DawidSkene(k, seed=0).fit(L["train"])
        for s in splits:
            pm = _pred(mv.predict_proba(L[s]))
            base = _metric(task, y[s], pm)
            for n, model in fits.items():
                P = model.predict_proba(L[s])
                p = _pred(P)
                d_model[(n, s, "model")].append(_metric(task, y[s], p) - base)
                d_model[(n, s, "voted")].append(_metric(task, y[s], _pred(restrict_to_voted(P, L[s], k))) - base)
                if s == "train":
                    u = _unvoted(p, L[s], k)
                    unv[n][0] += int((L[s] >= 0).any(axis=1).sum())
                    unv[n][1] += int(u.sum())
                    unv[n][2] += int((p[u] == y[s][u]).sum())
                    unv[n][3] += int((pm[u] == y[s][u]).sum())
            for v, a in autos.items():
                d_auto[(s, v)].append(_metric(task, y[s], _pred(a.predict_proba(L[s]))) - base)
            # all-abstain rows: accuracy of the constant label each rule gives them
            none = ~(L[s] >= 0).any(axis=1)
            if none.sum() >= 5:
                truth = np.bincount(y[s][none], minlength=k)
                all_abstain = ds_cat._proba_covered(np.full((1, L[s].shape[1]), -1))[0]
                rules = {"majority vote's vote shares (MV, and auto when it keeps MV)": mv.class_balance_,
                         "Dawid-Skene class balance": fits["dawid_skene"].class_balance_,
                         "moment matching class balance": fits["moment_matching"].class_balance_,
                         "Dawid-Skene posterior of the all-abstain pattern": all_abstain}
                for r, p in rules.items():
                    c = unc.setdefault((s, r), [0, 0, 0, 0])
                    c[0] += int(truth[int(np.argmax(p))])
                    c[1] += int(none.sum())
                    c[2] += int(np.argmax(p) == truth.argmax())
                    c[3] += 1
    print(f"{n_mat} label matrices (WRENCH YouTube, SMS, TREC: all LFs and random LF subsets). Cells: model - MV "
          f"in points, mean / min / matrices more than 0.5 below.\n")
    print("| model | split | own probabilities | restricted to voted classes | restricted better / worse (by > 0.05) |")
    print("|---|---|---|---|---|")
    for n in MODELS:
        for s in splits:
            a, b = np.array(d_model[(n, s, "model")]), np.array(d_model[(n, s, "voted")])
            print(f"| {n} | {s} | {_cell(list(a))} | {_cell(list(b))} | {int((b > a + 0.05).sum())} / "
                  f"{int((b < a - 0.05).sum())} of {a.size} |")
    print("\nCovered train rows whose prediction no LF on the row voted for (all matrices pooled):")
    print("| model | covered rows | unvoted predictions | right there | majority vote right there |")
    print("|---|---|---|---|---|")
    for n, (c, u, r, m) in unv.items():
        print(f"| {n} | {c} | {u} ({100 * u / max(c, 1):.1f} %) | {100 * r / max(u, 1):.1f} % | "
              f"{100 * m / max(u, 1):.1f} % |")
    print("\nAutoLabelModel - MV (cells as above):")
    print("| split | support='auto' (default) | support='voted' | support='model' |")
    print("|---|---|---|---|")
    for s in splits:
        print(f"| {s} | {_cell(d_auto[(s, 'auto')])} | {_cell(d_auto[(s, 'voted')])} | "
              f"{_cell(d_auto[(s, 'model')])} |")
    print("\nAll-abstain rows (matrices with at least 5): share labelled right by each constant rule, and in how many "
          "matrices the rule names their most frequent gold class:")
    print("| split | rule | rows right | matrices |")
    print("|---|---|---|---|")
    for (s, r), (right, total, hit, mats) in unc.items():
        print(f"| {s} | {r} | {right} / {total} = {100 * right / max(total, 1):.1f} % | {hit} of {mats} |")


if __name__ == "__main__":
    main()
