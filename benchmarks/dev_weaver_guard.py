"""Development check (issue 17): label-free guard policies for Weaver (arXiv 2506.18203) on dev judge sets.

Not a benchmark of the shipped pipeline: it records the *negative* results of one development round, so they can be
re-run. Everything is on development data only - 64 x 64 x 32 judge-draw sets written for this check (``DEV``: free
form and multiple choice, majority vote strong, the judge's error partly shared by every candidate of an answer) and
the three in-suite judge sets, all drawn with seeds 7000+ (never the suite's seeds 0-11 or the held-out seeds 1000+
of ``bench_weaver_suite.py``). Two seed blocks: 7000-7011 (where the variants were first looked at) and 7100-7109
(fresh seeds, the honest check).

For every set and seed it fits the default ``Weaver`` once (guard off), takes the picks of the label model, the
pooled mean, majority vote and two *tempered* label-model posteriors (log prior + lambda x verifier evidence,
lambda = 0.5 / 0.25: a product of the label model's posterior and its agreement prior), and the guard's cross-fitted
per-problem estimates of P(correct) at those picks under three evaluators fitted on the other half of the problems:
``dependence="icc"`` (the default answer-level model since session 19: the shipped guard's evaluator),
``dependence="exponent"`` (the fixed ``size ** 0.5``: the shipped guard's second opinion; the evaluator until
session 18) and ``evidence="random_effects"``. Then it replays guard policies on those numbers (no refit) and
prints, per set, the mean and minimum over seeds of ``selected - max(majority vote, pooled mean)`` (true Select@1,
points) and the number of seeds more than 0.5 point below. Policies:

* ``current``: the guard shipped in session 20: evaluator ``icc``, second opinion ``exponent``, which falls back to
  majority vote only where both evaluators rank it at least as high as the pooled mean. Since session 21 the shipped
  Weaver removes per-problem offsets (``problem_offsets="auto"``) and its evaluators read the adjusted sources; this
  script replays the policies on the unadjusted sources, so ``current`` is no longer exactly ``Weaver()`` (the shipped
  Weaver with and without offsets: ``dev_weaver_offsets.py``);
* ``session19``: the same, but the second opinion alone ranks majority vote against the pooled mean (session 19);
* ``icc_only``: the ``icc`` evaluator alone, no second opinion (``guard_check=False``);
* ``session18``: the guard shipped until session 18: evaluator ``exponent``, dependence check ``icc`` (with
  ``--label-model-kwargs '{"dependence": "exponent"}'`` this is the session-18 Weaver);
* the earlier development round's policies, each a variant of ``session18``:
* ``+re_check``: additionally require the label model to beat majority vote under the random-effects evaluator;
* ``re_check``: the random-effects evaluator instead of ``icc`` in the check, majority vote as its fallback;
* ``fb_both``: majority vote stays the fallback unless *both* the ``exponent`` and the ``icc`` evaluator rank the
  pooled mean above it (``session18`` asks the ``exponent`` evaluator only), the rest as ``session18``;
* ``paired_fb``: the check falls back to majority vote unless the pooled mean beats it by one standard error under
  every plausible ``icc`` solution (a paired test instead of the min-over-solutions point estimates);
* ``blend_fb``: where the check picks majority vote, pick the tempered (lambda = 0.5) posterior instead;
* ``tempered``: the tempered (lambda = 0.5) posterior replaces the label model everywhere, guard unchanged.

It also prints, per set, the evaluators' estimates of majority vote's and the label model's accuracy (best EM
solution and the minimum over the plausible ones) next to the true values, the ``icc`` model's label-free estimate of
the judge's within-answer correlation next to the same estimate computed with the true labels, and the judge's
implied (label-free) single-candidate AUROC next to its true AUROC.

    python benchmarks/dev_weaver_guard.py [--sets a,b] [--seeds 12] [--fresh-seeds 10] [--label-model-kwargs JSON]

Uses private helpers of ``lightning_ws.weaver.select.Weaver`` (``_sources``, ``_guard_estimates``) on purpose: it
replays the guard's own computation.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

from sklearn.metrics import roc_auc_score

from lightning_ws.weaver import Weaver
from lightning_ws.weaver.answer_model import (
    AnswerGroups,
    AnswerLevelModel,
    _re_stats,
    _within_answer_icc,
)
from lightning_ws.weaver.select import GUARD_CHECK_EVALUATOR, GUARD_EVALUATOR, _mv_pick, select_candidates
from lightning_ws.weaver.suite import SUITE, GroupSpec, SetSpec, make_set

MV, PM, LM = "majority_vote", "pooled_mean", "label_model"
EVALUATORS = {"icc": {"dependence": "icc"}, "exponent": {"dependence": "exponent"},
              "re": {"evidence": "random_effects"}}
assert AnswerLevelModel(**GUARD_EVALUATOR).dependence == "icc" and \
    GUARD_CHECK_EVALUATOR == {"dependence": "exponent", "monotone": False}, \
    "the shipped guard changed: update the `current` policy"


def _judge(strength: float, kind: str = "judge_verdict", bias: float = 0.0, answer: float = 0.3
           ) -> tuple[GroupSpec, ...]:
    return (GroupSpec(strength, copies=32, shared=1.0, answer=answer, kind=kind, bias=bias, name="judge"),)


_C = {"missing": 0.01, "num_problems": 64, "num_candidates": 64}
#: Development sets (none of them is a held-out set of bench_weaver_suite.py).
DEV: dict[str, SetSpec] = {
    "dv_free_r45_s05_prob": SetSpec(0.45, _judge(0.5, kind="judge_prob", answer=0.6), num_wrong=15, **_C),
    "dv_free_r35_s07_prob": SetSpec(0.35, _judge(0.7, kind="judge_prob", answer=0.45), num_wrong=25, **_C),
    "dv_free_r50_s06_verd": SetSpec(0.50, _judge(0.6, answer=0.5), num_wrong=20, **_C),
    "dv_free_r30_s09_prob": SetSpec(0.30, _judge(0.9, kind="judge_prob", answer=0.3), num_wrong=20, **_C),
    "dv_mc4_r55_s05_yes": SetSpec(0.55, _judge(0.5, bias=1.0), num_wrong=3, distractor_concentration=4.0, **_C),
    "dv_mc4_r75_s035": SetSpec(0.75, _judge(0.35), num_wrong=3, distractor_concentration=4.0, **_C),
    "dv_mc6_r60_s045": SetSpec(0.60, _judge(0.45), num_wrong=5, distractor_concentration=3.0, **_C),
    "dv_mc10_r35_s065": SetSpec(0.35, _judge(0.65), num_wrong=9, distractor_concentration=1.5, **_C),
    "dv_mc10_r25_s08_prob": SetSpec(0.25, _judge(0.8, kind="judge_prob", answer=0.4), num_wrong=9,
                                    distractor_concentration=1.0, **_C),
    "dv_mc4_r30_s09": SetSpec(0.30, _judge(0.9, kind="judge_prob"), num_wrong=3, distractor_concentration=2.0,
                              **_C),
    "judge_draws": SUITE["judge_draws"],
    "judge_draws_prob": SUITE["judge_draws_prob"],
    "judge_vs_majority": SUITE["judge_vs_majority"],
}


def tempered_picks(w: Weaver, ids: np.ndarray, pooled: np.ndarray, pm: np.ndarray, lam: float) -> np.ndarray:
    """``(P,)`` argmax of log agreement prior + ``lam`` x verifier evidence of the fitted answer-level model."""
    lm = w.label_model_
    g = AnswerGroups(ids)
    v = lm._log_prior(g, lm.beta_) + lam * lm._evidence(g, lm._obs(g, pooled))
    return (v[g.group] + 1e-9 * np.nan_to_num(pm)).argmax(axis=1)


def collect(spec: SetSpec, data_seed: int, seed: int, lm_kwargs: dict) -> dict:
    """Picks, true correctness at them and the three evaluators' per-solution, per-problem estimates."""
    data = make_set(spec, seed=data_seed)
    w = Weaver(seed=seed, guard=False, label_model_kwargs=lm_kwargs).fit(data, "label_free")
    pooled, pm = w._sources(data)
    ids, y = data.answer_ids(), data.correct
    P = len(ids)
    picks = {LM: w.select_with(data, LM), PM: select_candidates(pm, tie_break="first")[0], MV: _mv_pick(ids, pm)}
    for lam in (0.5, 0.25):
        picks[f"t{lam}"] = tempered_picks(w, ids, pooled, pm, lam)
    perm = np.random.default_rng(seed + 7919).permutation(P)  # the guard's folds
    folds = [np.sort(perm[: P // 2]), np.sort(perm[P // 2:])]
    fold_picks = [{k: v[f] for k, v in picks.items()} for f in folds]
    out = {e: w._guard_estimates(ids, pooled, folds, fold_picks, kw) for e, kw in EVALUATORS.items()}
    out["true"] = {k: y[np.arange(P), v].astype(float) for k, v in picks.items()}
    # within-answer correlation of the (first) source: the icc model's label-free estimate on all problems, and the
    # same method-of-moments estimate with the EM posterior replaced by the true answer correctness
    g = AnswerGroups(ids)
    icc = AnswerLevelModel(**EVALUATORS["icc"]).fit(ids, pooled)
    truth = g.group_mean(y[:, :, None].astype(np.float64))[:, 0]
    out["rho"] = (float(icc.rho_[0]), float(_within_answer_icc(_re_stats(g, pooled), truth)[0]),
                  float(icc.source_auroc()[0]))
    ok = ~np.isnan(pooled[:, :, 0])
    out["auroc_true"] = float(roc_auc_score(y[ok], pooled[:, :, 0][ok]))
    return out


def _est(E: list, k: str) -> float:
    return min(float(pp[k].mean()) for pp in E)


def _beats(E: list, a: str, b: str, z: float = 1.0) -> bool:
    for pp in E:
        d = pp[a] - pp[b]
        if not d.mean() > z * d.std(ddof=1) / np.sqrt(len(d)) + 1e-12:
            return False
    return True


def _guard(c: dict, lm: str = LM, check: bool = True, first: str = "exponent", second: str = "icc",
           check_needs_fallback_mv: bool = False) -> tuple[str, str | None]:
    """The guard's decision. ``check_needs_fallback_mv`` (the shipped guard since session 20): the check falls back to
    majority vote only where the first evaluator's fallback is majority vote too."""
    e1 = c[first]
    simple = MV if _est(e1, MV) >= _est(e1, PM) - 1e-12 else PM
    if not _beats(e1, lm, simple):
        return simple, "first"
    if not check:
        return lm, None
    e2 = c[second]
    if (_est(e2, MV) >= _est(e2, PM) - 1e-12 and not _beats(e2, lm, MV)
            and (simple == MV or not check_needs_fallback_mv)):
        return MV, "check"
    return lm, None


def _plus_re(c: dict) -> str:
    ch = _guard(c)[0]
    return ch if ch != LM else (LM if _beats(c["re"], LM, MV) else MV)


def _re_check(c: dict) -> str:
    ch = _guard(c, check=False)[0]
    return ch if ch != LM else (LM if _beats(c["re"], LM, MV) else MV)


def _paired(c: dict) -> str:
    ch = _guard(c, check=False)[0]
    if ch != LM or _beats(c["icc"], LM, MV):
        return ch
    return LM if _beats(c["icc"], PM, MV) else MV


def _fb_both(c: dict) -> str:
    e1, e2 = c["exponent"], c["icc"]
    simple = MV if (_est(e1, MV) >= _est(e1, PM) - 1e-12 or _est(e2, MV) >= _est(e2, PM) - 1e-12) else PM
    if not _beats(e1, LM, simple):
        return simple
    if _est(e2, MV) >= _est(e2, PM) - 1e-12 and not _beats(e2, LM, MV):
        return MV
    return LM


def _blend(c: dict) -> str:
    ch, why = _guard(c)
    return "t0.5" if why == "check" else ch


POLICIES = {"current": lambda c: _guard(c, first="icc", second="exponent", check_needs_fallback_mv=True)[0],
            "session19": lambda c: _guard(c, first="icc", second="exponent")[0],
            "icc_only": lambda c: _guard(c, check=False, first="icc")[0],
            "session18": lambda c: _guard(c)[0], "fb_both": _fb_both, "+re_check": _plus_re, "re_check": _re_check, "paired_fb": _paired,
            "blend_fb": _blend, "tempered": lambda c: _guard(c, lm="t0.5")[0]}


def table(res: dict[str, list[dict]], title: str) -> None:
    print(f"\n{title}: per set, `mean / min / seeds below -0.5 point` of selected - max(MV, pooled mean), points")
    print("| set | " + " | ".join(POLICIES) + " |")
    print("|---|" + "---|" * len(POLICIES))
    tot: dict[str, list[float]] = {p: [] for p in POLICIES}
    for name, cs in res.items():
        cells = []
        for p, fn in POLICIES.items():
            d = 100 * np.array([c["true"][fn(c)].mean() - max(c["true"][MV].mean(), c["true"][PM].mean())
                                for c in cs])
            tot[p] += d.tolist()
            cells.append(f"{d.mean():+.1f} / {d.min():+.1f} / {int((d < -0.5).sum())}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    print("| all | " + " | ".join(f"{np.mean(v):+.2f} / {np.min(v):+.1f} / {int((np.array(v) < -0.5).sum())}"
                                   for v in tot.values()) + " |")


def diagnostics(res: dict[str, list[dict]]) -> None:
    print("\nTrue Select@1 of the picks (mean over seeds) and the evaluators' estimates (best EM solution / minimum "
          "over the plausible ones)")
    print("| set | MV | pooled mean | label model | tempered 0.5 | tempered 0.25 | MV est. icc | MV est. exponent | "
          "MV est. re | LM est. icc | rho: icc EM / with true labels | judge AUROC: icc implied / true |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, cs in res.items():
        t = {k: np.mean([c["true"][k].mean() for c in cs]) for k in cs[0]["true"]}
        ev = {e: (np.mean([c[e][0][MV].mean() for c in cs]), np.mean([_est(c[e], MV) for c in cs]))
              for e in EVALUATORS}
        lm_icc = (np.mean([c["icc"][0][LM].mean() for c in cs]), np.mean([_est(c["icc"], LM) for c in cs]))
        print(f"| {name} | {t[MV]:.3f} | {t[PM]:.3f} | {t[LM]:.3f} | {t['t0.5']:.3f} | {t['t0.25']:.3f} | "
              + " | ".join(f"{a:.3f} / {b:.3f}" for a, b in ev.values()) + f" | {lm_icc[0]:.3f} / {lm_icc[1]:.3f} | "
              f"{np.mean([c['rho'][0] for c in cs]):.3f} / {np.mean([c['rho'][1] for c in cs]):.3f} | "
              f"{np.mean([c['rho'][2] for c in cs]):.3f} / {np.mean([c['auroc_true'] for c in cs]):.3f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", default=",".join(DEV))
    ap.add_argument("--seeds", type=int, default=12, help="first block: data seeds 7000 + i")
    ap.add_argument("--fresh-seeds", type=int, default=10, help="second block: data seeds 7100 + i")
    ap.add_argument("--label-model-kwargs", default="{}",
                    help='JSON label_model_kwargs of the Weaver fit, e.g. \'{"dependence": "icc"}\' (default: none)')
    args = ap.parse_args()
    names = args.sets.split(",")
    lm_kwargs = json.loads(args.label_model_kwargs)
    print(f"label_model_kwargs: {lm_kwargs}")
    first = {n: [collect(DEV[n], 7000 + s, s, lm_kwargs) for s in range(args.seeds)] for n in names}
    table(first, f"Seeds 7000-{7000 + args.seeds - 1}")
    diagnostics(first)
    if args.fresh_seeds:
        fresh = {n: [collect(DEV[n], 7100 + s, s, lm_kwargs) for s in range(args.fresh_seeds)] for n in names}
        table(fresh, f"Fresh seeds 7100-{7100 + args.fresh_seeds - 1}")


if __name__ == "__main__":
    main()
