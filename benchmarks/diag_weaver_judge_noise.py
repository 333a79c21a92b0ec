"""Check (issue 17): Weaver on repeated judge draws whose draws differ, not only the judge's verdict sampling.

The suite's judge sets (``lightning_ws.weaver.suite``) draw 32 copies of one judge with ``shared=1``: the draws of a
candidate share their whole latent score, and for ``judge_prob`` (a [0, 1] score) the 32 columns are then identical.
Real sampled judge scores also differ from draw to draw. This script redraws ``judge_draws_prob`` and
``judge_vs_majority`` with ``shared`` = 0.9, 0.7 and 0.5 (per-draw noise of variance 0.1, 0.3, 0.5 on the latent
score), everything else as in the suite, and prints, per variant, ``Weaver() - max(majority vote, pooled mean)`` in
points (mean / min / seeds more than 0.5 point below), the guard's choices and the verifier groups found. Data seeds
7300+ (used by no other script). Run: ``python benchmarks/diag_weaver_judge_noise.py [--seeds 8]`` (about 1 minute).
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=8, help="data seeds 7300 + i")
    args = ap.parse_args()
    print("| set | shared | Weaver - max(MV, pooled mean): mean / min / seeds below -0.5 | guard choices | groups |")
    print("|---|---|---|---|---|")
    for name in ("judge_draws_prob", "judge_vs_majority"):
        spec = SUITE[name]
        for shared in (1.0, 0.9, 0.7, 0.5):
            variant = dataclasses.replace(spec, groups=(dataclasses.replace(spec.groups[0], shared=shared),))
            diffs, choices, groups = [], [], []
            for s in range(args.seeds):
                data = make_set(variant, seed=7300 + s)
                w = Weaver(seed=s).fit(data, "label_free")
                _, pm = w._sources(data)
                ids, y, P = data.answer_ids(), data.correct, data.num_problems
                mv = y[np.arange(P), _mv_pick(ids, pm)].mean()
                pmean = y[np.arange(P), select_candidates(pm, tie_break="first")[0]].mean()
                diffs.append(100 * (y[np.arange(P), w.select(data)].mean() - max(mv, pmean)))
                choices.append(w.report_["guard"]["choice"])
                groups.append(len(w.groups_))
            d = np.array(diffs)
            counts = {c: choices.count(c) for c in dict.fromkeys(choices)}
            print(f"| {name} | {shared} | {d.mean():+.2f} / {d.min():+.1f} / {int((d < -0.5).sum())} of {len(d)} | "
                  f"{counts} | {sorted(set(groups))} |", flush=True)


if __name__ == "__main__":
    main()
