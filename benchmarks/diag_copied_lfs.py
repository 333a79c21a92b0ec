"""Check (issue 16): does the default label model stay at or above majority vote when one LF comes twice? (session 39)

Copied rules are common in real LF sets (a rule pasted twice, keyword variants that fire on nearly the same rows). A
conditional-independence model reads two copies that always agree as two nearly perfect witnesses. For every LF of
the shipped WRENCH sets (YouTube, SMS, TREC) this appends a copy of it to the train label matrix - an exact copy, and
one with 20 % of the copy's votes removed (seeded) - fits ``make_label_model("auto")`` and majority vote on the new
matrix, and prints both on the train split (transductive; SMS in F1 of spam, the others in accuracy) and on the test
split (the test matrix gets the same copy), with ``auto``'s pick and why a pick was rejected. Majority vote on the
matrix with the copy is the baseline: the copy is part of the user's LF set. The last line per set counts the
matrices where ``auto`` is more than 0.5 point below majority vote.

Before session 39 a copy of YouTube's ``keyword_please`` or ``keyword_my`` made MomentMatching / Dawid-Skene raw
make spam "the rows where the copied rule fires" and pass the held-out selection: 7.5-9.0 points below majority vote
on train (``AutoLabelModel._reject_copy_collapse`` now rejects such picks).

    OMP_NUM_THREADS=1 python benchmarks/diag_copied_lfs.py [--sets youtube,sms,trec] [--thin 0.2]
"""

from __future__ import annotations

import argparse
import os
import warnings

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

from lightning_ws.data import load_wrench
from lightning_ws.labelmodels import make_label_model
from lightning_ws.labelmodels.base import score_predictions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="youtube,sms,trec")
    ap.add_argument("--thin", type=float, default=0.2, help="share of the second copy's votes removed")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    print("| set | copied LF | votes removed from the copy | MV train | auto train | auto - MV train | MV test | "
          "auto test | auto - MV test | auto's pick | rejected |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.sets.split(","):
        tr, te = load_wrench(name, "train"), load_wrench(name, "test")
        k = tr.num_classes
        metric = "f1" if name == "sms" else "accuracy"
        gains: dict[str, list[float]] = {"train": [], "test": []}
        for j in range(tr.weak_labels.shape[1]):
            for thin in (0.0, args.thin):
                rng = np.random.default_rng([39301, j])
                mats = []
                for split in (tr, te):
                    copy = split.weak_labels[:, j].copy()
                    if thin:
                        fired = np.flatnonzero(copy != -1)
                        copy[rng.choice(fired, int(thin * len(fired)), replace=False)] = -1
                    mats.append(np.hstack([split.weak_labels, copy[:, None]]))
                mv = make_label_model("majority_vote", seed=0, num_classes=k).fit(mats[0])
                auto = make_label_model("auto", seed=0, num_classes=k).fit(mats[0])
                row = []
                for split, M, key in ((tr, mats[0], "train"), (te, mats[1], "test")):
                    b = 100 * score_predictions(split.labels, mv.predict(M), metric)
                    a = 100 * score_predictions(split.labels, auto.predict(M), metric)
                    gains[key].append(a - b)
                    row += [f"{b:.2f}", f"{a:.2f}", f"{a - b:+.2f}"]
                rejected = auto.fit_report_["selection"].get("rejected", {})
                why = f"{rejected['pick']}: {rejected['reason']}" if rejected else ""
                print(f"| {name} | {j} {tr.lf_names[j]} | {thin:.0%} | " + " | ".join(row)
                      + f" | {auto.selected} | {why} |", flush=True)
        for key, g in gains.items():
            g_arr = np.asarray(g)
            print(f"{name} {key}: auto - MV mean {g_arr.mean():+.2f}, min {g_arr.min():+.2f}, "
                  f"{int((g_arr < -0.5).sum())} of {len(g_arr)} matrices more than 0.5 below", flush=True)


if __name__ == "__main__":
    main()
