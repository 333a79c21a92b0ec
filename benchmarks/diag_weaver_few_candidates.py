"""Check (issue 17): label-free Weaver on one-judge sets with 16 candidates per problem instead of 64.

Real best-of-N data often has 8-16 candidates per problem; the suite's judge sets have 64. This script draws the
development judge sets of ``dev_weaver_guard.py`` (free-form and multiple choice, majority vote often strong), the
suite's three judge sets and two sets in the regime issue 17 reports (a weak judge with a [0, 1] score about as good
as majority vote, 4-option multiple choice) at 64 problems x 16 candidates and at 64 x 64, with the same data seeds
(8300+ by default; no other committed script uses them; ``--seed-base`` draws others), and prints per set and size:

* Select@1 of majority vote, the mean verifier and ``Weaver()`` (mean over seeds), and ``Weaver - max(MV, mean)``
  in points as ``bench_weaver_suite.py`` measures it (mean / min / seeds more than 0.5 point below);
* the guard's choices;
* ``a at bound``: the seeds whose label model fitted the count model's Beta ``a`` at its lower bound (< 0.01): the
  fit then says that the correct answer is almost never a popular one (see BENCHMARKS.md, issue 17, "Session 24").

Gold labels are used for scoring only.

    python benchmarks/diag_weaver_few_candidates.py [--seeds 8] [--sizes 16,64] [--seed-base 8300]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import warnings
from collections import Counter

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

from dev_weaver_guard import DEV

from lightning_ws.weaver.report import suite_report
from lightning_ws.weaver.suite import SUITE, GroupSpec, SetSpec, make_set


def issue_regime_sets() -> dict[str, SetSpec]:
    """4-option multiple choice, one judge x 32 draws of a [0, 1] score about as good as majority vote."""
    base = SUITE["judge_vs_majority"]
    judge = GroupSpec(0.5, copies=32, shared=1.0, answer=0.3, kind="judge_prob", name="judge")
    return {"mc4_prob_s05 (issue regime)": dataclasses.replace(base, groups=(judge,)),
            "mc4_prob_s05_ans06 (issue regime)": dataclasses.replace(
                base, groups=(dataclasses.replace(judge, answer=0.6),))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=8, help="number of data seeds (--seed-base, --seed-base + 1, ...)")
    ap.add_argument("--sizes", default="16,64", help="candidates per problem, comma-separated")
    ap.add_argument("--seed-base", type=int, default=8300,
                    help="first data seed (default 8300, the seeds of the tables in BENCHMARKS.md; session 28 "
                         "also ran 10000 with 32 seeds at 16 candidates)")
    args = ap.parse_args()
    sets = {k: v for k, v in DEV.items()}  # the development sets, then the suite's judge sets (same objects)
    sets.update(issue_regime_sets())
    print("| set | N | MV | mean verifier | Weaver | Weaver - max(MV, mean): mean / min / seeds below | guard choices | "
          "a at bound |")
    print("|---|---|---|---|---|---|---|---|")
    summary: dict[int, list[float]] = {}
    below_sets: dict[int, list[str]] = {}
    for n in (int(x) for x in args.sizes.split(",")):
        for name, spec in sets.items():
            acc, diffs, choices, bound = [], [], Counter(), 0
            for s in range(args.seeds):
                data = make_set(spec, seed=args.seed_base + s, num_candidates=n)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    rep = suite_report(data, seed=s)
                sa = rep["select_at_1"]
                acc.append((sa["majority_vote"], sa["mean_verifier"], sa["weaver"]))
                diffs.append(100 * (sa["weaver"] - max(sa["majority_vote"], sa["mean_verifier"])))
                choices[rep["weaver"]["guard"]["choice"]] += 1
                weights = rep["weaver"]["answer_model"].get("agreement_weights") or {}
                bound += int(weights.get("correct_rate_beta", [1.0])[0] < 0.01)
            m, d = np.mean(acc, axis=0), np.array(diffs)
            summary.setdefault(n, []).extend(diffs)
            if d.mean() < -0.5:
                below_sets.setdefault(n, []).append(name)
            print(f"| {name} | {n} | {m[0]:.4f} | {m[1]:.4f} | {m[2]:.4f} | {d.mean():+.2f} / {d.min():+.1f} / "
                  f"{int((d < -0.5).sum())} of {len(d)} | {dict(choices)} | {bound} of {len(d)} |", flush=True)
    for n, d in summary.items():
        a = np.array(d)
        print(f"N = {n}: all seeds {a.mean():+.2f} / {a.min():+.1f} / {int((a < -0.5).sum())} of {len(a)} below; "
              f"sets below -0.5 on average: {below_sets.get(n, [])}")


if __name__ == "__main__":
    main()
