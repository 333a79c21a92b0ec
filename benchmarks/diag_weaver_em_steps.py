"""Diagnostic (issue 17): how many EM steps Weaver's default label model takes, and what more steps would do.

:class:`lightning_ws.weaver.answer_model.AnswerLevelModel` (the label model of ``Weaver()``, arXiv 2506.18203) runs EM
until the mean log-likelihood per problem gains less than ``tol`` (1e-6) or ``max_iter`` (100) steps. With
``dependence="icc"`` (the default since session 19) an answer's candidates enter the evidence with weights (their
effective number over their count), while the M-step counts every candidate once; the quantity EM tracks is then a
pseudo-likelihood that an EM step need not increase, and the fit stops at its first decrease. This script shows where
that happens and what it is worth, on development data only (the ``DEV`` judge sets of ``dev_weaver_guard.py``, which
include the three in-suite judge sets, and the other suite sets, all at data seeds 7000+; never the suite's seeds
0-11 or the held-out seeds 1000+ of ``bench_weaver_suite.py``):

1. Per set: the EM steps of the default fit (the best of its three starts), and Select@1 of the label model alone
   (guard off) minus max(majority vote, pooled mean), in points, for the default stopping rule and for 100 steps
   (``tol=-inf``), with ``dependence="icc"`` and with ``dependence="exponent"`` (the fixed ``size ** 0.5``).
2. ``judge_draws_prob`` (one judge x 32 draws of a [0, 1] score, the regime issue 17 reports): the fit after 2, 5,
   10, 20, 40 and 100 steps (``tol=-inf``, the orientation rule off so the raw EM path shows): the best of the
   default starts, and the scores-only start begun at the true answers (``init`` = the labels; a diagnostic, it reads
   them): Select@1, the judge's implied AUROC, ``rho``, ``gamma`` and the mean correct rate of the fitted count
   model.
3. The same set: per EM start of the default fit, its log-likelihood (total over the 64 problems) and Select@1.

    python benchmarks/diag_weaver_em_steps.py [--seeds 6]

Uses a private helper of ``Weaver`` (``_sources``) on purpose, as ``dev_weaver_guard.py`` does.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

from dev_weaver_guard import DEV

from lightning_ws.weaver import Weaver
from lightning_ws.weaver.answer_model import AnswerLevelModel
from lightning_ws.weaver.select import _mv_pick, select_candidates
from lightning_ws.weaver.suite import SUITE, make_set

SETS = {**DEV, **{k: v for k, v in SUITE.items() if k not in DEV}}
VARIANTS = {"icc": {}, "icc, 100 steps": {"tol": -np.inf},
            "exponent": {"dependence": "exponent"}, "exponent, 100 steps": {"dependence": "exponent", "tol": -np.inf}}


def prepare(spec, data_seed: int, seed: int):
    data = make_set(spec, seed=data_seed)
    w = Weaver(seed=seed, guard=False).fit(data, "label_free")
    pooled, pm = w._sources(data)
    ids, y = data.answer_ids(), data.correct
    P = len(ids)
    base = max(y[np.arange(P), _mv_pick(ids, pm)].mean(), y[np.arange(P), select_candidates(pm, tie_break="first")[0]].mean())
    return ids, pooled, pm, y, float(base)


def select_at_1(q: np.ndarray, pm: np.ndarray, y: np.ndarray) -> float:
    return float(y[np.arange(len(y)), (q + 1e-9 * np.nan_to_num(pm)).argmax(axis=1)].mean())


def part1(seeds: int) -> None:
    print(f"Part 1: per set, data seeds 7000-{7000 + seeds - 1}. EM steps of the default fit (each seed), then "
          "`mean / min / seeds below -0.5` of label model alone - max(MV, pooled mean), points")
    print("| set | EM steps (default fit) | " + " | ".join(VARIANTS) + " |")
    print("|---|---|" + "---|" * len(VARIANTS))
    tot: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for name, spec in SETS.items():
        steps, cells = [], {v: [] for v in VARIANTS}
        for s in range(seeds):
            ids, pooled, pm, y, base = prepare(spec, 7000 + s, s)
            for v, kw in VARIANTS.items():
                m = AnswerLevelModel(**kw).fit(ids, pooled)
                if v == "icc":
                    steps.append(int(m.report_["iterations"]))
                cells[v].append(100 * (select_at_1(m.predict_proba(ids, pooled), pm, y) - base))
        for v in VARIANTS:
            tot[v] += cells[v]
        print(f"| {name} | {steps} | " + " | ".join(
            f"{np.mean(c):+.1f} / {np.min(c):+.1f} / {int((np.array(c) < -0.5).sum())}" for c in cells.values()) + " |",
            flush=True)
    print("| all | | " + " | ".join(f"{np.mean(c):+.2f} / {np.min(c):+.1f} / {int((np.array(c) < -0.5).sum())}"
                                    for c in tot.values()) + " |")


def _solution_cells(m: AnswerLevelModel, ids: np.ndarray, pooled: np.ndarray, pm: np.ndarray, y: np.ndarray,
                    start: list[float] | None) -> str:
    """Select@1 / implied AUROC / rho / gamma / mean correct rate of the best solution, or of the EM start ``start``."""
    qs = m.plausible_probas(ids, pooled, max_loglik_gap=np.inf)
    sols = sorted(m.solutions_, key=lambda x: -x["ll"])
    i = 0 if start is None else next(j for j, sol in enumerate(sols) if sol["start"] == start)
    sol = sols[i]
    a, b = float(sol["share_h"][0]), float(sol["share_h"][1])
    return (f"{select_at_1(qs[i], pm, y):.3f} / {m._implied_auroc(sol['log_f'], sol['re'])[0]:.2f} / "
            f"{sol['rho'][0]:.2f} / {sol['gamma']:.2f} / {a / (a + b):.2f}")


def part2(seeds: int) -> None:
    print("\nPart 2: judge_draws_prob, the fit after n EM steps (tol=-inf, orient=False): Select@1 / judge AUROC "
          "implied / rho / gamma / mean correct rate of the count model. `default`: the best of the three starts; "
          "`from the truth`: the scores-only start with init = the true answers (reads the labels: a diagnostic)")
    steps = (2, 5, 10, 20, 40, 100)
    print("| data seed | start | " + " | ".join(f"{n} steps" for n in steps) + " |")
    print("|---|---|" + "---|" * len(steps))
    for s in range(seeds):
        ids, pooled, pm, y, _ = prepare(SETS["judge_draws_prob"], 7000 + s, s)
        for label, init, start in (("default", None, None), ("from the truth", 10.0 * y.astype(np.float64), [2.0, 0.0])):
            cells = [_solution_cells(AnswerLevelModel(max_iter=n, tol=-np.inf, orient=False).fit(ids, pooled, init=init),
                                     ids, pooled, pm, y, start) for n in steps]
            print(f"| {7000 + s} | {label} | " + " | ".join(cells) + " |", flush=True)


def part3(seeds: int) -> None:
    print("\nPart 3: judge_draws_prob, the default fit's EM solutions (one per start, best log-likelihood first): "
          "total log-likelihood / Select@1")
    print("| data seed | EM steps | solutions |")
    print("|---|---|---|")
    for s in range(seeds):
        ids, pooled, pm, y, _ = prepare(SETS["judge_draws_prob"], 7000 + s, s)
        m = AnswerLevelModel().fit(ids, pooled)
        qs = m.plausible_probas(ids, pooled, max_loglik_gap=np.inf)
        sols = sorted(m.solutions_, key=lambda x: -x["ll"])
        cells = [f"start {sol['start']}: {sol['ll'] * len(ids):.1f} / {select_at_1(q, pm, y):.3f}"
                 for sol, q in zip(sols, qs)]
        print(f"| {7000 + s} | {m.report_['iterations']} | " + "; ".join(cells) + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=6, help="data seeds 7000 + i")
    args = ap.parse_args()
    part1(args.seeds)
    part2(args.seeds)
    part3(args.seeds)


if __name__ == "__main__":
    main()
