"""Label-free ``auto`` against majority vote when one LF votes the same class on every row (session 37).

A rule that always fires with one class (a generated program with a bug, a catch-all default) carries no
information about ``Y``. Majority vote counts it on every row; the label-free selection, holding it out, scored
candidates by their agreement with it, i.e. by how often they predict its class. Since session 37
``AutoLabelModel`` ignores such columns (``fit_report_["constant_lfs"]``). This prints, per regime, ``auto - MV``
(points of accuracy; MV on every column, as a user gets it) over seeded draws: mean / min / draws more than 0.5
below, on the fit rows (transductive) and on fresh rows of the same draw (inductive), and ``auto``'s picks.

The draws come from ``lightning_ws.labelmodels.make_uninformative_lf_label_matrix``. ``--extra LF`` replaces the
constant LF by an uninformative one that is not constant, which ``auto`` does not detect: ``near`` votes class 1
on a random 95 % of the rows, ``skew`` votes 1 on a random 90 % and 0 on the rest. ``--without`` fits ``auto`` on
the matrix without column 0 (what a user who knew it was noise would do), still against majority vote over every
column.

    OMP_NUM_THREADS=1 python benchmarks/diag_constant_lf.py [--draws 30] [--first-seed 0] [--extra near|skew]
        [--without]
"""

from __future__ import annotations

import argparse
import collections
import warnings

import numpy as np

from lightning_ws.labelmodels import make_label_model, make_uninformative_lf_label_matrix


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=30)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=400, help="fit rows (the same number of fresh rows is scored)")
    ap.add_argument("--extra", default="constant", choices=["constant", "near", "skew"])
    ap.add_argument("--without", action="store_true", help="fit auto without column 0")
    args = ap.parse_args()
    c0 = 1 if args.without else 0
    print(f"column 0: {args.extra}; auto fitted {'without' if args.without else 'with'} it; MV over every column")
    print("| regime | draws | auto - MV, fit rows: mean / min / below -0.5 | fresh rows | auto picks |")
    print("|---|---|---|---|---|")
    for k, m in ((2, 3), (2, 6), (4, 6), (4, 12)):
        gains: dict[str, list[float]] = {"fit": [], "fresh": []}
        picks: collections.Counter[str] = collections.Counter()
        for s in range(args.first_seed, args.first_seed + args.draws):
            L, y = make_uninformative_lf_label_matrix(args.n, k, m, extra=args.extra, seed=s)
            fit, fresh = slice(0, args.n), slice(args.n, 2 * args.n)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # uncovered rows, the constant LF
                auto = make_label_model("auto", num_classes=k, seed=0).fit(L[fit, c0:])
                mv = make_label_model("majority_vote", num_classes=k, seed=0).fit(L[fit])
                for part, rows in (("fit", fit), ("fresh", fresh)):
                    acc = [float((auto.predict(L[rows, c0:]) == y[rows]).mean()),
                           float((mv.predict(L[rows]) == y[rows]).mean())]
                    gains[part].append(100 * (acc[0] - acc[1]))
            picks[auto.fit_report_["selected"]] += 1
        cells = [f"{np.mean(g):+.2f} / {min(g):+.2f} / {sum(x < -0.5 for x in g)}" for g in gains.values()]
        print(f"| k={k}, {m} LFs + 1 {args.extra} | {args.draws} | {cells[0]} | {cells[1]} | {dict(picks)} |")


if __name__ == "__main__":
    main()
