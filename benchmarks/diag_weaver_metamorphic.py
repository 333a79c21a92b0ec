"""Check (issue 17): transformations that leave a Weaver data set the same data, or nearly, and what they do to the
label-free fit (session 39).

For every suite set (64 problems x 16 candidates, one data seed) this fits ``Weaver()`` on the data as drawn and on:

* the problems in another order;
* each problem's candidates in another order;
* every score mapped by ``3 x - 1`` (one affine map for all verifiers: the quantile normaliser sees the same ranks);
* every answer string renamed (``"7"`` -> ``"ans<7>"``, the same partition of the candidates);
* one verifier column appended again under a new name (for each of the first three verifiers), and (session 41)
  appended again through ``exp(3 x) + 1`` (the same verifier on another scale, as logits next to probabilities):
  a user mistake. Before session 41 the copy counted twice in the mean-verifier baseline and in a pooled group;
  ``Weaver(merge_copies=True)`` (default since then) leaves it out, so both columns should read +0.00.

It prints Select@1 as drawn, the change in Select@1 under each transformation and, for the first four, the largest
change of any candidate's score (EM's stopping tolerance gives 1e-10 to 1e-3). Picks may only change through ties.

``--monotone`` (session 40) prints a second table instead: each verifier's scores through a strictly increasing map
(min-max scaled to ``z`` in [0, 1], then ``z ** 3``, ``exp(4 z)``, ``log(z + 0.001)`` or ``10 z + 5``), either one
map per verifier kind (every judge draw the same map; the quantile normaliser sees the same ranks, so this should
change nothing beyond interpolation inside its 101 stored quantiles) or a map per verifier in turn (the four maps
cycle over the columns, so draws of one judge get different maps). The second is not the same data for Weaver:
:func:`~lightning_ws.weaver.structure.detect_verifier_groups` reads the raw score distributions (a
Kolmogorov-Smirnov check) to tell draws of one judge from independent verifiers, so draws put on different scales
stop being one group.

``--copies-census`` (session 41) prints instead how many of the data sets the Weaver benchmarks fit have two
verifier columns that copy each other (:func:`~lightning_ws.weaver.structure.verifier_copies`) or a verifier flat
within every problem (:func:`~lightning_ws.weaver.structure.flat_within_problems`); ``Weaver`` leaves such columns
out since session 41, so a set without them fits as before: the three shipped preference sets, their
subsets and the small samples of ``bench_weaver_preferences.py --pairs 24,48,96``, GSM8K, the suite at 64 x 16 and
64 x 64 (seeds 0-3) and at its own sizes (seeds 0-11), and the held-out judge sets (seeds 1000-1011). Since session
42 it also counts the data sets with a source (a verifier or a pooled group) that
:func:`~lightning_ws.weaver.structure.answer_blind_sources` flags, and checks the development sets of
``diag_weaver_few_candidates.py`` on the seed blocks BENCHMARKS.md reports (8300+, 10000+, 10100+, 10200+, 10300+).

``--flat`` (session 41) prints instead Select@1 on each suite set as drawn and its change with one more column that
cannot rank candidates: a constant, or a random score per problem shared by all its candidates (a reward model that
saw only the question). ``Weaver(drop_flat=True)`` (default since then) leaves such columns out.

``--noise`` (session 42) prints instead Select@1 on each suite set as drawn and its change with verifier columns
appended that carry no information: one column of uniform noise (a score drawn afresh for every candidate), three
such columns, and one column that draws one random score per answer of a problem and gives it to every candidate of
that answer (an answer-level opinion unrelated to correctness). ``Weaver(drop_answer_blind=True)`` (default since
then) leaves out sources whose scores do not differ between the answers of a problem
(:func:`~lightning_ws.weaver.structure.answer_blind_sources`), which catches the first two (p > 0.05: about 19 in 20
noise columns) but not the third: an answer-level opinion is what a real verifier gives too, and nothing in the
scores tells a random one from a right one.

``--blind-cost`` (session 42) prints what leaving out answer-blind sources costs where they are real verifiers:
small synthetic sets (``make_synthetic_verification``, 20 data seeds from ``--seed``, three verifier mixes at
40 x 6, 100 x 8 and 300 x 8), and on the data sets where ``Weaver()`` leaves a source out, Select@1 minus that of
``Weaver(drop_answer_blind=False)``: mean / min / max, and how many such data sets are worse / better by more than
0.5 point. ``--part k`` runs every second row from row ``k`` (0 or 1), so that two processes share the 2 cores.

    OMP_NUM_THREADS=1 python benchmarks/diag_weaver_metamorphic.py [--seed 39001]
        [--monotone | --copies-census | --flat | --noise | --blind-cost [--part 0|1]]
"""

