"""Check (issue 17): Weaver on variants of the suite's repeated-judge sets - draws that differ, fewer candidates,
fewer problems.

The suite's judge sets (``lightning_ws.weaver.suite``: 64 problems x 64 candidates x 32 draws of one judge) draw the
copies with ``shared=1``: the draws of a candidate share their whole latent score, and for ``judge_prob`` (a [0, 1]
score) the 32 columns are identical. Real data also come with per-draw noise, with 8-16 candidates per problem, or
with a few dozen problems. This script redraws ``judge_draws``, ``judge_draws_prob`` and ``judge_vs_majority`` as

* ``shared`` = 0.9, 0.7, 0.5 (per-draw noise of variance 0.1, 0.3, 0.5 on the latent score; ``--part noise``);
* 64 problems x 16 candidates, and 32 problems x 64 candidates (``--part sizes``);
* a judge more lenient on some problems than on others: ``GroupSpec.leniency`` = 0.3, 0.6, 1.0 (a per-problem shift
  of that standard deviation on the judge's latent score; ``--part leniency``, data seeds 7500+, second column
  ``problem_offsets=False``, the default before session 21);

everything else as in the suite, data seeds 7300+ (noise), 7400+ (sizes) and 7500+ (leniency), used by no other
script, and prints per
variant ``Weaver() - max(majority vote, mean verifier)`` in points as ``bench_weaver_suite.py`` measures it
(:func:`~lightning_ws.weaver.report.suite_report`; mean / min / seeds more than 0.5 point below), the guard's choices
and the number of sources after pooling the verifier groups. Column ``session-19 check``: the same fits with the
guard's second opinion as in session 19, when the check's evaluator alone decided whether majority vote or the pooled
mean is its fallback (``bench_weaver_suite.check_rule_before_session20``).

    python benchmarks/diag_weaver_judge_variants.py [--part noise|sizes|leniency|all] [--seeds 8] [--size-seeds 12]
        [--leniency-seeds 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import os

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

from bench_weaver_suite import check_rule_before_session20

from lightning_ws.weaver.report import suite_report
from lightning_ws.weaver.suite import SUITE, make_set


def _diff(data, seed: int, kwargs: dict | None = None) -> tuple[float, dict]:
    """``Weaver(seed=seed, **kwargs) - max(majority vote, mean verifier)`` in points, as the suite measures it, and
    the report."""
    rep = suite_report(data, seed=seed, weaver_kwargs=kwargs)
    sa = rep["select_at_1"]
    return 100 * (sa["weaver"] - max(sa["majority_vote"], sa["mean_verifier"])), rep["weaver"]


def _cell(d: list[float]) -> str:
    a = np.array(d)
    return f"{a.mean():+.2f} / {a.min():+.1f} / {int((a < -0.5).sum())} of {len(a)}"


def row(name: str, label: str, spec, seeds: int, base: int, compare: str = "session19", **sizes) -> None:
    now, old, choices, groups = [], [], [], []
    for s in range(seeds):
        data = make_set(spec, seed=base + s, **sizes)
        diff, report = _diff(data, s)
        now.append(diff)
        choices.append(report["guard"]["choice"])
        groups.append(report["verifier_groups"]["n_sources"])
        if compare == "no_offsets":
            old.append(_diff(data, s, {"problem_offsets": False})[0])
            continue
        with check_rule_before_session20():
            old.append(_diff(data, s)[0])
    counts = {c: choices.count(c) for c in dict.fromkeys(choices)}
    print(f"| {name} | {label} | {_cell(now)} | {_cell(old)} | {counts} | {sorted(set(groups))} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", default="all", choices=("noise", "sizes", "leniency", "all"))
    ap.add_argument("--seeds", type=int, default=8, help="noise variants: data seeds 7300 + i")
    ap.add_argument("--size-seeds", type=int, default=12, help="size variants: data seeds 7400 + i")
    ap.add_argument("--leniency-seeds", type=int, default=8, help="leniency variants: data seeds 7500 + i")
    args = ap.parse_args()
    print("Cells: Weaver - max(MV, mean verifier), points: mean / min / seeds more than 0.5 below")
    if args.part != "leniency":
        print("| set | variant | Weaver() | session-19 check | guard choices (Weaver()) | sources |")
        print("|---|---|---|---|---|---|")
    names = ("judge_draws", "judge_draws_prob", "judge_vs_majority")
    if args.part in ("noise", "all"):
        for name in names:
            spec = SUITE[name]
            for shared in (1.0, 0.9, 0.7, 0.5):
                variant = dataclasses.replace(spec, groups=(dataclasses.replace(spec.groups[0], shared=shared),))
                row(name, f"shared={shared}", variant, args.seeds, 7300)
    if args.part in ("sizes", "all"):
        for name in names:
            for label, sizes in (("64 x 16", {"num_candidates": 16}), ("32 x 64", {"num_problems": 32})):
                row(name, label, SUITE[name], args.size_seeds, 7400, **sizes)
    if args.part in ("leniency", "all"):
        print()
        print("Leniency: second column = the same fits with problem_offsets=False (before session 21)")
        print("| set | variant | Weaver() | problem_offsets=False | guard choices (Weaver()) | sources |")
        print("|---|---|---|---|---|---|")
        for name in names:
            spec = SUITE[name]
            for lam in (0.3, 0.6, 1.0):
                variant = dataclasses.replace(spec, groups=(dataclasses.replace(spec.groups[0], leniency=lam),))
                row(name, f"leniency={lam}", variant, args.leniency_seeds, 7500, compare="no_offsets")


if __name__ == "__main__":
    main()
