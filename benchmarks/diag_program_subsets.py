"""Diagnostic (issue 16): ``auto`` on random subsets of the real LLM-written labeling programs shipped here.

The recorded programs for WRENCH YouTube and SMS (``lightning_ws.programs.recorded_programs``: the ScriptoriumWS
prompt tiers and the Alchemist modes, 50 programs per task) vote both classes and abstain where they are unsure.
``bench_programs.py --section label-model-tiers`` scores each prompt tier as one LF set; this draws random subsets of
4, 8 and 12 of all the programs of a task (``--draws`` per size, seeded per draw), so the matrices mix tiers and
sizes the tiers do not cover. Per subset, label-free fits on the train matrix: majority vote, ``auto`` without the
within-strata tests of session 45 (``within_strata=False``, the rule of sessions 43-44) and ``auto`` (default).
Metric as in ``label-model-tiers`` (``lightning_ws.programs.apply.label_metrics``: YouTube accuracy, SMS F1 of spam,
in points) on all rows of train (transductive), valid and test.

It prints, per task and subset size: ``auto - MV`` mean / min / subsets more than 0.5 point below, per split, for
both ``auto`` variants, and the default's picks; then the subsets whose pick differs between the two.

Run: ``OMP_NUM_THREADS=1 python benchmarks/diag_program_subsets.py`` (about 20 s on 2 CPU cores once the programs'
votes are cached under ``runs/program_cache``).
"""

from __future__ import annotations

import argparse
import collections
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_programs import _program_votes

from lightning_ws.data import load_wrench
from lightning_ws.labelmodels import make_label_model
from lightning_ws.programs.apply import label_metrics
from lightning_ws.programs.sandbox import ProgramSandbox

SPLITS = ("train", "valid", "test")
SIZES = (4, 8, 12)
VARIANTS = {"auto, within_strata=False": {"within_strata": False}, "auto": {}}


def subset_columns(m: int, size: int, draw: int) -> np.ndarray:
    """The sorted program columns of subset ``draw`` with ``size`` of the ``m`` programs."""
    return np.sort(np.random.default_rng([4545, draw, size]).choice(m, size, replace=False))


def _cell(x: list[float]) -> str:
    return f"{np.mean(x):+.2f} / {min(x):+.2f} / {sum(v < -0.5 for v in x)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=20, help="subsets per task and size")
    ap.add_argument("--first-draw", type=int, default=0)
    args = ap.parse_args()
    draws = range(args.first_draw, args.first_draw + args.draws)
    print(f"Random subsets of the recorded programs (draws {draws.start}-{draws.stop - 1} per size); label-free fits "
          "on train. Cells: auto - MV in points, mean / min / subsets more than 0.5 below (train; valid; test).")
    print("| task | programs kept (of all) | subsets | " + " | ".join(VARIANTS) + " | auto picks |")
    print("|---|---|---|" + "---|" * len(VARIANTS) + "---|")
    changed: list[str] = []
    totals = {v: {s: 0 for s in SPLITS} for v in VARIANTS}
    n_total = 0
    with ProgramSandbox(workers=2) as sb:
        for task in ("youtube", "sms"):
            S = {s: load_wrench(task, s) for s in SPLITS}
            y = {s: np.asarray(S[s].labels) for s in SPLITS}
            metric = "f1" if task == "sms" else "acc"
            _, A = _program_votes(task, sb, S)
            m = A["train"].shape[1]
            for size in SIZES:
                gains = {v: {s: [] for s in SPLITS} for v in VARIANTS}
                picks: collections.Counter[str] = collections.Counter()
                for d in draws:
                    cols = subset_columns(m, size, d)
                    L = {s: A[s][:, cols] for s in SPLITS}
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        mv = make_label_model("majority_vote", num_classes=2, seed=0).fit(L["train"])
                        base = {s: label_metrics(mv.predict_proba(L[s]), y[s])[metric] for s in SPLITS}
                        sel = {}
                        for v, kw in VARIANTS.items():
                            a = make_label_model("auto", num_classes=2, seed=0, **kw).fit(L["train"])
                            sel[v] = a.selected
                            for s in SPLITS:
                                g = 100 * (label_metrics(a.predict_proba(L[s]), y[s])[metric] - base[s])
                                gains[v][s].append(g)
                                totals[v][s] += g < -0.5
                    picks[sel["auto"]] += 1
                    n_total += 1
                    if len(set(sel.values())) > 1:
                        changed.append(f"| {task} | {size} | {d} | " + " | ".join(
                            f"{sel[v]}: " + " / ".join(f"{gains[v][s][-1]:+.2f}" for s in SPLITS) for v in VARIANTS)
                            + " |")
                cells = ["; ".join(_cell(gains[v][s]) for s in SPLITS) for v in VARIANTS]
                print(f"| {task} | {size} of {m} | {len(draws)} | " + " | ".join(cells) + f" | {dict(picks)} |",
                      flush=True)
    for v in VARIANTS:
        print(f"{v}: subsets more than 0.5 below MV, of {n_total}: "
              + ", ".join(f"{s} {totals[v][s]}" for s in SPLITS))
    print("\nSubsets whose pick differs (auto - MV train / valid / test):")
    print("| task | programs | draw | " + " | ".join(VARIANTS) + " |")
    print("|---|---|---|" + "---|" * len(VARIANTS))
    print("\n".join(changed))


if __name__ == "__main__":
    main()
