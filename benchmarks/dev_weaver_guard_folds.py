"""Development check (issue 17): the number of cross-fitting folds of ``Weaver``'s guard, on development data only.

``guard_fold_count(P)`` (session 27) splits the problems into ``512 // P`` folds clipped to 2..8 (8 at 64 problems);
before, the guard always used two halves. This script fixes the fold count for the run (``--folds 2|4|8``, or
``auto`` for the shipped rule) and prints, per set, ``Weaver() - max(majority vote, mean verifier)`` in points as
``bench_weaver_suite.py`` measures it (mean / min / seeds more than 0.5 point below) on the parts of
``dev_weaver_rho_check.py`` (``n16a`` / ``n16b``: ten judge sets at 64 problems x 16 candidates, data seeds
9600-9611 / 9700-9711; ``n64``: the same sets at 64 x 64, seeds 9600-9609; ``multi``: seven multi-verifier suite sets,
500 problems, where every setting is the 2-fold guard). Gold labels are used for scoring only. About 15 minutes per
part and setting with 8 folds on one core.

    python benchmarks/dev_weaver_guard_folds.py [--folds auto|2|4|8] [--parts n16a,n16b]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from dev_weaver_count_check import print_gaps
from dev_weaver_rho_check import jobs

import lightning_ws.weaver.select as select_mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", default="auto", help="'auto' (the shipped guard_fold_count) or a fixed number >= 2")
    ap.add_argument("--parts", default="n16a,n16b")
    args = ap.parse_args()
    if args.folds != "auto":
        k = int(args.folds)
        if k < 2:
            ap.error("--folds must be 'auto' or at least 2")
        select_mod.guard_fold_count = lambda num_problems: k  # Weaver's guard looks the function up at fit time
    print_gaps("guard folds", args.folds, jobs(args.parts.split(",")))


if __name__ == "__main__":
    main()