from __future__ import annotations

import argparse
import os
import warnings

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

from lightning_ws.weaver import VerificationData, Weaver, make_suite_set
from lightning_ws.weaver.suite import SUITE


def _select_at_1(d: VerificationData, w: Weaver) -> float:
    return 100 * float(d.correct[np.arange(d.num_problems), w.select(d)].mean())


def _like(d: VerificationData, scores: np.ndarray | None = None, answers: list | None = None,
          correct: np.ndarray | None = None) -> VerificationData:
    return VerificationData(d.scores if scores is None else scores, d.answers if answers is None else answers,
                            list(d.verifier_names), list(d.verifier_kinds), d.correct if correct is None else correct)


def _appended(d: VerificationData, cols: np.ndarray, names: list[str], kind: str) -> VerificationData:
    """``d`` with the ``(P, N, q)`` score columns ``cols`` appended as verifiers ``names`` of kind ``kind``."""
    return VerificationData(np.concatenate([d.scores, cols], axis=2), d.answers, d.verifier_names + list(names),
                            d.verifier_kinds + [kind] * len(names), d.correct)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=39001)
    ap.add_argument("--monotone", action="store_true", help="the per-verifier monotone maps table instead")
    ap.add_argument("--copies-census", action="store_true",
                    help="count the benchmark data sets with verifier columns that copy each other, instead")
    ap.add_argument("--flat", action="store_true", help="columns that cannot rank candidates appended, instead")
    ap.add_argument("--noise", action="store_true", help="columns that carry no information appended, instead")
    ap.add_argument("--blind-cost", action="store_true",
                    help="what leaving out answer-blind sources costs on small synthetic sets, instead")
    ap.add_argument("--part", type=int, default=None, choices=[0, 1], help="--blind-cost: every second row from k")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    if args.blind_cost:
        _blind_cost(args.seed, args.part)
        return
    if args.noise:
        _noise(args.seed)
        return
    if args.flat:
        _flat(args.seed)
        return
    if args.copies_census:
        _copies_census()
        return
    if args.monotone:
        _monotone(args.seed)
        return
    print("| set | V | Select@1 | problems reordered | candidates reordered | scores 3x-1 | answers renamed | "
          "verifier 0 / 1 / 2 appended again | verifier 0 / 1 / 2 appended again through exp(3x)+1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in SUITE:
        d = make_suite_set(name, num_problems=64, num_candidates=16, seed=args.seed)
        P, N = d.num_problems, d.num_candidates
        rng = np.random.default_rng([39001, args.seed])
        w = Weaver().fit(d)
        base, ref = _select_at_1(d, w), w.score(d)
        cells = []
        pp = rng.permutation(P)
        dp = _like(d, d.scores[pp], [d.answers[i] for i in pp], d.correct[pp])
        cp = np.stack([rng.permutation(N) for _ in range(P)])
        r = np.arange(P)[:, None]
        dc = _like(d, d.scores[r, cp], [[d.answers[i][j] for j in cp[i]] for i in range(P)], d.correct[r, cp])
        da = _like(d, 3.0 * d.scores - 1.0)
        dr = _like(d, answers=[[None if a is None else f"ans<{a}>" for a in row] for row in d.answers])
        for dt, expect in ((dp, ref[pp]), (dc, ref[r, cp]), (da, ref), (dr, ref)):
            wt = Weaver().fit(dt)
            cells.append(f"{_select_at_1(dt, wt) - base:+.2f} ({np.nanmax(np.abs(wt.score(dt) - expect)):.1e})")
        dups: dict[str, list[str]] = {"same": [], "exp": []}
        for kind, f in (("same", lambda x: x), ("exp", lambda x: np.exp(3.0 * x) + 1.0)):
            for v in range(min(d.num_verifiers, 3)):
                dd = _appended(d, f(d.scores[:, :, [v]]), [d.verifier_names[v] + "_again"], d.verifier_kinds[v])
                dups[kind].append(f"{_select_at_1(dd, Weaver().fit(dd)) - base:+.2f}")
        print(f"| {name} | {d.num_verifiers} | {base:.2f} | " + " | ".join(cells)
              + f" | {' / '.join(dups['same'])} | {' / '.join(dups['exp'])} |", flush=True)


def _monotone_map(x: np.ndarray, which: int) -> np.ndarray:
    lo, hi = np.nanmin(x), np.nanmax(x)
    z = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    return (z ** 3, np.exp(4.0 * z), np.log(z + 1e-3), 10.0 * z + 5.0)[which % 4]


def _monotone(seed: int) -> None:
    print("| set | V | Select@1 | one map per verifier kind: change (largest score change) | a map per verifier: "
          "change (largest score change) | groups as drawn -> per verifier |")
    print("|---|---|---|---|---|---|")
    for name in SUITE:
        d = make_suite_set(name, num_problems=64, num_candidates=16, seed=seed)
        w = Weaver().fit(d)
        base, ref = _select_at_1(d, w), w.score(d)
        kinds = sorted(set(d.verifier_kinds))
        by_kind = np.stack([_monotone_map(d.scores[:, :, v], kinds.index(d.verifier_kinds[v]) + 1)
                            for v in range(d.num_verifiers)], axis=2)
        per_v = np.stack([_monotone_map(d.scores[:, :, v], v) for v in range(d.num_verifiers)], axis=2)
        cells, groups = [], []
        for S in (by_kind, per_v):
            dt = _like(d, S)
            wt = Weaver().fit(dt)
            cells.append(f"{_select_at_1(dt, wt) - base:+.2f} ({np.nanmax(np.abs(wt.score(dt) - ref)):.1e})")
            groups.append(len(wt.report_["verifier_groups"]["groups"]))
        print(f"| {name} | {d.num_verifiers} | {base:.2f} | {cells[0]} | {cells[1]} | "
              f"{len(w.report_['verifier_groups']['groups'])} -> {groups[1]} |", flush=True)



def _copies_census() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_weaver_preferences as bp
    from bench_weaver_suite import _heldout_specs
    from dev_weaver_guard import DEV
    from diag_weaver_few_candidates import issue_regime_sets

    from lightning_ws.programs import ProgramSandbox
    from lightning_ws.weaver import load_gsm8k_verification
    from lightning_ws.weaver.structure import answer_blind_sources, flat_within_problems, pool_groups, verifier_copies
    from lightning_ws.weaver.suite import make_set

    counts: dict[str, list[int]] = {}

    def blind_sources(d: VerificationData) -> list[str]:
        """The sources Weaver's fit would leave out as answer-blind (normaliser and groups as in ``Weaver.fit``)."""
        if d.num_verifiers < 2:
            return []
        w = Weaver()
        norm, _ = w._fit_structure(d)
        out = w._excluded(d)
        flag, _ = answer_blind_sources(pool_groups(np.where(out[:, :, None], np.nan, norm), w.groups_),
                                       d.answer_ids())
        return [d.verifier_names[g[0]] + (f" (+{len(g) - 1})" if len(g) > 1 else "")
                for g, f in zip(w.groups_, flag) if f]

    def check(family: str, label: str, d: VerificationData) -> None:
        c, flat, blind = verifier_copies(d.scores), flat_within_problems(d.scores), blind_sources(d)
        counts.setdefault(family, [0, 0, 0, 0])[0] += 1
        if c:
            counts[family][1] += 1
            print(f"    {label}: copies {[[d.verifier_names[j] for j in g] for g in c]}")
        if flat.any() and not flat.all():
            counts[family][2] += 1
            print(f"    {label}: flat {[d.verifier_names[j] for j in np.flatnonzero(flat)]}")
        if blind:
            counts[family][3] += 1
            print(f"    {label}: answer-blind {blind}")

    with ProgramSandbox() as sb:
        built = {name: bp.build(name, sandbox=sb) for name in ("pandalm_test", "llmbar", "hh_rlhf")}
    pandalm = built["pandalm_test"][0]
    no_llm = bp._take(pandalm, verifiers=[n for n in pandalm.verifier_names if n not in bp.VERDICTS])
    check("preference sets and subsets", "pandalm_test", pandalm)
    check("preference sets and subsets", "pandalm_test, programs + length", no_llm)
    small = {"pandalm_test, programs + length": no_llm}
    for name in ("llmbar", "hh_rlhf"):
        data, subsets = built[name]
        check("preference sets and subsets", name, data)
        for sub in sorted(set(subsets)):
            part = bp._take(data, np.flatnonzero(subsets == sub))
            check("preference sets and subsets", f"{name} {sub}", part)
            if sub in ("Natural", "Processed/MT-Bench", "helpful-base"):
                small[f"{name} {sub}"] = part
    for label, data in small.items():
        for k in (24, 48, 96):
            for draw in range(12):
                rows = np.sort(np.random.default_rng([777, draw, k]).choice(data.num_problems, size=k, replace=False))
                check("small preference samples (24 / 48 / 96 pairs, 12 draws)", f"{label} {k} pairs, draw {draw}",
                      bp._take(data, rows))
    for v in ("heuristic", "all"):
        check("GSM8K", f"gsm8k[{v}]", load_gsm8k_verification(verifiers=v))
    for name in SUITE:
        for n in (16, 64):
            for seed in range(4):
                check("suite, 64 x 16 and 64 x 64, seeds 0-3", f"{name} {n} seed {seed}",
                      make_suite_set(name, num_problems=64, num_candidates=n, seed=seed))
        for seed in range(12):  # bench_weaver_suite.py's sets: the suite's own sizes, seeds 0-11
            check("suite at its own sizes, seeds 0-11", f"{name} seed {seed}", make_suite_set(name, seed=seed))
    for name, spec in _heldout_specs().items():
        for seed in range(12):
            check("held-out judge sets, seeds 1000-1011", f"{name} seed {1000 + seed}", make_set(spec, seed=1000 + seed))
    dev = {**DEV, **issue_regime_sets()}
    blocks = {16: ((8300, 8), (10000, 32), (10100, 16), (10200, 16), (10300, 16)),
              64: ((8300, 8), (10000, 8), (10100, 8), (10200, 8), (10300, 8))}
    for n, starts in blocks.items():
        for name, spec in dev.items():
            for first, count in starts:
                for seed in range(first, first + count):
                    check("few-candidates sets, 64 x 16 and 64 x 64, five seed blocks", f"{name} {n} seed {seed}",
                          make_set(spec, seed=seed, num_candidates=n))
    print("| data sets | checked | with copies (verifier_copies) | with flat verifiers (flat_within_problems) | "
          "with answer-blind sources (answer_blind_sources) |")
    print("|---|---|---|---|---|")
    for family, (n, hit, flat_hit, blind_hit) in counts.items():
        print(f"| {family} | {n} | {hit} | {flat_hit} | {blind_hit} |")
    print("| all | " + " | ".join(str(sum(v[i] for v in counts.values())) for i in range(4)) + " |")


def _flat(seed: int) -> None:
    print("| set | V | Select@1 | a constant column appended | a random score per problem appended |")
    print("|---|---|---|---|---|")
    for name in SUITE:
        d = make_suite_set(name, num_problems=64, num_candidates=16, seed=seed)
        base = _select_at_1(d, Weaver().fit(d))
        per_problem = np.random.default_rng([41001, seed]).random((d.num_problems, 1, 1))
        cells = []
        for col in (np.full(d.scores.shape[:2] + (1,), 0.5), np.repeat(per_problem, d.num_candidates, axis=1)):
            dd = _appended(d, col, ["flat"], d.verifier_kinds[0])
            cells.append(f"{_select_at_1(dd, Weaver().fit(dd)) - base:+.2f}")
        print(f"| {name} | {d.num_verifiers} | {base:.2f} | " + " | ".join(cells) + " |", flush=True)


def _noise(seed: int) -> None:
    from lightning_ws.weaver.report import suite_baselines

    print("| set | V | Select@1 | one uniform-noise column appended | three | one random score per answer appended | "
          "with one noise column: Weaver - max(MV, mean verifier), points |")
    print("|---|---|---|---|---|---|---|")
    for name in SUITE:
        d = make_suite_set(name, num_problems=64, num_candidates=16, seed=seed)
        P, N = d.num_problems, d.num_candidates
        base = _select_at_1(d, Weaver().fit(d))
        rng = np.random.default_rng([42002, seed])
        per_answer = np.empty((P, N, 1))
        for i, row in enumerate(d.answer_ids()):
            draw = rng.random(N)  # answer code a (0 .. N-1) gets draw[a]; no answer: a score of its own
            per_answer[i, :, 0] = np.where(row >= 0, draw[np.maximum(row, 0)], rng.random(N))
        cells, goal = [], ""
        for cols in (rng.random((P, N, 1)), rng.random((P, N, 3)), per_answer):
            dd = _appended(d, cols, [f"noise_{i}" for i in range(cols.shape[2])], d.verifier_kinds[0])
            got = _select_at_1(dd, Weaver().fit(dd))
            cells.append(f"{got - base:+.2f}")
            if not goal:  # the baselines a user computes on the data with the noise column (it counts in the mean)
                b = suite_baselines(dd)[0]
                goal = f"{got - 100 * max(b['majority_vote'], b['mean_verifier']):+.2f}"
        print(f"| {name} | {d.num_verifiers} | {base:.2f} | " + " | ".join(cells) + f" | {goal} |", flush=True)


def _blind_cost(first_seed: int, part: int | None) -> None:
    from lightning_ws.weaver import make_synthetic_verification

    mixes = {"3 good + 6 junk (TPR 0.55 / TNR 0.5)": ([0.9, 0.85, 0.85] + [0.55] * 6, [0.9, 0.85, 0.8] + [0.5] * 6),
             "graded 4 (TPR 0.9-0.6)": ([0.9, 0.8, 0.7, 0.6], [0.85, 0.8, 0.6, 0.6]),
             "weak 5 (TPR 0.7-0.6)": ([0.7, 0.65, 0.65, 0.6, 0.6], [0.65, 0.6, 0.6, 0.6, 0.55])}
    rows = [(name, rates, size) for name, rates in mixes.items() for size in ((40, 6), (100, 8), (300, 8))]
    print(f"| verifiers | problems x candidates | data sets with a source left out (seeds {first_seed}+) | "
          "Select@1 - with drop_answer_blind=False there: mean / min / max, points | worse / better by > 0.5 |")
    print("|---|---|---|---|---|")
    for name, (tpr, tnr), (P, N) in rows if part is None else rows[part::2]:
        diffs, hits = [], 0
        for seed in range(first_seed, first_seed + 20):
            d = make_synthetic_verification(P, N, tpr, tnr, seed=seed)
            w = Weaver().fit(d)
            if w.answer_blind_:
                hits += 1
                diffs.append(_select_at_1(d, w) - _select_at_1(d, Weaver(drop_answer_blind=False).fit(d)))
        dd = np.array(diffs) if diffs else np.zeros(1)
        print(f"| {name} | {P} x {N} | {hits} of 20 | {dd.mean():+.2f} / {dd.min():+.2f} / {dd.max():+.2f} | "
              f"{int((dd < -0.5).sum())} / {int((dd > 0.5).sum())} |", flush=True)


if __name__ == "__main__":
    main()
