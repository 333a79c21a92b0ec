"""Development check (issue 17): the answer-level model's ``rho_check`` on development data only.

``AnswerLevelModel(rho_check=...)`` (session 26) floors each source's within-answer correlation at ``rho_check`` times
the one estimated under the counts-only posterior, in the EM steps where EM's own estimate falls under that floor.
This script sets it for the label model *and* the guard's evaluators (the constructor default is patched for the run;
``none`` = the check off, the model before session 26) and prints, per set, ``Weaver() - max(majority vote, mean
verifier)`` in points as ``bench_weaver_suite.py`` measures it (mean / min / seeds more than 0.5 point below) on

* ``n16a`` / ``n16b``: the suite's three judge sets, the two issue-regime sets of ``diag_weaver_few_candidates.py`` and
  five development sets of ``dev_weaver_guard.py`` at 64 problems x 16 candidates, data seeds 9600-9611 / 9700-9711;
* ``n64``: the same ten sets at 64 x 64, data seeds 9600-9609;
* ``multi``: seven suite sets with several verifiers at their benchmark sizes, data seeds 9600-9602.

Gold labels are used for scoring only; no suite (0-11) or held-out (1000+) seed is read. About 12 minutes per setting
on one core.

    python benchmarks/dev_weaver_rho_check.py [--rho-check none|0.5] [--parts n16a,n16b,n64,multi]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from dev_weaver_count_check import run_check
from dev_weaver_guard import DEV
from diag_weaver_few_candidates import issue_regime_sets

from lightning_ws.weaver.suite import SUITE, make_set, make_suite_set

JUDGE_SETS = ("judge_draws", "judge_draws_prob", "judge_vs_majority")
DEV_SETS = ("dv_mc4_r30_s09", "dv_free_r30_s09_prob", "dv_mc6_r60_s045", "dv_mc4_r55_s05_yes", "dv_free_r50_s06_verd")
MULTI_SETS = ("rate_0.05", "rate_0.20", "rate_0.50", "weak_verifiers", "correlated", "correlated_hard",
              "judges_and_rms")


def judge_specs() -> dict:
    specs = {name: SUITE[name] for name in JUDGE_SETS}
    specs.update(issue_regime_sets())
    specs.update({name: DEV[name] for name in DEV_SETS})
    return specs


def jobs(parts: list[str]):
    specs = judge_specs()
    for part, first, n, cands in (("n16a", 9600, 12, 16), ("n16b", 9700, 12, 16), ("n64", 9600, 10, 64)):
        if part in parts:
            for name, spec in specs.items():
                for s in range(n):
                    yield f"{part}/{name}", make_set(spec, seed=first + s, num_candidates=cands), s
    if "multi" in parts:
        for name in MULTI_SETS:
            for s in range(3):
                yield f"multi/{name}", make_suite_set(name, seed=9600 + s), s


def main() -> None:
    run_check("rho_check", "0.5", "floor fraction in [0, 1], or 'none'", "n16a,n16b,n64,multi", jobs, __doc__)


if __name__ == "__main__":
    main()
