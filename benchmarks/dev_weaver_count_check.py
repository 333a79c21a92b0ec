"""Development check (issue 17): the answer-level model's ``count_check`` on development data only.

``AnswerLevelModel(count_check=...)`` (session 24) reruns EM with the partition prior held at its counts-only fit
when EM's count model makes the correct answer far less popular than the counts alone say and the counts reject it
by more than ``count_check`` nats. This script sets the threshold for the label model *and* the guard's evaluators
(the constructor default is patched for the run; ``none`` = the check off, the model before session 24) and prints,
per set, ``Weaver() - max(majority vote, mean verifier)`` in points as ``bench_weaver_suite.py`` measures it (mean /
min / seeds more than 0.5 point below) on

* ``jdev``: the suite's three judge sets, data seeds 7000-7011 (the development seeds of ``dev_weaver_guard.py``);
* ``n16``: the development judge sets of ``dev_weaver_guard.py`` at 64 problems x 16 candidates (data seeds
  8300-8305) and the suite's judge sets at 64 x 16 (data seeds 8100-8107);
* ``shared``: ``rate_0.20``, ``weak_verifiers`` and ``correlated`` with a shared verifier error
  (``diag_weaver_shared_errors.perturb``; data seeds 8700-8701, not the seeds that script reports).

Gold labels are used for scoring only; no suite (0-11) or held-out (1000+) seed is read.

    python benchmarks/dev_weaver_count_check.py [--count-check none|6.64|2] [--parts jdev,n16,shared]
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections import defaultdict

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

from dev_weaver_guard import DEV
from diag_weaver_shared_errors import perturb

from lightning_ws.weaver.answer_model import AnswerLevelModel
from lightning_ws.weaver.report import suite_report
from lightning_ws.weaver.suite import SUITE, make_set, make_suite_set

JUDGE_SETS = ("judge_draws", "judge_draws_prob", "judge_vs_majority")


def jobs(parts: list[str]):
    if "jdev" in parts:
        for name in JUDGE_SETS:
            for s in range(12):
                yield f"jdev/{name}", make_set(SUITE[name], seed=7000 + s), s
    if "n16" in parts:
        for name, spec in DEV.items():
            if name not in JUDGE_SETS:
                for s in range(6):
                    yield f"n16/{name}", make_set(spec, seed=8300 + s, num_candidates=16), s
        for name in JUDGE_SETS:
            for s in range(8):
                yield f"n16/{name}", make_set(SUITE[name], seed=8100 + s, num_candidates=16), s
    if "shared" in parts:
        for name in ("rate_0.20", "weak_verifiers", "correlated"):
            for kind, w in (("answer", 0.5), ("answer", 1.0), ("attract", 0.5), ("style", 1.0)):
                for s in range(2):
                    data = perturb(make_suite_set(name, seed=8700 + s), kind, w, 8700 + s)
                    yield f"shared/{name}/{kind} {w:g}", data, s


def main() -> None:
    run_check("count_check", "6.64", "threshold in nats, or 'none'", "jdev,n16,shared", jobs, __doc__)


def run_check(option: str, default: str, help_text: str, parts: str, make_jobs, doc: str) -> None:
    """Command line of the ``dev_weaver_*_check.py`` scripts: ``--<option> none|<value>`` sets that
    ``AnswerLevelModel`` argument for the run, ``--parts`` picks the parts of ``make_jobs``, then :func:`print_gaps`."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--" + option.replace("_", "-"), default=default, help=help_text)
    ap.add_argument("--parts", default=parts)
    args = ap.parse_args()
    label = getattr(args, option)
    # the label model and the guard's evaluators are built with the constructor default: set it for this run
    AnswerLevelModel.__init__.__kwdefaults__[option] = None if label == "none" else float(label)
    print_gaps(option, label, make_jobs(args.parts.split(",")))


def print_gaps(option: str, label: str, items) -> None:
    """Fit ``suite_report`` on every ``(tag, data, seed)`` of ``items`` and print, per tag and per part (the tag's
    prefix before ``/``), Weaver - max(majority vote, mean verifier) in points: mean / min / seeds more than 0.5
    below. Shared by the ``dev_weaver_*_check.py`` scripts."""
    res: dict[str, list[float]] = defaultdict(list)
    for tag, data, s in items:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sa = suite_report(data, seed=s)["select_at_1"]
        res[tag].append(100 * (sa["weaver"] - max(sa["majority_vote"], sa["mean_verifier"])))
    cell = lambda v: f"{np.mean(v):+.2f} / {np.min(v):+.1f} / {int((np.array(v) < -0.5).sum())} of {len(v)}"
    print(f"| {option} | set | Weaver - max(MV, mean): mean / min / seeds below |\n|---|---|---|")
    parts: dict[str, list[float]] = defaultdict(list)
    for tag, v in res.items():
        parts[tag.split("/")[0]].extend(v)
        print(f"| {label} | {tag} | {cell(v)} |", flush=True)
    for part, v in parts.items():
        print(f"| {label} | all {part} | {cell(v)} |")


if __name__ == "__main__":
    main()
