"""Label-free ``auto`` when LFs that vote both classes abstain together on the same rows (issue 16, session 44).

LLM-written labeling programs (``lightning_ws.programs``) and keyword rules with an "unsure" branch vote both classes
and abstain on the rows they find unclear, and every LF finds the same rows unclear. Each draw here has ``n`` binary
rows, a spam-like minority class (15 %), and a latent "unclear" flag per row, set with probability ``z0`` on class 0
rows and ``z1`` on class 1 rows and shared by every LF. Each of ``m`` LFs abstains on an unclear row with probability
0.5-0.8 (0.02-0.15 on a clear row) and votes with accuracy 0.70-0.85 there (0.93-0.99 on a clear row). Given the class
the LFs' abstains are therefore dependent (through the flag), which Dawid-Skene with abstains as a category
(``abstain="category"``, the default and ``auto``'s candidate) reads as independent evidence.

It prints, per regime, accuracy minus majority vote's (points, on the fitted rows): mean / min / draws more than 0.5
below, for Dawid-Skene (abstains as a category), Dawid-Skene with abstains ignored, MomentMatching, ``auto`` without
the within-strata tests of session 45 (``within_strata=False``, the rule of sessions 43-44) and ``auto`` (default),
and the default ``auto``'s picks. ``z0 = z1 = 0`` is the control: abstains independent of each other given the
class.

    OMP_NUM_THREADS=1 python benchmarks/diag_shared_abstains.py [--draws 5] [--first-seed 0] [--n 4000]
"""

from __future__ import annotations

import argparse
import collections
import warnings

import numpy as np

from lightning_ws.labelmodels import DawidSkene, make_label_model, make_shared_abstain_label_matrix

REGIMES = ((0.0, 0.0), (0.3, 0.6), (0.4, 0.4), (0.6, 0.3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=4000)
    args = ap.parse_args()
    models = {"Dawid-Skene": lambda: DawidSkene(2, seed=0),
              "Dawid-Skene, abstains ignored": lambda: DawidSkene(2, abstain="ignore", seed=0),
              "MomentMatching": lambda: make_label_model("moment_matching", num_classes=2, seed=0),
              "auto, within_strata=False": lambda: make_label_model("auto", num_classes=2, seed=0,
                                                                    within_strata=False),
              "auto": lambda: make_label_model("auto", num_classes=2, seed=0)}
    print(f"{args.draws} draws per regime (seeds {args.first_seed}-{args.first_seed + args.draws - 1}), n = {args.n}; "
          f"cells: accuracy - majority vote's, mean / min / draws below -0.5 (points, fitted rows)")
    print("| unclear rate (class 0, class 1) | LFs | MV accuracy | " + " | ".join(models) + " | auto picks |")
    print("|---|---|---|" + "---|" * len(models) + "---|")
    for m in (6, 10):
        for z0, z1 in REGIMES:
            gains: dict[str, list[float]] = {name: [] for name in models}
            mv_acc, picks = [], collections.Counter()
            for s in range(args.first_seed, args.first_seed + args.draws):
                L, y = make_shared_abstain_label_matrix(args.n, m, z0, z1, seed=s)
                mv = float((make_label_model("majority_vote", num_classes=2, seed=0).fit(L).predict(L) == y).mean())
                mv_acc.append(100 * mv)
                for name, make in models.items():
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        model = make().fit(L)
                    gains[name].append(100 * (float((model.predict(L) == y).mean()) - mv))
                    if name == "auto":
                        picks[model.fit_report_["selected"]] += 1
            cells = [f"{np.mean(g):+.2f} / {min(g):+.2f} / {sum(x < -0.5 for x in g)}" for g in gains.values()]
            print(f"| ({z0:.1f}, {z1:.1f}) | {m} | {np.mean(mv_acc):.2f} | " + " | ".join(cells)
                  + f" | {dict(sorted(picks.items()))} |", flush=True)


if __name__ == "__main__":
    main()
