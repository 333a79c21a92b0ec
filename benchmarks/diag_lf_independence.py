"""Check (issue 16, session 43): can a label-free test tell an LF whose votes do not depend on the class from a real
one, so that ``auto`` could leave it out? Not shipped: this script prints why.

``diag_constant_lf.py --extra skew|near`` draws matrices with one LF whose vote is independent of ``Y`` but not
constant (votes class 1 on 90 % of the rows and 0 on the rest, or class 1 on 95 % and abstains). ``auto`` does not
detect it (it only drops LFs that vote one class on *every* row); majority vote counts it on nearly every row, and
under plain agreement (``criterion="agreement"``, the selection rule until this session) its held-out class-1 votes
rewarded the candidates that predict class 1 most. The default lift criterion (also session 43) gives those votes
no say; this script asks whether the column itself can be found. Fitted without that column, ``auto`` keeps majority
vote over the other LFs and gains about 5-10 points over majority vote with it (``--without``).

The test tried here, per LF ``j``: on the rows where ``j`` votes and the *other* LFs have a clear majority (one
class with the most votes), Cohen's kappa between ``j``'s vote and that majority, ``kappa = (A - E) / (1 - E)`` with
``A`` the share of those rows where they agree and ``E = sum_c P(j votes c) P(majority = c)`` (the majority's class
shares over all rows where it is clear), with the binomial standard error of ``A`` divided by ``1 - E``. An LF
independent of ``Y`` (and of the other LFs) has kappa 0 whatever its coverage or class mix; a real one agrees with the
others beyond chance. ``j`` is flagged when it votes on at least 50 such rows, kappa is not significantly different
from 0 (``|kappa| < 1.645 se``) and its 90 % interval lies inside ``+- min(0.1, 0.35 x the largest kappa of another
LF)`` (the same three kinds of condition as Weaver's answer-blind screen, session 42).

It prints:

1. on the draws of ``diag_constant_lf.py`` (draw seeds 0-29, 400 fit rows, 400 fresh rows): how often the
   uninformative column and the real LFs are flagged, and ``auto - MV`` (MV over every column, as a user gets it)
   for ``auto`` fitted on every column and fitted without the flagged ones;
2. the flags on the full train matrices of WRENCH YouTube, SMS and TREC;
3. the flags on the random real-LF subsets of ``diag_lf_subsets.py`` (a quarter, half and three quarters of each
   set's LFs, draws 0-7, 100-107, ..., 1500-1507: 1,152 matrices) and what leaving the flagged LFs out does to
   majority vote there (train and test, accuracy or SMS spam F1), and TREC's LF 41 on its own.

Gold labels are used for scoring only. ``OMP_NUM_THREADS=1 python benchmarks/diag_lf_independence.py`` (about
4 minutes on one core).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from diag_constant_lf import draw
from diag_lf_subsets import FRACTIONS, _cell, _metric, subset_columns

from lightning_ws.data import load_wrench
from lightning_ws.labelmodels import LabelModel, make_label_model

Z90 = 1.6448536269514722  # two-sided 90 %


def lf_kappa(L: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(kappa, se, n)`` per LF: agreement of its votes with the other LFs' clear majority (see the module doc);
    NaN / inf / the row count where fewer than 2 rows qualify or the chance agreement is 1."""
    m = L.shape[1]
    counts = np.stack([(L == c).sum(axis=1) for c in range(k)], axis=1)
    kappa, se, n = np.full(m, np.nan), np.full(m, np.inf), np.zeros(m, dtype=np.int64)
    for j in range(m):
        v = L[:, j]
        fires = v >= 0
        others = counts.copy()
        others[fires, v[fires]] -= 1
        top = others.max(axis=1)
        clear = (top > 0) & ((others == top[:, None]).sum(axis=1) == 1)
        maj = others.argmax(axis=1)
        rows = clear & fires
        n[j] = int(rows.sum())
        if n[j] < 2:
            continue
        agree = float((maj[rows] == v[rows]).mean())
        chance = float(np.bincount(v[rows], minlength=k) / n[j] @ (np.bincount(maj[clear], minlength=k) / clear.sum()))
        if chance >= 1.0 - 1e-12:
            continue
        kappa[j] = (agree - chance) / (1.0 - chance)
        se[j] = np.sqrt(max(agree * (1.0 - agree), 1.0 / n[j]) / n[j]) / (1.0 - chance)
    return kappa, se, n


def flag_independent(L: np.ndarray, k: int, *, max_kappa: float = 0.1, ratio: float = 0.35,
                     min_rows: int = 50) -> np.ndarray:
    """``(m,)`` bool: the LFs the test of the module doc flags."""
    kappa, se, n = lf_kappa(L, k)
    out = np.zeros(L.shape[1], dtype=bool)
    for j in range(L.shape[1]):
        rest = np.delete(kappa, j)
        strongest = float(np.nanmax(rest)) if np.isfinite(rest).any() else 0.0
        lim = min(max_kappa, ratio * strongest)
        out[j] = bool(n[j] >= min_rows and np.isfinite(kappa[j]) and abs(kappa[j]) < Z90 * se[j]
                      and abs(kappa[j]) + Z90 * se[j] < lim)
    return out


def _fit(name: str, L: np.ndarray, k: int) -> LabelModel:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_label_model(name, num_classes=k, seed=0).fit(L)


