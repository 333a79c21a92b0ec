"""Development check (issue 17): do a few labelled problems close Weaver's gap on the judge sets it loses?

Weaver (arXiv 2506.18203) label-free still falls below max(majority vote, mean judge) on some seeds of the 64 x 64 x
32 judge-draw sets (BENCHMARKS.md, issue-17 section). A user who can label a handful of problems has two options this
script measures, on the held-out sets of ``bench_weaver_suite.py`` and the development sets of
``dev_weaver_guard.py`` (data seeds 3000+, used by no other script):

* ``few_labels``: ``Weaver().fit(data, "few_labels", dev_problems=...)`` - the shipped mode: the labelled problems'
  answers are clamped in EM, the guard is unchanged (it reads no label);
* ``+ dev guard`` (a policy replayed here, not in the library): pick among the guard's three selectors (label model,
  pooled mean, majority vote) the one with the best Select@1 on the labelled problems (ties: the label-free guard's
  own choice first), on top of the ``few_labels`` fit or of a label-free fit.

Per set and seed the problems are split by :func:`~lightning_ws.weaver.report._dev_eval_split` into a labelled dev
part (``--dev-fraction`` of 64) and the rest; every number is true Select@1 on the rest, as ``selected - max(majority
vote, mean judge)`` in points (both baselines label-free, on the same problems). Cells: mean over seeds / seeds more
than 0.5 point below (with 48 evaluation problems one problem is 2.1 points). Label-free Weaver is fitted on the
evaluation problems only, as in ``weaver_report``.

Run: ``python benchmarks/dev_weaver_few_labels.py`` (both dev fractions, 6 seeds; about 2 minutes on 2 cores).
"""

from __future__ import annotations

import argparse

import numpy as np
from bench_weaver_suite import _heldout_specs
from dev_weaver_guard import DEV

from lightning_ws.weaver import Weaver
from lightning_ws.weaver.report import _dev_eval_split, naive_ensemble_scores
from lightning_ws.weaver.select import ScoreNormalizer, majority_vote_select, select_candidates
from lightning_ws.weaver.suite import make_set

SELECTORS = ("label_model", "pooled_mean", "majority_vote")
COLUMNS = {"lf": "label-free", "fl": "few_labels", "flg": "few_labels + dev guard", "lfg": "label-free + dev guard"}


def _acc(y: np.ndarray, sel: np.ndarray) -> float:
    return float(y[np.arange(len(sel)), sel].mean())


def _dev_guard(w: Weaver, d_dev, y_dev: np.ndarray, d_ev, y_ev: np.ndarray) -> float:
    """Select@1 on the evaluation problems of the selector that is best on the labelled ones."""
    dev_acc = {n: _acc(y_dev, w.select_with(d_dev, n)) for n in SELECTORS}
    order = [w.choice_] + [n for n in SELECTORS if n != w.choice_]
    pick = next(n for n in order if dev_acc[n] >= max(dev_acc.values()) - 1e-12)
    return _acc(y_ev, w.select_with(d_ev, pick))


def run(dev_fraction: float, seeds: int) -> None:
    specs = {**_heldout_specs(), **DEV}
    print(f"\ndev fraction {dev_fraction} of 64 problems, data seeds 3000-{3000 + seeds - 1}: `mean / seeds below "
          f"-0.5` of selected - max(MV, mean judge) on the evaluation problems, points")
    print("| set | MV | mean judge | " + " | ".join(COLUMNS.values()) + " |")
    print("|---|---|---|" + "---|" * len(COLUMNS))
    pooled = {k: [] for k in COLUMNS}
    for name, spec in specs.items():
        r = {k: [] for k in ("mv", "mean", *COLUMNS)}
        for s in range(seeds):
            data = make_set(spec, seed=3000 + s)
            y = data.require_labels("dev_weaver_few_labels")
            dev, ev = _dev_eval_split(data.num_problems, dev_fraction, s)
            d_dev, d_ev = data.subset(dev), data.subset(ev)
            r["mv"].append(_acc(y[ev], majority_vote_select(d_ev.answer_ids())))
            mean_judge = naive_ensemble_scores(ScoreNormalizer("quantile").fit_transform(d_ev.scores))
            r["mean"].append(_acc(y[ev], select_candidates(mean_judge, tie_break="first")[0]))
            r["lf"].append(_acc(y[ev], Weaver(seed=s).fit(d_ev, "label_free").select(d_ev)))
            both = data.subset(np.concatenate([dev, ev]))  # dev problems first: indices 0 .. len(dev) - 1
            wf = Weaver(seed=s).fit(both, "few_labels", dev_problems=np.arange(len(dev)))
            r["fl"].append(_acc(y[ev], wf.select(d_ev)))
            r["flg"].append(_dev_guard(wf, d_dev, y[dev], d_ev, y[ev]))
            r["lfg"].append(_dev_guard(Weaver(seed=s).fit(both, "label_free"), d_dev, y[dev], d_ev, y[ev]))
        base = np.maximum(r["mv"], r["mean"])
        cells = []
        for k in COLUMNS:
            d = (np.asarray(r[k]) - base) * 100
            pooled[k].extend(d.tolist())
            cells.append(f"{d.mean():+.1f} / {int((d < -0.5).sum())}")
        print(f"| {name} | {np.mean(r['mv']):.3f} | {np.mean(r['mean']):.3f} | " + " | ".join(cells) + " |",
              flush=True)
    print("| all | | | " + " | ".join(f"{np.mean(v):+.2f} / {int((np.asarray(v) < -0.5).sum())} of {len(v)}"
                                      for v in pooled.values()) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dev-fraction", type=float, nargs="+", default=[0.25, 0.125])
    ap.add_argument("--seeds", type=int, default=6)
    args = ap.parse_args()
    for f in args.dev_fraction:
        run(f, args.seeds)


if __name__ == "__main__":
    main()
