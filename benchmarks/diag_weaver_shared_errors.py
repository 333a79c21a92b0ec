"""Weaver when the verifiers share their errors (issue 17): a stress test of the label-free default.

The suite's verifier groups err independently of each other given the label (each group has its own per-candidate
and per-answer components). Real verifiers also share errors: every reward model likes long, confident answers, or
every verifier is drawn to the same plausible wrong answer. This script draws the suite's reward-model sets (data
seeds 9100+, development seeds no other script uses), standardises each verifier and adds one of:

* ``style w``: ``w * u_c`` to every verifier, ``u_c`` standard normal per *candidate* (a shared style bias);
* ``flip k``: the first ``k`` verifiers' scores negated (verifiers worse than chance);
* ``answer w``: ``w * a_{p, answer}`` to every verifier, ``a`` standard normal per (problem, answer), the same for
  every verifier (all fooled alike by an answer, in both directions);
* ``attract w``: ``w * max(a_{p, answer}, 0)`` on *wrong* answers only (some wrong answers draw every verifier up).

A second part (``--part judge``) stays inside the generator: the suite's three one-judge sets with the judge's
per-(problem, answer) component (``GroupSpec.answer``, 0.3 in the suite) raised to 0.6 and 0.9 (data seeds 9200+).
With one judge, that component is shared by all 32 draws, so it is the same kind of shared error.

It prints, per set and variant, the mean over seeds of Select@1 of majority vote, the mean verifier and label-free
``Weaver()``, ``Weaver - max(MV, mean)`` in points (mean / min / seeds more than 0.5 point below), the guard's
choices, and the same difference for ``Weaver()`` given one verifier only, the mean of the quantile-normalised
verifiers ("one source": what a user can do by hand when all verifiers share their errors). Gold labels are used
for scoring only.

    python benchmarks/diag_weaver_shared_errors.py [--part shared|judge|all] [--seeds 5] [--judge-seeds 6]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import warnings
from collections import Counter

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

from lightning_ws.weaver import ScoreNormalizer, VerificationData, Weaver
from lightning_ws.weaver.report import naive_ensemble_scores, suite_report
from lightning_ws.weaver.suite import SUITE, make_set, make_suite_set

SETS = ("rate_0.20", "rate_0.50", "correlated", "weak_verifiers")
JUDGE_SETS = ("judge_vs_majority", "judge_draws", "judge_draws_prob")
JUDGE_ANSWER = (0.3, 0.6, 0.9)
VARIANTS = (("none", 0.0), ("style", 1.0), ("flip", 1), ("flip", 2), ("answer", 0.5), ("answer", 1.0),
            ("attract", 0.5), ("attract", 1.0))


def perturb(data: VerificationData, kind: str, w: float, seed: int) -> VerificationData:
    """``data`` with standardised scores and one shared error added (module docstring)."""
    rng = np.random.default_rng([seed, 17])
    s = data.scores
    s = (s - np.nanmean(s, axis=(0, 1))) / np.nanstd(s, axis=(0, 1))
    if kind == "style":
        s = s + w * rng.standard_normal(s.shape[:2])[:, :, None]
    elif kind == "flip":
        s = s.copy()
        s[:, :, : int(w)] *= -1.0
    elif kind in ("answer", "attract"):
        ids = data.answer_ids()
        per_answer = rng.standard_normal((ids.shape[0], ids.shape[1] + 1))  # last column: candidates without answer
        comp = np.take_along_axis(per_answer, np.where(ids >= 0, ids, ids.shape[1]), axis=1)
        if kind == "attract":
            comp = np.where(data.correct, 0.0, np.maximum(comp, 0.0))
        s = s + w * comp[:, :, None]
    return VerificationData(scores=s, answers=data.answers, verifier_names=data.verifier_names,
                            verifier_kinds=data.verifier_kinds, correct=data.correct)


def one_source(data: VerificationData) -> VerificationData:
    """``data`` with its verifiers replaced by one: the mean of their quantile-normalised scores."""
    pooled = naive_ensemble_scores(ScoreNormalizer("quantile").fit_transform(data.scores))[:, :, None]
    return VerificationData(scores=pooled, answers=data.answers, verifier_names=["mean_of_verifiers"],
                            correct=data.correct)


def _row(name: str, label: str, datasets) -> None:
    rows, diffs, diffs_one, guard = [], [], [], Counter()
    for s, data in enumerate(datasets):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rep = suite_report(data, seed=s)
            one = one_source(data)
            pick = Weaver(seed=s).fit(one, "label_free").select(one)
        sa = rep["select_at_1"]
        base = max(sa["majority_vote"], sa["mean_verifier"])
        rows.append((sa["majority_vote"], sa["mean_verifier"], sa["weaver"]))
        diffs.append(100 * (sa["weaver"] - base))
        diffs_one.append(100 * (float(data.correct[np.arange(len(pick)), pick].mean()) - base))
        guard[rep["weaver"].get("guard", {}).get("choice")] += 1
    m = np.mean(rows, axis=0)
    cell = lambda d: f"{np.mean(d):+.2f} / {np.min(d):+.1f} / {sum(x < -0.5 for x in d)} of {len(d)}"
    print(f"| {name} | {label} | {m[0]:.4f} | {m[1]:.4f} | {m[2]:.4f} | {cell(diffs)} | {dict(guard)} | "
          f"{cell(diffs_one)} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["shared", "judge", "all"], default="all")
    ap.add_argument("--seeds", type=int, default=5, help="data seeds per set and variant (9100, 9101, ...)")
    ap.add_argument("--judge-seeds", type=int, default=6, help="data seeds per judge set (9200, 9201, ...)")
    args = ap.parse_args()
    header = ("| set | shared error | MV | mean verifier | Weaver | Weaver - max(MV, mean): mean / min / seeds below | "
              "guard choices | one source: Weaver - max(MV, mean) |\n|---|---|---|---|---|---|---|---|")
    if args.part in ("shared", "all"):
        print(header)
        for name in SETS:
            for kind, w in VARIANTS:
                label = "none" if kind == "none" else f"{kind} {w:g}"
                _row(name, label, (perturb(make_suite_set(name, seed=9100 + s), kind, w, 9100 + s)
                                   for s in range(args.seeds)))
    if args.part in ("judge", "all"):
        print("\nOne judge x 32 draws, the judge's per-(problem, answer) component raised (suite: 0.3)")
        print(header)
        for name in JUDGE_SETS:
            spec = SUITE[name]
            for ans in JUDGE_ANSWER:
                spec_a = dataclasses.replace(spec, groups=tuple(dataclasses.replace(g, answer=ans)
                                                                for g in spec.groups))
                _row(name, f"judge answer {ans:g}", (make_set(spec_a, seed=9200 + s)
                                                      for s in range(args.judge_seeds)))


if __name__ == "__main__":
    main()
