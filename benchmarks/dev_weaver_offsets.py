"""Check (issue 17, session 21): what the per-problem offsets (``Weaver(problem_offsets="auto")``, the default since
session 21) cost or gain on sets *without* a per-problem shift.

Runs the shipped Weaver (guard included) with and without ``problem_offsets`` through
:func:`~lightning_ws.weaver.report.suite_report` on the development judge sets of ``dev_weaver_guard.py`` (data seeds
7000+) and on the suite's sets other than the judge sets (data seeds 7000+; the suite's own seeds are 0+), and prints
per set ``Weaver - max(majority vote, mean verifier)`` in points (mean / min / seeds more than 0.5 point below), the
largest estimated shift variance ``tau2`` over the sources (``report_["problem_offsets"]``) and the fit + select
time. Sets with a shift are in ``diag_weaver_judge_variants.py --part leniency``.

    python benchmarks/dev_weaver_offsets.py [--dev-seeds 6] [--suite-seeds 3]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

from dev_weaver_guard import DEV

from lightning_ws.weaver.report import suite_report
from lightning_ws.weaver.suite import SUITE, make_set


def _one(data, seed: int) -> tuple[float, float, float, float, float]:
    out = []
    for kw in ({}, {"problem_offsets": False}):
        t0 = time.perf_counter()
        rep = suite_report(data, seed=seed, weaver_kwargs=kw)
        out.append((rep, time.perf_counter() - t0))
    (on, t_on), (off, t_off) = out
    base = max(on["select_at_1"]["majority_vote"], on["select_at_1"]["mean_verifier"])
    tau2 = max(v["tau2"] for v in off["weaver"]["problem_offsets"]["per_source"].values())
    return (100 * (on["select_at_1"]["weaver"] - base), 100 * (off["select_at_1"]["weaver"] - base), tau2, t_on,
            t_off)


def _cell(d: np.ndarray) -> str:
    return f"{d.mean():+.2f} / {d.min():+.1f} / {int((d < -0.5).sum())}"


def block(title: str, sets: dict, seeds: int) -> None:
    print(f"\n{title}, data seeds 7000-{7000 + seeds - 1}: mean / min / seeds below -0.5 point of Weaver - max(MV, "
          "mean verifier), points")
    print("| set | Weaver() | problem_offsets=False | tau2 (max over sources; per seed) | fit s: default / off |")
    print("|---|---|---|---|---|")
    rows = []
    for name, spec in sets.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = np.array([_one(make_set(spec, seed=7000 + s), s) for s in range(seeds)])
        rows.append(a)
        print(f"| {name} | {_cell(a[:, 0])} | {_cell(a[:, 1])} | {np.round(a[:, 2], 2).tolist()} | "
              f"{a[:, 3].mean():.2f} / {a[:, 4].mean():.2f} |", flush=True)
    a = np.concatenate(rows)
    print(f"| all | {_cell(a[:, 0])} of {len(a)} | {_cell(a[:, 1])} of {len(a)} | | |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dev-seeds", type=int, default=6)
    ap.add_argument("--suite-seeds", type=int, default=3)
    args = ap.parse_args()
    block("Development judge sets (dev_weaver_guard.DEV)", DEV, args.dev_seeds)
    block("Suite sets other than the judge sets", {k: v for k, v in SUITE.items() if not k.startswith("judge")},
          args.suite_seeds)


if __name__ == "__main__":
    main()
