"""Development check (issue 17): is the label-free answer-level model limited by its EM fit or by its model family?

Weaver (arXiv 2506.18203) here uses :class:`lightning_ws.weaver.answer_model.AnswerLevelModel` label-free. With the
conditional agreement prior (``agreement="learned"``, the default until session 18) it lost to majority vote on judge
sets where majority vote is strong and the judge's error is shared by every candidate of an answer (BENCHMARKS.md,
issue-17 section). This script separates the causes, on development data only (the ``DEV`` sets of
``dev_weaver_guard.py``, data seeds 7000+; never the suite's seeds 0-11 or the held-out seeds 1000+):

1. **Parameters vs family.** For each agreement prior - ``"learned"`` (with its default bound ``beta_max=6`` on the
   agreement weights and with ``beta_max=30``) and ``"partition"`` (the default since session 18), each with the
   fixed ``size ** 0.5`` evidence of an answer's candidates (``dependence="exponent"``, the default until session
   18), and the shipped default (partition prior, candidates counted by their estimated effective number,
   ``dependence="icc"``, since session 19) - the label model
   fitted label-free is compared with the *same model* whose parameters are fitted with every problem's labels
   (``fit(..., known=correct)``). The latter is the family's ceiling at its maximum-likelihood parameters; it reads
   the labels, so it is a diagnostic, never a selector. The judge's implied single-candidate AUROC of each fit is
   printed next to that of the labelled fit.
2. **Which EM solution** (conditional prior ``"learned"``). The model keeps the best-likelihood solution of its three
   EM starts. Printed: that choice, the solution (within 2 nats of the best) whose picks agree most often with
   majority vote, the posterior averaged over those solutions, and, for comparison, the partition prior with the
   same evidence (session 18's default) and the shipped default label model.

Cells are Select@1 (part 1) or ``selected - max(majority vote, pooled mean)`` in points (part 2) of the label model
alone (guard off).

    python benchmarks/dev_weaver_ceiling.py [--sets a,b] [--seeds 6] [--rule-seeds 12] [--fresh-seeds 10]

Uses private helpers of ``Weaver`` (``_sources``) on purpose, as ``dev_weaver_guard.py`` does.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

from dev_weaver_guard import DEV

from lightning_ws.weaver import Weaver
from lightning_ws.weaver.answer_model import AnswerLevelModel
from lightning_ws.weaver.select import select_candidates
from lightning_ws.weaver.suite import make_set

_FIXED = {"dependence": "exponent"}  # the size ** 0.5 evidence of an answer's candidates (default until session 18)
VARIANTS = {"learned": {"agreement": "learned", **_FIXED},
            "learned beta_max=30": {"agreement": "learned", "beta_max": 30.0, **_FIXED},
            "partition": {"agreement": "partition", **_FIXED},
            "default (partition, icc)": {}}


def _fit(spec, data_seed: int, seed: int, lm_kwargs: dict | None = None):
    data = make_set(spec, seed=data_seed)
    w = Weaver(guard=False, seed=seed, label_model_kwargs=lm_kwargs).fit(data, "label_free")
    pooled, pm = w._sources(data)
    P = data.num_problems
    y, ids = data.correct, data.answer_ids()
    mv, pmp = w.select_with(data, "majority_vote"), w.select_with(data, "pooled_mean")
    return w, data, y, ids, pooled, pm, mv, float(max(y[np.arange(P), mv].mean(), y[np.arange(P), pmp].mean()))


def _acc(y: np.ndarray, q: np.ndarray, pm: np.ndarray) -> float:
    pick = select_candidates(q + 1e-9 * np.nan_to_num(pm), tie_break="first")[0]
    return float(y[np.arange(len(pick)), pick].mean())


def ceiling(names: list[str], seeds: int) -> None:
    """Part 1: label-free vs label-fitted parameters of the same model, mean over data seeds 7000-..."""
    print(f"\nPart 1, data seeds 7000-{7000 + seeds - 1}: Select@1 (mean over seeds) of the label model alone; "
          "'labels' = the same model with parameters fitted on every problem's labels (diagnostic only)")
    print("| set | MV | pooled mean | " + " | ".join(f"{v}: label-free / labels" for v in VARIANTS)
          + " | judge AUROC implied: " + " / ".join(VARIANTS) + " / labels |")
    print("|---|---|---|" + "---|" * len(VARIANTS) + "---|")
    for name in names:
        acc: dict[str, list[float]] = {}
        auc: dict[str, list[float]] = {}
        for s in range(seeds):
            _, _, y, ids, pooled, pm, mv, _ = _fit(DEV[name], 7000 + s, s)
            P = len(y)
            acc.setdefault("mv", []).append(float(y[np.arange(P), mv].mean()))
            acc.setdefault("pm", []).append(_acc(y, pm, pm))
            for v, kw in VARIANTS.items():
                free = AnswerLevelModel(**kw).fit(ids, pooled)
                lab = AnswerLevelModel(**kw).fit(ids, pooled, known=y.astype(np.float64))
                acc.setdefault(v, []).append(_acc(y, free.predict_proba(ids, pooled), pm))
                acc.setdefault(v + "*", []).append(_acc(y, lab.predict_proba(ids, pooled), pm))
                auc.setdefault(v, []).append(free.source_auroc()[0])
                if v == "partition":  # the last AUROC column: the partition model (size ** 0.5) fitted with labels
                    auc.setdefault("labels", []).append(lab.source_auroc()[0])
        print(f"| {name} | {np.mean(acc['mv']):.3f} | {np.mean(acc['pm']):.3f} | "
              + " | ".join(f"{np.mean(acc[v]):.3f} / {np.mean(acc[v + '*']):.3f}" for v in VARIANTS)
              + " | " + " / ".join(f"{np.mean(auc[k]):.2f}" for k in [*VARIANTS, "labels"]) + " |", flush=True)


def rules(names: list[str], seeds: int, first: int) -> None:
    """Part 2: which of the plausible EM solutions to keep; points vs max(MV, pooled mean), label model alone."""
    print(f"\nPart 2, data seeds {first}-{first + seeds - 1}: label model with the conditional prior "
          "('learned') alone (guard off), `mean / min / seeds below -0.5 point` of selected - max(MV, pooled mean), "
          "points")
    print("| set | best likelihood (as shipped) | closest to MV within 2 nats | posterior averaged within 2 nats | "
          "partition prior (default in session 18) | default since session 19 (partition, icc) | "
          "solutions within 2 nats |")
    print("|---|---|---|---|---|---|---|")
    tot: dict[str, list[float]] = {}
    for name in names:
        res: dict[str, list[float]] = {}
        nsol = []
        for s in range(seeds):
            w, _data, y, ids, pooled, pm, mv, ref = _fit(DEV[name], first + s, s, {"agreement": "learned", **_FIXED})
            P = len(y)
            qs = w.label_model_.plausible_probas(ids, pooled, max_loglik_gap=2.0)
            picks = [select_candidates(q + 1e-9 * np.nan_to_num(pm), tie_break="first")[0] for q in qs]
            agree = [float(np.mean(ids[np.arange(P), p] == ids[np.arange(P), mv])) for p in picks]
            part = Weaver(guard=False, seed=s, label_model_kwargs=_FIXED).fit(_data, "label_free").select_with(
                _data, "label_model")
            default = Weaver(guard=False, seed=s).fit(_data, "label_free").select_with(_data, "label_model")
            got = {"best": float(y[np.arange(P), picks[0]].mean()),
                   "close": float(y[np.arange(P), picks[int(np.argmax(agree))]].mean()),
                   "avg": _acc(y, np.mean(qs, axis=0), pm), "partition": float(y[np.arange(P), part].mean()),
                   "default": float(y[np.arange(P), default].mean())}
            for k, v in got.items():
                res.setdefault(k, []).append(100.0 * (v - ref))
            nsol.append(len(qs))
        cells = [f"{np.mean(v):+.1f} / {np.min(v):+.1f} / {int((np.array(v) < -0.5).sum())}" for v in res.values()]
        print(f"| {name} | " + " | ".join(cells) + f" | {np.mean(nsol):.1f} |", flush=True)
        for k, v in res.items():
            tot.setdefault(k, []).extend(v)
    print("| all | " + " | ".join(f"{np.mean(v):+.2f} / {np.min(v):+.1f} / {int((np.array(v) < -0.5).sum())} of "
                                  f"{len(v)}" for v in tot.values()) + " | |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", default=",".join(DEV))
    ap.add_argument("--seeds", type=int, default=6, help="part 1: data seeds 7000 + i")
    ap.add_argument("--rule-seeds", type=int, default=12, help="part 2, first block: data seeds 7000 + i")
    ap.add_argument("--fresh-seeds", type=int, default=10, help="part 2, second block: data seeds 7100 + i")
    args = ap.parse_args()
    names = args.sets.split(",")
    ceiling(names, args.seeds)
    rules(names, args.rule_seeds, 7000)
    if args.fresh_seeds:
        rules(names, args.fresh_seeds, 7100)


if __name__ == "__main__":
    main()
