"""Census (issue 17): where the guard's *mean verifier* selector can change what ``Weaver()`` selects.

Since session 34 the guard of :class:`~lightning_ws.weaver.Weaver` has a fourth selector, ``mean_verifier``: the
candidate with the best nan-mean of the normalised verifiers, every verifier counted once (the suite's *mean
verifier* baseline). The pooled mean counts each detected verifier group once instead. Where the guard ends with
majority vote or the pooled mean, the mean verifier replaces that choice if every evaluator fitted ranks it higher.
Where no group has two or more members, or where both means rank the same candidate first on every problem, the two
selectors pick the same candidates, the guard's estimates of them are equal and ``Weaver()`` is exactly what it was
before. This script
finds the fits where they differ: for every data set and seed the Weaver benchmarks use, it fits the normaliser and
the verifier groups only (cheap), compares the two selectors' picks, and for the sets where they differ fits
``Weaver()`` twice - as shipped, and with the ``mean_verifier`` selector replaced by the pooled mean (the guard
without the mean-verifier rule, exactly; the same session's likelihood-ratio order, ``AnswerLevelModel(monotone=
"auto")``, stays as shipped in both, and acts only on data where no answer is shared: here the preference pairs) -
and prints both against ``max(majority vote, mean verifier)`` (points, as
``bench_weaver_suite.py`` measures it) with the guard's choice.

Data: the suite at the seeds of ``bench_weaver_suite.py`` (0-4; 0-11 for the 64-problem sets), its held-out judge
sets (1000-1007), the development judge sets of ``diag_weaver_few_candidates.py`` at 16 and 64 candidates (seed blocks
8300, 10000, 10200 and 10300, 8 seeds each), the judge sets with partly shared draws of
``diag_weaver_judge_variants.py`` (7300-7307), the ragged suite of ``diag_weaver_ragged.py`` (5000+), the
missing-score check of ``bench_weaver_suite.py --missing``, the shared-error sets of ``diag_weaver_shared_errors.py``
(9100+, 9200+), GSM8K and the preference pairs of ``bench_weaver_preferences.py`` without the LLM verdicts (each set
and subset) and with them. Weaver's seed is the one each script passes. Gold labels score the rows only.

    OMP_NUM_THREADS=1 python benchmarks/diag_weaver_mean_fallback.py [--quick] [--families prefs,gsm8k]   # about 20 minutes on 2 CPU cores (--quick: 3)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_ws.weaver import Weaver, load_gsm8k_verification
from lightning_ws.weaver.answer_model import no_shared_answer
from lightning_ws.weaver.data import VerificationData
from lightning_ws.weaver.report import suite_report
from lightning_ws.weaver.select import majority_vote_scores, select_candidates
from lightning_ws.weaver.structure import detect_verifier_groups
from lightning_ws.weaver.suite import SUITE, make_set, make_suite_set


def _datasets(quick: bool, only: set[str] | None = None) -> Iterator[tuple[str, int, int, VerificationData]]:
    """``(family/set, data seed, Weaver seed, data)`` of every fit in the census (of the families in ``only``, if
    given; a family is the name before the ``/``), the seeds as each script uses them."""
    for item in _all_datasets(quick):
        if not only or item[0].split("/")[0] in only:
            yield item


def _all_datasets(quick: bool) -> Iterator[tuple[str, int, int, VerificationData]]:
    import bench_weaver_preferences as prefs
    from bench_weaver_suite import _heldout_specs
    from dev_weaver_guard import DEV
    from diag_weaver_few_candidates import issue_regime_sets
    from diag_weaver_ragged import ragged
    from diag_weaver_shared_errors import JUDGE_ANSWER, JUDGE_SETS, SETS, VARIANTS, perturb

    n = 2 if quick else None
    for name, spec in SUITE.items():
        for s in range((n or 12) if spec.num_problems <= 64 else (n or 5)):
            yield f"suite/{name}", s, s, make_suite_set(name, seed=s)
    for name, spec in _heldout_specs().items():
        for s in range(n or 8):
            yield f"heldout/{name}", 1000 + s, s, make_set(spec, seed=1000 + s)
    dev = {**DEV, **issue_regime_sets()}
    for base in ((8300,) if quick else (8300, 10000, 10200, 10300)):
        for N in (16, 64):
            for name, spec in dev.items():
                for s in range(n or 8):
                    yield f"dev{N}/{name}", base + s, s, make_set(spec, num_candidates=N, seed=base + s)
    for name in ("judge_draws", "judge_draws_prob", "judge_vs_majority"):
        spec = SUITE[name]
        for shared in (0.9, 0.7, 0.5):
            variant = dataclasses.replace(spec, groups=(dataclasses.replace(spec.groups[0], shared=shared),))
            for s in range(n or 8):
                yield f"shared{shared}/{name}", 7300 + s, s, make_set(variant, seed=7300 + s)
    for name, spec in SUITE.items():
        for s in range((n or 6) if spec.num_problems <= 64 else (n or 3)):
            yield f"ragged/{name}", 5000 + s, s, ragged(make_suite_set(name, seed=5000 + s), s)[0]
    for name in ("rate_0.20", "rate_0.50", "correlated", "judges_and_rms", "judge_draws"):
        P, N = (64, 64) if SUITE[name].num_problems <= 100 else (300, 32)
        for miss in (0.1, 0.3, 0.5, 0.7):
            for s in range(n or 3):
                d = make_suite_set(name, num_problems=P, num_candidates=N, seed=s)
                sc = d.scores.copy()
                sc[np.random.default_rng(s + 99).random(sc.shape) < miss] = np.nan
                yield f"missing{miss:g}/{name}", s, s, dataclasses.replace(d, scores=sc)
    for name in SETS:
        for kind, w in VARIANTS:
            for s in range(n or 5):
                yield (f"shared_error/{name} {kind} {w:g}", 9100 + s, s,
                       perturb(make_suite_set(name, seed=9100 + s), kind, w, 9100 + s))
    for name in JUDGE_SETS:
        for ans in JUDGE_ANSWER:
            spec = dataclasses.replace(SUITE[name], groups=tuple(dataclasses.replace(g, answer=ans)
                                                                 for g in SUITE[name].groups))
            for s in range(n or 6):
                yield f"shared_error/{name} answer {ans:g}", 9200 + s, s, make_set(spec, seed=9200 + s)
    for verifiers in ("heuristic", "all"):
        yield f"gsm8k/{verifiers}", 0, 0, load_gsm8k_verification(verifiers=verifiers)
    for name in ("pandalm_test", "llmbar", "hh_rlhf"):
        data, subsets = prefs.build(name)
        without = [v for v in data.verifier_names if v not in prefs.VERDICTS]
        yield f"prefs/{name}", 0, 0, prefs._take(data, verifiers=without)
        for sub in sorted(set(subsets)):
            if sub:
                yield f"prefs/{name}:{sub}", 0, 0, prefs._take(data, rows=np.flatnonzero(subsets == sub),
                                                               verifiers=without)
        if len(without) < len(data.verifier_names):
            yield f"prefs/{name}+verdicts", 0, 0, data


def _picks_differ(data: VerificationData, seed: int) -> tuple[bool, int]:
    """Whether ``mean_verifier`` and ``pooled_mean`` pick differently anywhere, and the number of sources."""
    w = Weaver(seed=seed)
    names = list(data.verifier_names)
    norm = w.normalizer.fit_transform(data.scores)
    if len(names) > 1:
        w.groups_, _ = detect_verifier_groups(norm, names, context=majority_vote_scores(data.answer_ids())[:, :, None],
                                              raw=data.scores)
    else:
        w.groups_ = [[0]]
    pm = select_candidates(w._sources(data)[1], tie_break="first")[0]
    mv = select_candidates(w._mean_verifier(data), tie_break="first")[0]
    return bool((pm != mv).any()), len(w.groups_)


@contextmanager
def mean_verifier_off() -> Iterator[None]:
    """Within the block the guard's ``mean_verifier`` selector is the pooled mean, which makes its rule a no-op (the
    guard without the mean-verifier rule, exactly)."""
    original = Weaver._mean_verifier
    Weaver._mean_verifier = lambda self, d: self._sources(d)[1]
    try:
        yield
    finally:
        Weaver._mean_verifier = original


def _without_mean_verifier(data: VerificationData, seed: int) -> dict:
    """``suite_report`` with the guard's ``mean_verifier`` selector replaced by the pooled mean."""
    with mean_verifier_off():
        return suite_report(data, seed=seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 seeds per set and one seed block (a smoke run)")
    ap.add_argument("--families", default="", help="comma-separated data families to run (default: all), e.g. prefs")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    print("| data | data seed | sources | Weaver() - max(MV, mean) | guard | without the mean-verifier rule | guard |")
    print("|---|---|---|---|---|---|---|")
    fits: Counter[str] = Counter()
    differ: Counter[str] = Counter()
    no_shared: Counter[str] = Counter()  # fits where the likelihood-ratio order (monotone="auto") is on
    moved: list[float] = []
    only = {f for f in args.families.split(",") if f}
    for family_set, data_seed, seed, data in _datasets(args.quick, only):
        family = family_set.split("/")[0]
        fits[family] += 1
        no_shared[family] += int(no_shared_answer(data.answer_ids()))
        changed, n_sources = _picks_differ(data, seed)
        if not changed:
            continue
        differ[family] += 1
        rows = []
        for rep in (suite_report(data, seed=seed), _without_mean_verifier(data, seed)):
            m = rep["select_at_1"]
            rows.append((100 * (m["weaver"] - max(m["majority_vote"], m["mean_verifier"])),
                         rep["weaver"]["guard"]["choice"]))
        moved.append(rows[0][0] - rows[1][0])
        print(f"| {family_set} | {data_seed} | {n_sources} | {rows[0][0]:+.2f} | {rows[0][1]} | {rows[1][0]:+.2f} | "
              f"{rows[1][1]} |", flush=True)
    print()
    for family in fits:
        print(f"{family}: {fits[family]} fits, mean_verifier and pooled_mean pick differently on {differ[family]}; "
              f"no answer shared (the likelihood-ratio order is on) in {no_shared[family]}")
    if moved:
        d = np.array(moved)
        print(f"where they differ ({d.size} fits): Weaver() minus the old guard, points: mean {d.mean():+.2f}, "
              f"min {d.min():+.2f}, max {d.max():+.2f}; changed on {int((np.abs(d) > 1e-9).sum())}")


if __name__ == "__main__":
    main()
