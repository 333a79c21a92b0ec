"""Check (issue 17): Weaver on variants of the suite's repeated-judge sets - draws that differ, fewer candidates,
fewer problems.

The suite's judge sets (``lightning_ws.weaver.suite``: 64 problems x 64 candidates x 32 draws of one judge) draw the
copies with ``shared=1``: the draws of a candidate share their whole latent score, and for ``judge_prob`` (a [0, 1]
score) the 32 columns are identical. Real data also come with per-draw noise, with 8-16 candidates per problem, or
with a few dozen problems. This script redraws ``judge_draws``, ``judge_draws_prob`` and ``judge_vs_majority`` as

* ``shared`` = 0.9, 0.7, 0.5 (per-draw noise of variance 0.1, 0.3, 0.5 on the latent score; ``--part noise``);
* 64 problems x 16 candidates, and 32 problems x 64 candidates (``--part sizes``);

everything else as in the suite, data seeds 7300+ (noise) and 7400+ (sizes), used by no other script, and prints per
variant ``Weaver() - max(majority vote, pooled mean)`` in points (mean / min / seeds more than 0.5 point below), the
guard's choices and the number of verifier groups found. Column ``session-19 check``: the same fits with the guard's
second opinion as in session 19, when the check's evaluator alone decided whether majority vote or the pooled mean is
its fallback (replayed by patching ``Weaver._dependence_check``).

    python benchmarks/diag_weaver_judge_variants.py [--part noise|sizes|all] [--seeds 8] [--size-seeds 12]
"""

from __future__ import annotations

import argparse
import dataclasses
import os

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

from lightning_ws.weaver import Weaver
from lightning_ws.weaver.select import _mv_pick, select_candidates
from lightning_ws.weaver.suite import SUITE, make_set

_ORIGINAL_CHECK = Weaver._dependence_check


def _session19_check(self, ids, pooled, folds, fold_picks, fallback="majority_vote"):
    return _ORIGINAL_CHECK(self, ids, pooled, folds, fold_picks)  # the check's evaluator alone ranks MV vs PM


def _diff(w: Weaver, data) -> float:
    _, pm = w._sources(data)
    ids, y, P = data.answer_ids(), data.correct, data.num_problems
    mv = y[np.arange(P), _mv_pick(ids, pm)].mean()
    pmean = y[np.arange(P), select_candidates(pm, tie_break="first")[0]].mean()
    return float(100 * (y[np.arange(P), w.select(data)].mean() - max(mv, pmean)))


def _cell(d: list[float]) -> str:
    a = np.array(d)
    return f"{a.mean():+.2f} / {a.min():+.1f} / {int((a < -0.5).sum())} of {len(a)}"


def row(name: str, label: str, spec, seeds: int, base: int, **sizes) -> None:
    now, old, choices, groups = [], [], [], []
    for s in range(seeds):
        data = make_set(spec, seed=base + s, **sizes)
        w = Weaver(seed=s).fit(data, "label_free")
        now.append(_diff(w, data))
        choices.append(w.report_["guard"]["choice"])
        groups.append(len(w.groups_))
        Weaver._dependence_check = _session19_check
        try:
            old.append(_diff(Weaver(seed=s).fit(data, "label_free"), data))
        finally:
            Weaver._dependence_check = _ORIGINAL_CHECK
    counts = {c: choices.count(c) for c in dict.fromkeys(choices)}
    print(f"| {name} | {label} | {_cell(now)} | {_cell(old)} | {counts} | {sorted(set(groups))} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", default="all", choices=("noise", "sizes", "all"))
    ap.add_argument("--seeds", type=int, default=8, help="noise variants: data seeds 7300 + i")
    ap.add_argument("--size-seeds", type=int, default=12, help="size variants: data seeds 7400 + i")
    args = ap.parse_args()
    print("Cells: Weaver - max(MV, pooled mean), points: mean / min / seeds more than 0.5 below")
    print("| set | variant | Weaver() | session-19 check | guard choices (Weaver()) | groups |")
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


if __name__ == "__main__":
    main()
