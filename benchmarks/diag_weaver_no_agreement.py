"""Diagnostic (issue 17): label-free Weaver where no two candidates of a problem share an answer.

Data without answer extraction (code, free-form responses, the preference pairs of
``bench_weaver_preferences.py``) gives Weaver no agreement signal: every candidate is an answer of its own, majority
vote has nothing to count, and the label model can only weight the verifiers. The suite has no such set. This script
draws every suite set, replaces each candidate's answer with an answer of its own (correctness and verifier scores
unchanged), and prints per set, over ``--seeds`` data seeds (``--first-seed``: 100, 101, ...; 100-102, 200-202 and
300-302 are used by no other script), the Select@1 of majority vote (here the first candidate), the mean verifier,
Weaver's pooled mean, its label model and ``Weaver()``, ``Weaver - max(MV, mean verifier)`` in points (mean / min /
seeds more than 0.5 below), the same for ``Weaver`` without the guard's split test (``guard_split=False``, the
default until session 35), the label model's mean implied source AUROC and the guard's choices. Gold labels score
the rows only.

    OMP_NUM_THREADS=1 python benchmarks/diag_weaver_no_agreement.py [--seeds 3] [--first-seed 100] [--problems 300]
        [--candidates 16]
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_weaver_preferences import _cell

from lightning_ws.weaver import Weaver
from lightning_ws.weaver.data import VerificationData
from lightning_ws.weaver.report import suite_baselines
from lightning_ws.weaver.suite import SUITE, make_suite_set


def unique_answers(data: VerificationData) -> VerificationData:
    """``data`` with every candidate its own answer (the agreement signal removed)."""
    P, N = data.num_problems, data.num_candidates
    return VerificationData(data.scores, [[f"c{i}" for i in range(N)] for _ in range(P)], data.verifier_names,
                            data.verifier_kinds, correct=data.correct)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=100, help="first data seed (default 100)")
    ap.add_argument("--problems", type=int, default=300)
    ap.add_argument("--candidates", type=int, default=16)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    print(f"{args.problems} problems x {args.candidates} candidates, every candidate its own answer; data seeds "
          f"{args.first_seed}-{args.first_seed + args.seeds - 1}")
    print("| set | MV (first) | mean verifier | pooled mean | label model | Weaver | Weaver - max(MV, mean): mean / min "
          "/ seeds below | the same without the split test | mean implied AUROC | guard choices |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in SUITE:
        acc, diffs, diffs_off, aucs, choices = [], [], [], [], Counter()
        for s in range(args.seeds):
            d = unique_answers(make_suite_set(name, num_problems=args.problems, num_candidates=args.candidates,
                                              seed=args.first_seed + s))
            y, P = d.correct, d.num_problems
            base = suite_baselines(d)[0]
            w = Weaver(seed=s).fit(d, "label_free")
            a = {k: float(y[np.arange(P), w.select_with(d, k)].mean()) for k in ("pooled_mean", "label_model")}
            weaver = float(y[np.arange(P), w.select(d)].mean())
            acc.append((base["majority_vote"], base["mean_verifier"], a["pooled_mean"], a["label_model"], weaver))
            diffs.append(100 * (weaver - max(base["majority_vote"], base["mean_verifier"])))
            off = Weaver(seed=s, guard_split=False).fit(d, "label_free").select(d)
            diffs_off.append(100 * (float(y[np.arange(P), off].mean()) - max(base["majority_vote"],
                                                                           base["mean_verifier"])))
            aucs.append(float(np.mean(w.label_model_.source_auroc())))
            choices[w.report_["guard"]["choice"]] += 1
        m = np.mean(acc, axis=0)
        print(f"| {name} | {m[0]:.4f} | {m[1]:.4f} | {m[2]:.4f} | {m[3]:.4f} | {m[4]:.4f} | {_cell(diffs)} | "
              f"{_cell(diffs_off)} | {np.mean(aucs):.2f} | {dict(choices)} |", flush=True)


if __name__ == "__main__":
    main()
