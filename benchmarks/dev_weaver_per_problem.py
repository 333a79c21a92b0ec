"""Development check (issue 17): at 64 problems x 16 candidates, can Weaver mix its selectors per problem, and does
its guard's estimate track the label model's true gain?

Fits ``Weaver(seed=s)`` label-free once per set and data seed (the 15 judge sets of ``dev_weaver_guard_z.py``) and
records, per problem, whether the picks of its three selectors (label model, pooled mean, majority vote) are
correct, and the answer counts of the two most frequent answers. Then:

1. **Per-problem rules**, replayed without refitting: where the guard chose the label model, take majority vote's
   pick on the problems whose majority is clear (the top answer leads the second by at least ``d`` candidates, or
   holds at least a share ``f`` of the answered candidates); where the guard chose majority vote, take the label
   model's pick on the problems whose majority is close (lead below ``d``). Each row prints ``Weaver - max(MV, mean
   verifier)`` in points as ``bench_weaver_suite.py`` measures it (all fits: mean / min / fits more than 0.5 below;
   the sets below -0.5 on average).
2. **The guard's estimate against the truth**, per set: the true and the estimated accuracy (the guard's evaluator,
   lowest over its plausible solutions) of the label model and of majority vote, and the correlation over seeds of
   the estimated and the true gain of the label model over majority vote.

Gold labels score only. ``python benchmarks/dev_weaver_per_problem.py [--seed-base 10000] [--seeds 16] [--jobs 2]``
(about 10 minutes with 2 jobs on 2 CPU cores for 16 seeds).
"""

from __future__ import annotations

import argparse
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

from dev_weaver_guard import DEV
from dev_weaver_guard_z import SELECTORS, summary
from diag_weaver_few_candidates import issue_regime_sets

from lightning_ws.weaver import Weaver
from lightning_ws.weaver.report import suite_baselines
from lightning_ws.weaver.suite import make_set


def _record(task: tuple[str, dict[str, Any], int, int, int]) -> dict[str, Any]:
    name, spec, data_seed, weaver_seed, num_candidates = task
    data = make_set(spec, seed=data_seed, num_candidates=num_candidates)
    y, P = data.require_labels("dev_weaver_per_problem"), data.num_problems
    rows = np.arange(P)
    base = suite_baselines(data)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = Weaver(seed=weaver_seed).fit(data, "label_free")
    ids = data.answer_ids()
    top2 = np.zeros((P, 3), dtype=np.int64)  # count of the top answer, of the second, answered candidates
    for p in range(P):
        answered = ids[p][ids[p] >= 0]
        counts = np.sort(np.unique(answered, return_counts=True)[1])[::-1] if answered.size else np.zeros(1, int)
        top2[p] = (counts[0], counts[1] if counts.size > 1 else 0, answered.size)
    correct = {k: y[rows, w.select_with(data, k)].astype(np.int64) for k in SELECTORS}
    return {"set": name, "choice": w.choice_, "baseline": max(base["majority_vote"], base["mean_verifier"]),
            "correct": correct, "top2": top2, "est": w.report_["guard"].get("estimated_accuracy")}


def _summary(recs: list[dict[str, Any]], pick: Any) -> str:
    return summary([(r["set"], 100 * (float(pick(r).mean()) - r["baseline"])) for r in recs])


def _lm_then_mv_if(clear: Any) -> Any:
    def pick(r: dict[str, Any]) -> np.ndarray:
        c = r["correct"]
        if r["choice"] != "label_model":
            return c[r["choice"]]
        return np.where(clear(r["top2"]), c["majority_vote"], c["label_model"])
    return pick


def _mv_then_lm_if_close(d: int) -> Any:
    def pick(r: dict[str, Any]) -> np.ndarray:
        c = r["correct"]
        if r["choice"] != "majority_vote":
            return c[r["choice"]]
        return np.where(r["top2"][:, 0] - r["top2"][:, 1] < d, c["label_model"], c["majority_vote"])
    return pick


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed-base", type=int, default=10000)
    ap.add_argument("--seeds", type=int, default=16)
    ap.add_argument("--num-candidates", type=int, default=16)
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    args = ap.parse_args()
    sets = dict(DEV)
    sets.update(issue_regime_sets())
    tasks = [(name, spec, args.seed_base + s, s, args.num_candidates) for name, spec in sets.items()
             for s in range(args.seeds)]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        recs = list(pool.map(_record, tasks))
    print("| rule | all fits: mean / min / below -0.5 | sets below -0.5 on average |")
    print("|---|---|---|")
    rules: list[tuple[str, Any]] = [("shipped guard", lambda r: r["correct"][r["choice"]]),
                                    ("always the label model", lambda r: r["correct"]["label_model"]),
                                    ("always majority vote", lambda r: r["correct"]["majority_vote"])]
    rules += [(f"label model chosen: MV where its lead >= {d}",
               _lm_then_mv_if(lambda t, d=d: t[:, 0] - t[:, 1] >= d)) for d in (2, 4, 6)]
    rules += [(f"label model chosen: MV where its share >= {f}",
               _lm_then_mv_if(lambda t, f=f: t[:, 0] >= f * np.maximum(t[:, 2], 1))) for f in (0.4, 0.6)]
    rules += [(f"MV chosen: label model where MV's lead < {d}", _mv_then_lm_if_close(d)) for d in (1, 2, 3)]
    for label, pick in rules:
        print(f"| {label} | {_summary(recs, pick)} |", flush=True)
    print("\n| set | true accuracy: label model / MV | guard's estimate: label model / MV | corr(estimated, true "
          "gain of the label model over MV) over seeds | fits where the guard kept the label model: estimated / true "
          "gain |")
    print("|---|---|---|---|---|")
    for name in sets:
        rs = [r for r in recs if r["set"] == name and r["est"] is not None]
        if not rs:
            continue
        t = np.array([[r["correct"]["label_model"].mean(), r["correct"]["majority_vote"].mean()] for r in rs])
        e = np.array([[r["est"]["label_model"], r["est"]["majority_vote"]] for r in rs])
        kept = np.array([r["choice"] == "label_model" for r in rs])
        tg, eg = t[:, 0] - t[:, 1], e[:, 0] - e[:, 1]
        corr = float(np.corrcoef(eg, tg)[0, 1]) if tg.std() > 0 and eg.std() > 0 else float("nan")
        kept_cell = f"{eg[kept].mean():+.3f} / {tg[kept].mean():+.3f} ({int(kept.sum())})" if kept.any() else "-"
        print(f"| {name} | {t[:, 0].mean():.3f} / {t[:, 1].mean():.3f} | {e[:, 0].mean():.3f} / {e[:, 1].mean():.3f} "
              f"| {corr:+.2f} | {kept_cell} |")


if __name__ == "__main__":
    main()
