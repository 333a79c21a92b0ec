"""Check (issue 17): label-free Weaver on real judge data - the shipped pairwise preference sets.

Every other Weaver check in this folder is synthetic or GSM8K. Here the candidates are the two responses of each pair
of ``pandalm_test`` (894 pairs, majority of three human annotators; its ties are kept apart and not used),
``llmbar`` (619 pairs, expert-checked gold; five adversarial or natural LLMBar subsets plus 200 MT-Bench pairs) and
``hh_rlhf`` (4,664 pairs, crowdworkers; the helpful and harmless test splits), all shipped in
``lightning_ws/data/preferences/`` (provenance and licences there). The correct candidate is the human-preferred one,
so every problem has exactly one correct candidate of two (correct rate 0.5).

Verifiers (each scores one response at a time, as Weaver expects):

* the 20 hand-written PAJAMA judge programs (``lightning_ws.pajama.handwritten_judges``, run in the sandbox; kind
  ``heuristic``);
* ``length``: log(1 + characters) of the response ("prefer the longer response"; ``heuristic``);
* PandaLM only: the GPT-3.5-turbo and PandaLM-7B verdicts shipped with the set (``judge``): 1 for the response the
  judge preferred, 0 for the other, 0.5 each on a tie, missing where the judge's output did not parse.

Each pair's two responses are different answers, so answer-level majority vote has nothing to count: it is the first
candidate (``first``), which scores about 0.5. ``mean verifier`` averages the normalised verifiers; ``best single``
is chosen with the set's labels (an oracle choice). Weaver is label-free with its defaults; nothing is tuned here.
Also the two selectors Weaver's guard chooses between (its label model and its pooled mean over the verifier
groups; its third, majority vote, breaks every tie by the pooled mean, so here it is the pooled mean), and a paired
bootstrap 95 % interval of Weaver minus the mean verifier (1,000 resamples of the pairs, seeded). Rows: each set
with all its verifiers, PandaLM without its two LLM verdicts and with only them and length, and each LLMBar and
HH-RLHF subset. Per row also the verifiers' pairwise accuracy range (ties and missing count 0.5), the guard's choice
and the verifier groups.

    OMP_NUM_THREADS=1 python benchmarks/bench_weaver_preferences.py [--variants]   # about 25 seconds on 2 CPU cores

``--variants`` also prints the six sets where the verifiers beat a coin with ``group_verifiers=False`` and with the
binary path (``label_model="moment_matching"``): diagnostics of where the loss comes from, not defaults.
``--subsets DRAWS [--first-draw D]`` also fits Weaver on random subsets of 4, 8 and 12 of the 21 heuristic verifiers
(the PandaLM row with the two LLM verdicts keeps them in every subset) of the sets where the verifiers beat a coin,
next to Weaver before session 34 and without the guard's split test of session 35 (:func:`subset_rows`; about 8
minutes with 8 draws). ``--pairs 24,48,96`` also fits Weaver on 12 random samples of that many pairs per set
(:func:`small_set_rows`), as a user with a small preference set would. Each default row also gives the guard's split
test (where it ran: the label model refitted on one half of the pairs, its estimated gain over the mean verifier on
the other half) and Weaver without it (``guard_split=False``). ``--few-labels 0.05,0.1,0.25`` also scores each full set
and subset on held-out pairs with that fraction of the pairs labelled (:func:`few_label_rows`, ``weaver_report``'s
seeded split): the mean verifier, label-free Weaver, ``Weaver(mode="few_labels")``, and the two supervised baselines
fitted on the labelled pairs (logistic regression and the best single verifier).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_ws.errors import DataError
from lightning_ws.pajama import load_preferences
from lightning_ws.pajama.scoring import handwritten_judges, score_pairs
from lightning_ws.weaver import Weaver
from lightning_ws.weaver.data import VerificationData
from lightning_ws.weaver.report import naive_ensemble_scores, suite_baselines
from lightning_ws.weaver.select import ScoreNormalizer, select_candidates

VERDICTS = ("gpt35_verdict", "pandalm7b_verdict")


def _verdict_scores(v: object) -> tuple[float, float]:
    return {"a": (1.0, 0.0), "b": (0.0, 1.0), "tie": (0.5, 0.5)}.get(str(v).strip().lower(), (np.nan, np.nan))


def build(name: str, *, sandbox=None):
    """``(VerificationData, subsets)`` of one preference set: its labelled pairs as 2-candidate problems, with every
    verifier (programs, the LLM verdicts where the set has them, length); :func:`_take` selects rows and verifiers."""
    pr = load_preferences(name)
    pr = pr.take(np.flatnonzero(pr.y >= 0))
    ps = score_pairs(handwritten_judges(), pr.queries, pr.responses_a, pr.responses_b, sandbox=sandbox)
    cols, names, kinds = [ps.scores], list(ps.names), ["heuristic"] * len(ps.names)
    if pr.extra and all(k in pr.extra[0] for k in VERDICTS):
        for key in VERDICTS:
            cols.append(np.array([_verdict_scores(e.get(key)) for e in pr.extra])[:, :, None])
            names.append(key)
            kinds.append("judge")
    lengths = np.array([[len(a), len(b)] for a, b in zip(pr.responses_a, pr.responses_b)], dtype=np.float64)
    cols.append(np.log1p(lengths)[:, :, None])
    names.append("length")
    kinds.append("heuristic")
    S = np.concatenate(cols, axis=2)
    correct = np.stack([pr.y == 0, pr.y == 1], axis=1)
    subsets = np.array(pr.subsets if pr.subsets else [""] * len(pr))
    return VerificationData(S, [["a", "b"]] * len(pr), names, kinds, correct=correct), subsets


def _take(data: VerificationData, rows: np.ndarray | None = None, verifiers: list[str] | None = None
          ) -> VerificationData:
    """The pairs ``rows`` (default all) and the ``verifiers`` (default all, in the data's order) of ``data``; a verifier
    with no score on those rows is dropped."""
    rows = np.arange(data.num_problems) if rows is None else rows
    names = data.verifier_names
    keep = [j for j in range(data.num_verifiers) if (verifiers is None or names[j] in verifiers)
            and not np.isnan(data.scores[rows][:, :, j]).all()]
    return VerificationData(data.scores[rows][:, :, keep], [data.answers[i] for i in rows],
                            [names[j] for j in keep], [data.verifier_kinds[j] for j in keep],
                            correct=data.correct[rows])


def pairwise_accuracy(data: VerificationData) -> dict[str, float]:
    """Each verifier's accuracy at picking the correct response of a pair (a tie or a missing score counts 0.5)."""
    y_b = data.correct[:, 1]
    out = {}
    for j, name in enumerate(data.verifier_names):
        d = data.scores[:, 1, j] - data.scores[:, 0, j]
        out[name] = float(np.where(np.isnan(d) | (d == 0), 0.5, (d > 0) == y_b).mean())
    return out


#: ``--variants``: Weaver settings printed after the default rows (a diagnostic; none of them is the default).
VARIANTS: dict[str, dict] = {"group_verifiers=False": {"group_verifiers": False},
                             "label_model='moment_matching' (binary path)": {"label_model": "moment_matching"}}


def row(label: str, data: VerificationData, seed: int, weaver_kwargs: dict | None = None) -> str:
    y = data.correct
    P = data.num_problems
    base, best = suite_baselines(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = Weaver(seed=seed, **(weaver_kwargs or {})).fit(data, "label_free")
    acc_of = lambda sel: float(y[np.arange(P), sel].mean())
    sel = w.select(data)
    weaver = acc_of(sel)
    mean_sel = select_candidates(naive_ensemble_scores(ScoreNormalizer("quantile").fit_transform(data.scores)),
                                 tie_break="first")[0]
    d = y[np.arange(P), sel].astype(float) - y[np.arange(P), mean_sel]
    boot = np.random.default_rng(seed).integers(0, P, size=(1000, P))
    ci = 100.0 * np.percentile(d[boot].mean(axis=1), [2.5, 97.5])
    lm, pooled = acc_of(w.select_with(data, "label_model")), acc_of(w.select_with(data, "pooled_mean"))
    acc = pairwise_accuracy(data)
    lo, hi = min(acc, key=acc.get), max(acc, key=acc.get)
    groups = w.report_["verifier_groups"]["groups"]
    diff = 100.0 * (weaver - max(base["majority_vote"], base["mean_verifier"]))
    split = w.report_["guard"].get("split_check") or {}
    if split.get("applied"):  # Weaver as of session 34: the same fit without the guard's split test
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            off = Weaver(seed=seed, **{**(weaver_kwargs or {}), "guard_split": False}).fit(data, "label_free")
        off_cell = f"{100.0 * (acc_of(off.select(data)) - max(base['majority_vote'], base['mean_verifier'])):+.2f}"
        split_cell = f"{100 * split['gain_vs_mean_verifier']:+.2f} ± {100 * split['standard_error']:.2f}"
    else:
        off_cell, split_cell = "same", "not run"
    return (f"| {label} | {P} | {data.num_verifiers} | {acc[lo]:.3f} ({lo}) .. {acc[hi]:.3f} ({hi}) | "
            f"{base['first_sample']:.4f} | {base['majority_vote']:.4f} | {base['mean_verifier']:.4f} | "
            f"{base['best_single_verifier']:.4f} ({data.verifier_names[best]}) | {lm:.4f} / {pooled:.4f} | "
            f"{weaver:.4f} | {diff:+.2f} | [{ci[0]:+.2f}, {ci[1]:+.2f}] | {w.report_['guard']['choice']} | "
            f"{split_cell} | {off_cell} | {groups} |")


def _cell(diffs: list[float]) -> str:
    """``mean / min / count more than 0.5 below`` of per-draw differences in points."""
    return f"{np.mean(diffs):+.2f} / {np.min(diffs):+.2f} / {int((np.asarray(diffs) < -0.5).sum())} of {len(diffs)}"


def subset_rows(sets: dict[str, VerificationData], draws: int, sizes: tuple[int, ...] = (4, 8, 12),
                first_draw: int = 0) -> None:
    """``--subsets``: Weaver on random subsets of the heuristic verifiers (programs and length) of each set, ``draws``
    seeded draws per size (draws ``first_draw`` .. ``first_draw + draws - 1``; draw ``d`` of size ``k``:
    ``numpy.random.default_rng([d, k])``); the LLM verdicts, where a
    set name says so, are kept in every subset. Per set and size: Weaver - max(MV, mean verifier) in points (mean / min
    / draws more than 0.5 below) for the shipped Weaver and for Weaver before session 34 (no mean-verifier selector
    in the guard, no likelihood-ratio order in the answer-level models), and the shipped guard's choices."""
    from collections import Counter

    from diag_weaver_mean_fallback import mean_verifier_off

    from lightning_ws.weaver.answer_model import AnswerLevelModel
    from lightning_ws.weaver.report import suite_report

    def before_session34(sub: VerificationData) -> dict:
        """``suite_report`` with session 34's two changes undone: no mean-verifier selector in the guard and no
        likelihood-ratio order in any answer-level model (label model and guard evaluators); no split test either
        (session 35)."""
        defaults = AnswerLevelModel.__init__.__kwdefaults__
        original = defaults["monotone"]
        defaults["monotone"] = False
        try:
            with mean_verifier_off():
                return suite_report(sub, seed=0, weaver_kwargs={"guard_split": False})
        finally:
            defaults["monotone"] = original

    print(f"\nRandom verifier subsets, draws {first_draw}-{first_draw + draws - 1}")
    print("| set | programs + length drawn | draws | MV | mean verifier | Weaver | Weaver - max(MV, mean): mean / min "
          "/ draws below | without the split test (session 34) | before session 34 | guard choices |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, data in sets.items():
        fixed = [v for v in data.verifier_names if v in VERDICTS]
        pool = [v for v in data.verifier_names if v not in VERDICTS]
        for k in sizes:
            accs, now, no_split, before, choices = [], [], [], [], Counter()
            for d in range(first_draw, first_draw + draws):
                pick = np.random.default_rng([d, k]).choice(len(pool), size=k, replace=False)
                sub = _take(data, verifiers=fixed + [pool[j] for j in sorted(pick)])
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    reps = (suite_report(sub, seed=0), before_session34(sub),
                            suite_report(sub, seed=0, weaver_kwargs={"guard_split": False}))
                m = reps[0]["select_at_1"]
                accs.append((m["majority_vote"], m["mean_verifier"], m["weaver"]))
                now.append(100 * (m["weaver"] - max(m["majority_vote"], m["mean_verifier"])))
                o = reps[1]["select_at_1"]
                before.append(100 * (o["weaver"] - max(o["majority_vote"], o["mean_verifier"])))
                n = reps[2]["select_at_1"]
                no_split.append(100 * (n["weaver"] - max(n["majority_vote"], n["mean_verifier"])))
                choices[reps[0]["weaver"]["guard"]["choice"]] += 1
            a = np.mean(accs, axis=0)
            print(f"| {label} | {k} | {draws} | {a[0]:.4f} | {a[1]:.4f} | {a[2]:.4f} | {_cell(now)} | "
                  f"{_cell(no_split)} | {_cell(before)} | {dict(choices)} |", flush=True)


def small_set_rows(sets: dict[str, VerificationData], sizes: tuple[int, ...], draws: int = 12) -> None:
    """``--pairs``: Weaver on ``draws`` random samples of ``size`` pairs of each set (all its verifiers; sample ``d`` of
    size ``k``: ``numpy.random.default_rng([777, d, k])``), as a user with a small preference set would run it. Per set
    and size: Weaver - max(MV, mean verifier) in points (mean / min / samples more than 0.5 below), the same for the
    label model alone, the pooled mean over the detected verifier groups minus the mean verifier, and the guard's
    choices. With a few dozen pairs a selector's accuracy has a standard error of 5-10 points, and "MV" is the first
    response of each pair, so the differences are mostly noise; the pooled-mean column shows what the groups detected
    on so few pairs do."""
    from collections import Counter

    print(f"\nSmall preference sets: {draws} random samples of {', '.join(map(str, sizes))} pairs")
    print("| set | pairs | Weaver - max(MV, mean): mean / min / samples below | label model - max(MV, mean) | "
          "pooled mean - mean verifier: mean / min | guard choices |")
    print("|---|---|---|---|---|---|")
    for label, data in sets.items():
        for k in sizes:
            now, lm, pooled, choices = [], [], [], Counter()
            for d in range(draws):
                rows = np.sort(np.random.default_rng([777, d, k]).choice(data.num_problems, size=k, replace=False))
                sub = _take(data, rows)
                base = suite_baselines(sub)[0]
                floor = max(base["majority_vote"], base["mean_verifier"])
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    w = Weaver(seed=0).fit(sub, "label_free")
                acc = {sel: float(sub.correct[np.arange(k), w.select_with(sub, sel)].mean())
                       for sel in ("label_model", "pooled_mean", w.choice_)}
                now.append(100 * (acc[w.choice_] - floor))
                lm.append(100 * (acc["label_model"] - floor))
                pooled.append(100 * (acc["pooled_mean"] - base["mean_verifier"]))
                choices[w.choice_] += 1
            print(f"| {label} | {k} | {_cell(now)} | {np.mean(lm):+.2f} | {np.mean(pooled):+.2f} / "
                  f"{np.min(pooled):+.2f} | {dict(choices)} |", flush=True)


def few_label_rows(sets: dict[str, VerificationData], fractions: tuple[float, ...], seeds: int = 3) -> None:
    """``--few-labels``: what a few labelled pairs buy. For each set and labelled fraction, ``weaver_report`` with
    ``seeds`` seeded dev/eval splits; every number is Select@1 on the held-out (eval) pairs in points, averaged over
    the splits, and the last columns count the splits where Weaver is more than 0.5 point below the mean verifier."""
    from lightning_ws.weaver.report import weaver_report

    print(f"\nA few labelled pairs: Select@1 on the held-out pairs, mean of {seeds} seeded splits")
    print("| set | labelled fraction | labelled pairs | mean verifier | Weaver label-free | Weaver few_labels | "
          "logistic regression (labelled pairs) | best single verifier (chosen on the labelled pairs) | "
          "few_labels - mean verifier: mean / splits below | label-free - mean verifier: mean / splits below |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, data in sets.items():
        for frac in fractions:
            acc: dict[str, list[float]] = {}
            n_dev = 0
            for seed in range(seeds):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        rep = weaver_report(data, dev_fraction=frac, seed=seed, modes=("label_free", "few_labels"))
                    except DataError as err:  # e.g. a verifier without a score on the few labelled pairs
                        print(f"| {label} | {frac:g} | split seed {seed}: {err} |", flush=True)
                        continue
                n_dev = rep["split"]["dev_problems"]
                for r in rep["rows"]:
                    key = "best_single" if r["method"].startswith("best_single_verifier") else r["method"]
                    acc.setdefault(key, []).append(100 * r["select_at_1"])
            if not acc:
                continue
            seeds_run = len(acc["mean_verifier"])
            mv = np.array(acc["mean_verifier"])
            fl, lf = np.array(acc["weaver[few_labels]"]) - mv, np.array(acc["weaver[label_free]"]) - mv
            print(f"| {label} | {frac:g} | {n_dev} | {mv.mean():.2f} | {np.mean(acc['weaver[label_free]']):.2f} | "
                  f"{np.mean(acc['weaver[few_labels]']):.2f} | {np.mean(acc['logistic_regression']):.2f} | "
                  f"{np.mean(acc['best_single']):.2f} | {fl.mean():+.2f} / {int((fl < -0.5).sum())} of {seeds_run} | "
                  f"{lf.mean():+.2f} / {int((lf < -0.5).sum())} of {seeds_run} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0, help="Weaver seed (default 0)")
    ap.add_argument("--variants", action="store_true",
                    help="also print the sets where the verifiers beat a coin with two non-default Weaver settings")
    ap.add_argument("--subsets", type=int, default=0, metavar="DRAWS",
                    help="also print Weaver on DRAWS random subsets of 4, 8 and 12 heuristic verifiers per set where "
                         "the verifiers beat a coin")
    ap.add_argument("--pairs", default="", metavar="K[,K...]",
                    help="also print Weaver on 12 random samples of K pairs of the sets where the verifiers beat a "
                         "coin and of PandaLM (programs + length), e.g. --pairs 24,48,96")
    ap.add_argument("--few-labels", default="", metavar="F[,F...]",
                    help="also score each set on held-out pairs with a fraction F of the pairs labelled "
                         "(Weaver few_labels and supervised baselines), e.g. --few-labels 0.05,0.1,0.25")
    ap.add_argument("--first-draw", type=int, default=0,
                    help="first verifier-subset draw of --subsets (default 0; session 34 developed on draws 0-7 and "
                         "checked on 8-15)")
    args = ap.parse_args()
    from lightning_ws.programs import ProgramSandbox

    print("| set | pairs | verifiers | verifier pairwise accuracy: min .. max | first | MV | mean verifier | "
          "best single (oracle choice) | Weaver's label model / pooled mean | Weaver | Weaver - max(MV, mean), points | "
          "Weaver - mean verifier, paired bootstrap 95 % | guard | split test: gain over mean verifier ± SE, points | "
          "Weaver - max(MV, mean) without the split test | verifier groups |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    with ProgramSandbox() as sb:
        pandalm, _ = build("pandalm_test", sandbox=sb)
        print(row("pandalm_test, programs + length + 2 LLM verdicts", pandalm, args.seed), flush=True)
        no_llm = _take(pandalm, verifiers=[n for n in pandalm.verifier_names if n not in VERDICTS])
        print(row("pandalm_test, programs + length", no_llm, args.seed), flush=True)
        judges_only = _take(pandalm, verifiers=[*VERDICTS, "length"])
        print(row("pandalm_test, 2 LLM verdicts + length", judges_only, args.seed), flush=True)
        llmbar, llmbar_subsets = build("llmbar", sandbox=sb)
        print(row("llmbar, programs + length", llmbar, args.seed), flush=True)
        for sub in sorted(set(llmbar_subsets)):
            print(row(f"llmbar {sub}", _take(llmbar, np.flatnonzero(llmbar_subsets == sub)), args.seed), flush=True)
        hh, subsets = build("hh_rlhf", sandbox=sb)
        print(row("hh_rlhf, programs + length", hh, args.seed), flush=True)
        for sub in sorted(set(subsets)):
            print(row(f"hh_rlhf {sub}", _take(hh, np.flatnonzero(subsets == sub)), args.seed), flush=True)
        # the subsets where the verifiers beat a coin, for --variants and --subsets
        beat_coin = {"llmbar Natural": _take(llmbar, np.flatnonzero(llmbar_subsets == "Natural")),
                     "llmbar Processed/MT-Bench": _take(llmbar, np.flatnonzero(llmbar_subsets == "Processed/MT-Bench")),
                     "hh_rlhf helpful-base": _take(hh, np.flatnonzero(subsets == "helpful-base"))}
        if args.variants:
            informative = {"pandalm_test, programs + length + 2 LLM verdicts": pandalm,
                           "pandalm_test, programs + length": no_llm,
                           "pandalm_test, 2 LLM verdicts + length": judges_only, **beat_coin}
            for vname, kw in VARIANTS.items():
                for label, data in informative.items():
                    print(row(f"{label} [{vname}]", data, args.seed, kw), flush=True)
        if args.pairs:
            small_set_rows({"pandalm_test, programs + length": no_llm, **beat_coin},
                           tuple(int(k) for k in args.pairs.split(",")))
        if args.few_labels:
            few_label_rows({"pandalm_test, programs + length + 2 LLM verdicts": pandalm,
                            "pandalm_test, programs + length": no_llm, "llmbar, programs + length": llmbar,
                            **{f"llmbar {sub}": _take(llmbar, np.flatnonzero(llmbar_subsets == sub))
                               for sub in sorted(set(llmbar_subsets))},
                            "hh_rlhf, programs + length": hh,
                            **{f"hh_rlhf {sub}": _take(hh, np.flatnonzero(subsets == sub))
                               for sub in sorted(set(subsets))}},
                           tuple(float(f) for f in args.few_labels.split(",")))
        if args.subsets:
            subset_rows({"pandalm_test, programs + length": no_llm,
                         "pandalm_test, 2 LLM verdicts + programs + length": pandalm, **beat_coin}, args.subsets,
                        first_draw=args.first_draw)


if __name__ == "__main__":
    main()