def synthetic() -> None:
    print("1. Draws of diag_constant_lf.py (column 0 independent of Y), 30 draws per row, 400 fit + 400 fresh rows;")
    print("   auto - MV in points (MV over every column): mean / min / draws below -0.5\n")
    print("| column 0 | regime | column 0 flagged | real LFs flagged | auto on every column: fit rows | fresh rows | "
          "auto without the flagged columns: fit rows | fresh rows |")
    print("|---|---|---|---|---|---|---|---|")
    for extra in ("skew", "near"):
        for k, m in ((2, 3), (2, 6), (4, 6), (4, 12)):
            hit, real, cells = 0, 0, {key: [] for key in ("all_fit", "all_fresh", "kept_fit", "kept_fresh")}
            for s in range(30):
                L, y = draw(s, k, m, 400, extra)
                fit, fresh = slice(0, 400), slice(400, 800)
                flag = flag_independent(L[fit], k)
                hit += int(flag[0])
                real += int(flag[1:].sum())
                keep = np.flatnonzero(~flag)
                mv = _fit("majority_vote", L[fit], k)
                for tag, cols in (("all", np.arange(L.shape[1])), ("kept", keep)):
                    auto = _fit("auto", L[fit][:, cols], k)
                    for part, rows in (("fit", fit), ("fresh", fresh)):
                        a = float((auto.predict(L[rows][:, cols]) == y[rows]).mean())
                        b = float((mv.predict(L[rows]) == y[rows]).mean())
                        cells[f"{tag}_{part}"].append(100 * (a - b))
            print(f"| {extra} | k={k}, {m} LFs + 1 | {hit} of 30 | {real} of {30 * m} | "
                  + " | ".join(_cell(c) for c in cells.values()) + " |", flush=True)


def real() -> None:
    print("\n2. Full WRENCH train matrices\n")
    print("| set | LFs | flagged |")
    print("|---|---|---|")
    for name in ("youtube", "sms", "trec"):
        tr = load_wrench(name, "train")
        flag = flag_independent(np.asarray(tr.weak_labels), tr.num_classes)
        print(f"| {name} | {flag.size} | {np.flatnonzero(flag).tolist()} |")
    print("\n3. Random subsets of the real LFs (diag_lf_subsets.py draws 0-7, 100-107, ..., 1500-1507); where some LF")
    print("   is flagged, MV without the flagged LFs - MV over every LF of the subset, points: mean / min / below -0.5\n")
    print("| set | subsets | with a flagged LF | LFs flagged (column: subsets) | MV change, train | MV change, test |")
    print("|---|---|---|---|---|---|")
    for name in ("youtube", "sms", "trec"):
        S = {s: load_wrench(name, s) for s in ("train", "test")}
        W = {s: np.asarray(S[s].weak_labels) for s in S}
        y = {s: np.asarray(S[s].labels) for s in S}
        k, m = S["train"].num_classes, W["train"].shape[1]
        total, hits, which, change = 0, 0, {}, {"train": [], "test": []}
        for frac in FRACTIONS:
            for first in range(0, 1600, 100):
                for d in range(first, first + 8):
                    cols = subset_columns(m, k, frac, d)
                    if not (W["train"][:, cols] >= 0).any():
                        continue
                    total += 1
                    flag = flag_independent(W["train"][:, cols], k)
                    if not flag.any() or flag.all():
                        continue
                    hits += 1
                    for c in cols[flag]:
                        which[int(c)] = which.get(int(c), 0) + 1
                    kept = cols[~flag]
                    mv_all, mv_kept = _fit("majority_vote", W["train"][:, cols], k), _fit("majority_vote",
                                                                                          W["train"][:, kept], k)
                    for s in S:
                        change[s].append(_metric(name, y[s], mv_kept.predict(W[s][:, kept]))
                                         - _metric(name, y[s], mv_all.predict(W[s][:, cols])))
        top = ", ".join(f"{c}: {n}" for c, n in sorted(which.items(), key=lambda t: -t[1])[:6])
        print(f"| {name} | {total} | {hits} | {top} | {_cell(change['train'])} | {_cell(change['test'])} |",
              flush=True)
    tr, te = load_wrench("trec", "train"), load_wrench("trec", "test")
    L, k = np.asarray(tr.weak_labels), tr.num_classes
    v = L[:, 41]
    fires = v >= 0
    c = int(np.unique(v[fires])[0])
    kappa, se, n = lf_kappa(L, k)
    kept = np.delete(np.arange(L.shape[1]), 41)
    mv_all, mv_kept = _fit("majority_vote", L, k), _fit("majority_vote", L[:, kept], k)
    acc = {s: (100 * float((mv_all.predict(np.asarray(d.weak_labels)) == d.labels).mean()),
               100 * float((mv_kept.predict(np.asarray(d.weak_labels)[:, kept]) == d.labels).mean()))
           for s, d in (("train", tr), ("test", te))}
    print(f"\nTREC LF 41 (votes class {c}): coverage {fires.mean():.3f}, precision {np.mean(tr.labels[fires] == c):.3f} "
          f"against a class share of {np.mean(tr.labels == c):.3f}; kappa {kappa[41]:+.3f} (se {se[41]:.3f}, "
          f"{n[41]} rows). MV with / without it: train {acc['train'][0]:.2f} / {acc['train'][1]:.2f}, "
          f"test {acc['test'][0]:.2f} / {acc['test'][1]:.2f}")


if __name__ == "__main__":
    synthetic()
    real()
