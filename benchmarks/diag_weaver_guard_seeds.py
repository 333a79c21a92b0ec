"""Diagnostic (issue 17): the guard's choice and cross-fitted estimates per seed, next to the true Select@1.

For each named set (the development judge sets of ``dev_weaver_guard.py``, the suite's judge sets, the issue-regime sets
of ``diag_weaver_few_candidates.py``) and data seed, fits ``Weaver(seed=data_seed - first_seed)`` label-free and
prints one line: the guard's choice; ``diff`` = true Select@1 of the choice - max(true Select@1 of Weaver's own
majority-vote and pooled-mean selectors) in points (Weaver's selectors break majority-vote ties by the pooled score,
so this differs a little from ``suite_report``'s baselines); the true Select@1 of the three selectors; the guard's
estimates (lowest over the plausible evaluator solutions), the label model's estimated gain and its standard error per
solution; the label model's count model (Beta ``a, b``) and the count check's numbers; the second opinion's estimates.
Then per set: mean ``diff``, seeds more than 0.5 point below. Gold labels are used for scoring only.

    python benchmarks/diag_weaver_guard_seeds.py --sets dv_mc6_r60_s045,judge_vs_majority [--first-seed 8900]
        [--seeds 12] [--num-candidates 16]
"""

from __future__ import annotations

import argparse
import os
import warnings

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

from dev_weaver_guard import DEV
from diag_weaver_few_candidates import issue_regime_sets

from lightning_ws.weaver import Weaver
from lightning_ws.weaver.suite import make_set


def _r(x: object) -> object:
    return None if x is None else (round(x, 3) if isinstance(x, float) else x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sets = dict(DEV)
    sets.update(issue_regime_sets())
    ap.add_argument("--sets", required=True, help=f"comma-separated, from {list(sets)}")
    ap.add_argument("--first-seed", type=int, default=8900)
    ap.add_argument("--seeds", type=int, default=12)
    ap.add_argument("--num-candidates", type=int, default=16)
    args = ap.parse_args()
    sel = ("label_model", "pooled_mean", "majority_vote")
    summary = {}
    for name in args.sets.split(","):
        diffs = []
        for s in range(args.first_seed, args.first_seed + args.seeds):
            data = make_set(sets[name], seed=s, num_candidates=args.num_candidates)
            y, P = data.require_labels("diag_weaver_guard_seeds"), data.num_problems
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                w = Weaver(seed=s - args.first_seed).fit(data, "label_free")
            true = {k: float(y[np.arange(P), w.select_with(data, k)].mean()) for k in sel}
            g, am = w.report_["guard"], w.report_["answer_model"]
            cc = am.get("count_check") or {}
            diff = 100 * (true[g["choice"]] - max(true["majority_vote"], true["pooled_mean"]))
            diffs.append(diff)
            dep = (g.get("dependence_check") or {}).get("estimated_accuracy")
            print(f"{name} s{s} choice={g['choice']} diff={diff:+.1f} true LM/PM/MV="
                  + "/".join(f"{true[k]:.3f}" for k in sel)
                  + " est LM/PM/MV=" + "/".join(f"{g['estimated_accuracy'][k]:.3f}" for k in sel)
                  + f" gain={np.round(g['label_model_gain'], 3).tolist()} se={np.round(g['gain_standard_error'], 3).tolist()}"
                  + f" beta={np.round(am.get('agreement_weights', {}).get('correct_rate_beta', []), 3).tolist()}"
                  + f" count_check gap={_r(cc.get('gap_nats'))} rate em/counts={_r(cc.get('correct_rate_em'))}/"
                  + f"{_r(cc.get('correct_rate_counts_only'))} held={cc.get('held_at_counts_only_fit')}"
                  + (" second opinion LM/PM/MV=" + "/".join(f"{dep[k]:.3f}" for k in sel) if dep else ""),
                  flush=True)
        d = np.array(diffs)
        summary[name] = (d.mean(), int((d < -0.5).sum()), len(d))
    for name, (m, below, n) in summary.items():
        print(f"{name}: mean diff {m:+.2f}, {below} of {n} seeds below -0.5")


if __name__ == "__main__":
    main()
