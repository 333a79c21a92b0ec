"""Check (issue 17): does label-free ``Weaver()`` depend on the order of the verifier columns? (session 38)

The same verifiers in another column order are the same data; a fit should give the same scores and picks. For every
suite set (64 problems x 16 candidates, two data seeds) this fits ``Weaver()`` on the data as drawn and on three
shuffles of its verifier columns and prints Select@1 of each fit and the largest score difference from the first.

Before session 38 the judge sets (32 draws of one judge pooled into one source) differed by up to 0.34 in score and
4.7 points of Select@1: the pooled mean summed its members in column order, equal averages then differed in the last
bit under one order and not another, and the answer-level model's bins split them. The sets without pooled groups
differ by EM's stopping tolerance (1e-7 to 1e-2 in score; the same picks).

    OMP_NUM_THREADS=1 python benchmarks/diag_weaver_column_order.py [--seeds 38601,38602] [--shuffles 3]
"""

from __future__ import annotations

import argparse
import os
import warnings

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

from lightning_ws.weaver import VerificationData, Weaver, make_suite_set
from lightning_ws.weaver.suite import SUITE


def shuffled(d: VerificationData, order: np.ndarray) -> VerificationData:
    """``d`` with its verifier columns in ``order``."""
    return VerificationData(d.scores[:, :, order], d.answers, [d.verifier_names[v] for v in order],
                            [d.verifier_kinds[v] for v in order], d.correct)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="38601,38602")
    ap.add_argument("--shuffles", type=int, default=3)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    print("| set | data seed | V | Select@1 as drawn | Select@1 per shuffle | max score difference |")
    print("|---|---|---|---|---|---|")
    for name in SUITE:
        for seed in (int(s) for s in args.seeds.split(",")):
            d = make_suite_set(name, num_problems=64, num_candidates=16, seed=seed)
            rows = np.arange(d.num_problems)
            w = Weaver().fit(d)
            ref = w.score(d)
            accs, diffs = [], []
            for t in range(args.shuffles):
                order = np.random.default_rng([38603, seed, t]).permutation(d.num_verifiers)
                ds = shuffled(d, order)
                ws = Weaver().fit(ds)
                accs.append(100 * d.correct[rows, ws.select(ds)].mean())
                diffs.append(float(np.nanmax(np.abs(ws.score(ds) - ref))))
            print(f"| {name} | {seed} | {d.num_verifiers} | {100 * d.correct[rows, w.select(d)].mean():.2f} | "
                  f"{' / '.join(f'{a:.2f}' for a in accs)} | {max(diffs):.2e} |", flush=True)


if __name__ == "__main__":
    main()
