"""Check (issue 17): label-free Weaver when some candidates have no extracted answer.

Real best-of-N data holds responses whose final answer could not be extracted (truncated, off-format); a grader that
compares the extracted answer with the reference scores them wrong, but the verifiers still score them - an LLM
judge often rates a truncated, well-reasoned response highly. This script draws the suite's judge sets, two sets in
the regime issue 17 reports (see ``diag_weaver_few_candidates.py``) and two multi-verifier suite sets, removes the
extracted answer of a random share of the candidates (0, 5 %, 20 %; their scores are kept, their correctness set to
False), and prints per set and share, over data seeds 9400+ (used by no other committed script):

* Select@1 of majority vote (unanswered candidates excluded, as it always does), the mean verifier over every
  candidate (the suite's baseline), the mean verifier over the answered candidates only (a stricter baseline a user
  could write), and ``Weaver()`` with ``unanswered="keep"`` (each unanswered candidate an answer of its own, the
  behaviour before session 25) and ``"exclude"`` (the default);
* ``Weaver - max(MV, mean verifier)`` in points (mean / min / seeds more than 0.5 point below), the suite's measure,
  for both settings, and for the default also against the stricter baseline.

Gold labels are used for scoring only.

    python benchmarks/diag_weaver_unanswered.py [--seeds 4] [--shares 0,0.05,0.2] [--num-candidates 16]
"""

from __future__ import annotations

import argparse
import os
import warnings

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

from diag_weaver_few_candidates import issue_regime_sets

from lightning_ws.weaver.data import VerificationData, unanswered_candidates
from lightning_ws.weaver.report import naive_ensemble_scores, suite_report
from lightning_ws.weaver.select import ScoreNormalizer, select_candidates
from lightning_ws.weaver.suite import SUITE, make_set


def drop_answers(data: VerificationData, share: float, seed: int) -> VerificationData:
    """``data`` with the extracted answer of a random ``share`` of the candidates removed (scores kept, correctness
    False)."""
    drop = np.random.default_rng(seed).random(data.correct.shape) < share
    answers = [[None if drop[p, n] else a for n, a in enumerate(row)] for p, row in enumerate(data.answers)]
    return VerificationData(data.scores, answers, data.verifier_names, data.verifier_kinds, data.correct & ~drop)


def answered_mean_select(data: VerificationData) -> np.ndarray:
    """The mean normalised verifier score over the answered candidates (every candidate where a problem has none)."""
    mean_v = naive_ensemble_scores(ScoreNormalizer("quantile").fit_transform(data.scores))
    out = unanswered_candidates(data.answer_ids())
    return select_candidates(np.where(out, np.nan, mean_v), tie_break="first")[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4, help="data seeds 9400, 9401, ...")
    ap.add_argument("--shares", default="0,0.05,0.2", help="shares of candidates without an answer, comma-separated")
    ap.add_argument("--num-candidates", type=int, default=None, help="candidates per problem (default: each set's)")
    args = ap.parse_args()
    sets = {k: SUITE[k] for k in ("judge_draws", "judge_draws_prob", "judge_vs_majority")}
    sets.update(issue_regime_sets())
    sets.update({k: SUITE[k] for k in ("rate_0.20", "correlated")})
    print("| set | unanswered | MV | mean verifier | mean verifier, answered | Weaver keep | Weaver exclude | "
          "keep - max(MV, mean) | exclude - max(MV, mean) | exclude - max(MV, mean answered) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    tot: dict[str, list[float]] = {"keep": [], "exclude": [], "strict": []}
    for name, spec in sets.items():
        for share in (float(x) for x in args.shares.split(",")):
            acc, d = [], {"keep": [], "exclude": [], "strict": []}
            for s in range(args.seeds):
                data = drop_answers(make_set(spec, seed=9400 + s, num_candidates=args.num_candidates), share, seed=100 + s)
                y, P = data.correct, data.num_problems
                row = {}
                for policy in ("keep", "exclude"):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        rep = suite_report(data, seed=s, weaver_kwargs={"unanswered": policy})
                    row[policy] = rep["select_at_1"]["weaver"]
                sa = rep["select_at_1"]
                strict = float(y[np.arange(P), answered_mean_select(data)].mean())
                acc.append((sa["majority_vote"], sa["mean_verifier"], strict, row["keep"], row["exclude"]))
                base = max(sa["majority_vote"], sa["mean_verifier"])
                d["keep"].append(100 * (row["keep"] - base))
                d["exclude"].append(100 * (row["exclude"] - base))
                d["strict"].append(100 * (row["exclude"] - max(sa["majority_vote"], strict)))
            m = np.mean(acc, axis=0)
            cells = []
            for k in ("keep", "exclude", "strict"):
                a = np.array(d[k])
                tot[k] += d[k]
                cells.append(f"{a.mean():+.2f} / {a.min():+.1f} / {int((a < -0.5).sum())} of {len(a)}")
            print(f"| {name} | {share:.2f} | " + " | ".join(f"{v:.4f}" for v in m) + " | " + " | ".join(cells) + " |",
                  flush=True)
    for k, label in (("keep", "keep - max(MV, mean)"), ("exclude", "exclude - max(MV, mean)"),
                     ("strict", "exclude - max(MV, mean answered)")):
        a = np.array(tot[k])
        print(f"all: {label}: {a.mean():+.2f} / {a.min():+.1f} / {int((a < -0.5).sum())} of {len(a)} below")


if __name__ == "__main__":
    main()
