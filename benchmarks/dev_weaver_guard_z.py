"""Development check (issue 17): would a stricter guard help Weaver at 64 problems x 16 candidates? A replay.

Fits ``Weaver(seed=s)`` label-free once per set and data seed (the 15 judge sets of ``diag_weaver_few_candidates.py``),
records its guard's numbers (the label model's estimated gain and standard error under every plausible evaluator
solution, the fallback, the second opinion's gain over majority vote) and the true Select@1 of its three selectors,
then replays the guard's decision under other rules without refitting:

* ``guard_z`` = 1 (shipped; the replay must reproduce every recorded choice, and the script says if it does not),
  1.5, 2 and 3: the label model must beat the fallback by that many standard errors, and the second opinion uses
  the same ``z``;
* ``guard_z = 1.0, no veto``: the shipped guard without session 49's rule (majority vote where the second opinion
  ranks it at least as high as the pooled mean and finds the label model worse than it by ``z`` standard errors,
  whatever the guard's own evaluator ranks);
* ``both evaluators, else fallback``: the label model is kept only when the second opinion's evaluator also has it
  beating majority vote by ``z = 1`` standard errors, whatever it ranks between majority vote and the pooled mean;
* ``both evaluators, else MV``: the same, but a label model the second opinion does not confirm gives way to
  majority vote.

Per rule it prints ``Weaver - max(MV, mean verifier)`` in points as ``bench_weaver_suite.py`` measures it, over all
fits (mean / min / fits more than 0.5 below) and the sets below -0.5 on average. Gold labels score only.

    python benchmarks/dev_weaver_guard_z.py [--seed-base 10000] [--seeds 32] [--num-candidates 16]

Session 31 ran it on seeds 10000-10031 (about 20 minutes with two processes of 16 seeds each; see BENCHMARKS.md);
session 49 with ``--seed-base 10400 --seeds 16``, ``--seed-base 10500 --seeds 16`` and ``--seed-base 10500 --seeds 8
--num-candidates 64`` for the veto (its other blocks were replayed by an equivalent ad hoc loop; BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import os
import warnings
from typing import Any

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

from dev_weaver_guard import DEV
from diag_weaver_few_candidates import issue_regime_sets

from lightning_ws.weaver import Weaver
from lightning_ws.weaver.report import suite_baselines
from lightning_ws.weaver.suite import make_set

SELECTORS = ("label_model", "pooled_mean", "majority_vote", "mean_verifier")


def _record(data: Any, seed: int) -> dict[str, Any]:
    y, P = data.require_labels("dev_weaver_guard_z"), data.num_problems
    acc = lambda sel: float(y[np.arange(P), sel].mean())
    base = suite_baselines(data)[0]
    baseline = max(base["majority_vote"], base["mean_verifier"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = Weaver(seed=seed).fit(data, "label_free")
    g = w.report_["guard"]
    est = g["estimated_accuracy"]
    dc = g.get("dependence_check")
    return {"baseline": baseline, "true": {k: acc(w.select_with(data, k)) for k in SELECTORS},
            "choice": g["choice"], "gains": g["label_model_gain"], "ses": g["gain_standard_error"], "est": est,
            "simple": "majority_vote" if est["majority_vote"] >= est["pooled_mean"] - 1e-12 else "pooled_mean",
            "dc": None if dc is None else {"gains": dc["label_model_gain_vs_majority_vote"],
                                           "ses": dc["gain_standard_error"], "est": dc["estimated_accuracy"],
                                           "fallback": dc["guard_fallback"]}}


def _beats(gains: list[float], ses: list[float], z: float) -> bool:
    return all(g > z * se + 1e-12 for g, se in zip(gains, ses))


def shipped_rule(r: dict[str, Any], z: float = 1.0, veto: bool = True) -> str:
    """The guard of ``Weaver._run_guard`` / ``_dependence_check`` at ``guard_z = z``; ``veto=False``: the guard before
    session 49 (the second opinion could not act where the guard's own evaluator ranked the pooled mean above
    majority vote, even where it found the label model clearly worse than majority vote)."""
    dc = r["dc"]
    if not _beats(r["gains"], r["ses"], z):
        return _mean_verifier_rule(r, r["simple"], None)
    if dc is None:
        return "label_model"
    mv_top = dc["est"]["majority_vote"] >= dc["est"]["pooled_mean"] - 1e-12
    mv_fallback = dc["fallback"] == "majority_vote" and mv_top
    worse = _beats([-g for g in dc["gains"]], dc["ses"], z)  # the label model below majority vote by z standard errors
    if (mv_fallback and not _beats(dc["gains"], dc["ses"], z)) or (veto and mv_top and worse):
        return _mean_verifier_rule(r, "majority_vote", dc)
    return "label_model"


def _mean_verifier_rule(r: dict[str, Any], choice: str, dc: dict[str, Any] | None) -> str:
    """Since session 34: a simple selector chosen gives way to the mean verifier where every evaluator fitted ranks
    it higher (identical picks, as on these one-judge sets, give equal estimates: no change)."""
    higher = r["est"]["mean_verifier"] > r["est"][choice] + 1e-12 and (
        dc is None or dc["est"]["mean_verifier"] > dc["est"][choice] + 1e-12)
    return "mean_verifier" if higher else choice


def both_else_fallback(r: dict[str, Any]) -> str:
    dc = r["dc"]
    confirmed = dc is not None and _beats(dc["gains"], dc["ses"], 1.0)
    return "label_model" if _beats(r["gains"], r["ses"], 1.0) and confirmed else r["simple"]


def both_else_mv(r: dict[str, Any]) -> str:
    if not _beats(r["gains"], r["ses"], 1.0):
        return r["simple"]
    dc = r["dc"]
    return "label_model" if dc is not None and _beats(dc["gains"], dc["ses"], 1.0) else "majority_vote"


def summary(points: list[tuple[str, float]]) -> str:
    """``mean / min / fits below -0.5 | sets below -0.5 on average`` of per-fit ``(set, Weaver - max(MV, mean
    verifier) in points)`` pairs: the cells these development scripts print per rule."""
    per_set: dict[str, list[float]] = {}
    for name, v in points:
        per_set.setdefault(name, []).append(v)
    a = np.concatenate([np.asarray(v) for v in per_set.values()])
    below = [f"{n} {np.mean(v):+.2f}" for n, v in per_set.items() if np.mean(v) < -0.5]
    return f"{a.mean():+.2f} / {a.min():+.1f} / {int((a < -0.5).sum())} of {a.size} | {below}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed-base", type=int, default=10000)
    ap.add_argument("--seeds", type=int, default=32)
    ap.add_argument("--num-candidates", type=int, default=16)
    args = ap.parse_args()
    sets = dict(DEV)
    sets.update(issue_regime_sets())
    recs: list[tuple[str, dict[str, Any]]] = []
    for name, spec in sets.items():
        for s in range(args.seeds):
            data = make_set(spec, seed=args.seed_base + s, num_candidates=args.num_candidates)
            recs.append((name, _record(data, s)))
    mismatches = sum(shipped_rule(r) != r["choice"] for _, r in recs)
    print(f"replay of the shipped guard (z = 1): {mismatches} of {len(recs)} choices differ from the fitted ones")
    rules = [(f"guard_z = {z}", lambda r, z=z: shipped_rule(r, z)) for z in (1.0, 1.5, 2.0, 3.0)]
    rules += [("guard_z = 1.0, no veto (before session 49)", lambda r: shipped_rule(r, 1.0, veto=False))]
    rules += [("both evaluators, else fallback", both_else_fallback), ("both evaluators, else MV", both_else_mv)]
    print("| rule | all fits: mean / min / below -0.5 | sets below -0.5 on average |")
    print("|---|---|---|")
    for label, rule in rules:
        cells = summary([(name, 100 * (r["true"][rule(r)] - r["baseline"])) for name, r in recs])
        print(f"| {label} | {cells} |", flush=True)
    print("Fits whose choice the session-49 veto changed (set, data seed: before -> after, Weaver - max(MV, mean "
          "verifier) in points):")
    for i, (name, r) in enumerate(recs):
        before, after = shipped_rule(r, 1.0, veto=False), shipped_rule(r)
        if before != after:
            seed = args.seed_base + i % args.seeds
            print(f"  {name}, {seed}: {before} {100 * (r['true'][before] - r['baseline']):+.1f} -> {after} "
                  f"{100 * (r['true'][after] - r['baseline']):+.1f}")


if __name__ == "__main__":
    main()
