"""Diagnostic (issue 16): ``auto`` on synthetic matrices shaped like the WRENCH sets this repository does not hold.

The shipped WRENCH sets are YouTube, SMS and TREC. The others that ``auto`` will meet are drawn here at their
sizes, from the data-set table of the WRENCH paper (arXiv 2109.11377, Table 1): rows of the train split, number of
LFs and classes, and a rough positive share for the binary relation and tabular sets. Every LF votes one class and is
better than chance (``make_regime_label_matrix(..., lf_type="single", accuracy_scale="above_chance")``); the
``u`` and coverage ranges are a guess, not fitted to the real sets.

The matrices are conditionally independent given the class. So this checks sizes, fit times and class skew, not
the LF dependence that makes real sets hard (TREC, the YouTube spam keywords). A pass here is necessary, not
sufficient.

Per shape, over seeds 0-2 (``--seeds`` draws others), it prints:

- ``auto - MV`` and ``auto - snorkel`` (snorkel 0.10, its defaults), mean and min over seeds, in points. The metric
  is accuracy, and also the positive class's F1 for the binary sets WRENCH scores by F1. Every model's ties, the
  uncovered rows included, are broken by the same seeded coin.
- `auto`'s picks.
- Median fit time, and its ratio to snorkel's median fit time on the same matrices.
- With ``--per-seed``, after the table, one row per shape and seed: ``auto``'s pick, and the metric(s) of ``auto``,
  majority vote, a label-free Dawid-Skene fit and snorkel on that matrix.

Transductive (the matrix the models were fitted on). Run:
``OMP_NUM_THREADS=1 python benchmarks/diag_wrench_shapes.py`` (about 1 minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
from bench_labelmodels import _fit_snorkel, _snorkel
from diag_rare_class_f1 import f1_pos

from lightning_ws.labelmodels import make_label_model, make_regime_label_matrix, probs_to_preds

#: name -> (rows, LFs, classes, imbalance p_0 / p_{k-1} (1 = balanced), coverage range per LF, WRENCH metric)
SHAPES = {
    "imdb": (20000, 5, 2, 1.0, (0.1, 0.4), "accuracy"),
    "yelp": (30400, 8, 2, 1.0, (0.05, 0.3), "accuracy"),
    "agnews": (96000, 9, 4, 1.0, (0.05, 0.2), "accuracy"),
    "semeval": (1749, 164, 9, 4.0, (0.002, 0.02), "accuracy"),
    "chemprot": (12861, 26, 10, 4.0, (0.01, 0.1), "accuracy"),
    "spouse": (22254, 9, 2, 11.5, (0.01, 0.08), "f1"),
    "cdr": (8430, 33, 2, 2.3, (0.01, 0.2), "f1"),
    "census": (10083, 83, 2, 3.2, (0.01, 0.3), "f1"),
    "basketball": (17970, 4, 2, 7.3, (0.05, 0.4), "f1"),
    "tennis": (6959, 6, 2, 3.5, (0.1, 0.6), "f1"),
    "commercial": (64130, 4, 2, 2.3, (0.1, 0.6), "f1"),
}
SEEDS = (0, 1, 2)
U = (0.2, 0.8)


def shape_matrix(name: str, seed: int):
    """The WRENCH-shaped synthetic matrix of shape ``name`` (a key of :data:`SHAPES`) and data seed ``seed``: the
    ``RegimeLabelMatrix`` this script and the other WRENCH-shape diagnostics score."""
    n, m, k, imb, cov, _metric = SHAPES[name]
    return make_regime_label_matrix(n, k=k, m=m, lf_type="single", coverage=cov, accuracy=U, imbalance=imb,
                                    accuracy_scale="above_chance", seed=seed)


def _pred(proba: np.ndarray) -> np.ndarray:
    return probs_to_preds(proba, "random", seed=0)[0]


def _cell(x: list[float]) -> str:
    return f"{np.mean(x):+.2f} / {np.min(x):+.2f}" if x else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--auto-support", default="auto", choices=["auto", "voted", "model"],
                    help="AutoLabelModel(support=...): 'auto' (default) uses the pick's own probabilities when its model "
                         "reproduces the LFs' pairwise co-firing, else restricts covered rows to their voted classes "
                         "('voted'); 'model' never restricts")
    ap.add_argument("--seeds", default=",".join(str(s) for s in SEEDS),
                    help="data seeds, comma-separated (default 0,1,2, the seeds of the table in BENCHMARKS.md)")
    ap.add_argument("--per-seed", action="store_true",
                    help="also print one row per shape and seed (auto's pick; auto, MV, Dawid-Skene, snorkel)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    per_seed: list[str] = []
    SL = _snorkel()
    print("| shape | rows x LFs, k | metric | auto - MV: mean / min | auto - snorkel: mean / min | auto picks | "
          "auto fit s | x snorkel |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (n, m, k, imb, cov, metric) in SHAPES.items():
        mets = ("accuracy", "f1") if metric == "f1" else ("accuracy",)
        d_mv: dict[str, list[float]] = {"accuracy": [], "f1": []}
        d_sn: dict[str, list[float]] = {"accuracy": [], "f1": []}
        picks: dict[str, int] = {}
        t_auto, t_snk = [], []
        for seed in seeds:
            R = shape_matrix(name, seed)
            L, y = R.L, R.y
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                auto = make_label_model("auto", num_classes=k, seed=0, support=args.auto_support).fit(L)
                t_auto.append(time.perf_counter() - t0)
                mv = make_label_model("majority_vote", num_classes=k, seed=0).fit(L)
                ds = make_label_model("dawid_skene", num_classes=k, seed=0).fit(L) if args.per_seed else None
            pa, pm = _pred(auto.predict_proba(L)), _pred(mv.predict_proba(L))
            picks[auto.selected] = picks.get(auto.selected, 0) + 1
            ps = None
            if SL is not None:
                t0 = time.perf_counter()
                lm = _fit_snorkel(SL, L, k, None, 100, 0)
                t_snk.append(time.perf_counter() - t0)
                ps = _pred(lm.predict_proba(L.astype(np.int64)))
            pd_ = _pred(ds.predict_proba(L)) if ds is not None else None
            cells = []
            for met in mets:
                score = f1_pos if met == "f1" else (lambda yy, p: 100.0 * float((p == yy).mean()))
                d_mv[met].append(score(y, pa) - score(y, pm))
                if ps is not None:
                    d_sn[met].append(score(y, pa) - score(y, ps))
                if pd_ is not None:
                    sn_cell = f"{score(y, ps):.2f}" if ps is not None else "-"
                    cells.append(f"{met} {score(y, pa):.2f} / {score(y, pm):.2f} / {score(y, pd_):.2f} / {sn_cell}")
            if cells:
                per_seed.append(f"| {name} | {seed} | {auto.selected} | {'; '.join(cells)} |")
        ratio = statistics.median(t_auto) / statistics.median(t_snk) if t_snk else float("nan")
        picks_s = ", ".join(f"{p} {c}" for p, c in sorted(picks.items()))
        for met in mets:
            print(f"| {name} | {n} x {m}, k={k} | {met} | {_cell(d_mv[met])} | {_cell(d_sn[met])} | {picks_s} | "
                  f"{statistics.median(t_auto):.2f} | {ratio:.2f} |", flush=True)
    if per_seed:
        print("\n| shape | seed | auto picks | auto / MV / Dawid-Skene / snorkel |")
        print("|---|---|---|---|")
        print("\n".join(per_seed))


if __name__ == "__main__":
    main()
