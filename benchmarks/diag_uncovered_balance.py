"""Diagnostic (issue 16): which class ``auto`` gives the rows where every LF abstains when it keeps majority vote.

Such rows get the class balance. When ``auto`` keeps majority vote, that balance is label-free and comes from one of
two estimates (``AutoLabelModel(uncovered_balance=...)``):

* ``vote_share`` (the default): majority vote's mean vote share over the covered rows. It describes the covered rows,
  weighted by how often each class's LFs fire, so with single-class LFs of unequal coverage it can name a rare class.
* ``em``: the class prior of a label-free Dawid-Skene fit on the same matrix (an estimate of the class mix of all
  rows under conditionally independent LFs); a label-swapped fit falls back to the vote shares.

For every matrix on which ``auto`` keeps majority vote and some rows get no vote, it prints the share of such rows,
the accuracy on them of each estimate's class, and the whole-matrix accuracy of ``auto`` with each, in %. Matrices:

* the shipped WRENCH sets (YouTube, SMS, TREC), fitted on train and scored on train and test, with all their LFs and
  with the random LF subsets of ``diag_lf_subsets.py`` (a quarter, half or three quarters of the LFs, 8 draws each);
* synthetic matrices shaped like the WRENCH sets this repository does not hold (``diag_wrench_shapes.py``:
  conditionally independent single-class LFs better than chance), seeds 0-2 and 10-15, scored transductively.

Every model's ties are broken by the same seeded coin (``diag_wrench_shapes._pred``). Gold labels score only.

Run: ``OMP_NUM_THREADS=1 python benchmarks/diag_uncovered_balance.py`` (about 4 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from diag_lf_subsets import FRACTIONS, SETS
from diag_wrench_shapes import SHAPES, U, _pred

from lightning_ws.data import load_wrench
from lightning_ws.labelmodels import AutoLabelModel, make_regime_label_matrix


def _fit_both(L: np.ndarray, k: int) -> tuple[AutoLabelModel, AutoLabelModel]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (AutoLabelModel(k, seed=0, uncovered_balance="vote_share").fit(L),
                AutoLabelModel(k, seed=0, uncovered_balance="em").fit(L))


def _row(name: str, split: str, L: np.ndarray, y: np.ndarray, vs: AutoLabelModel, em: AutoLabelModel,
         out: list[tuple[str, float]]) -> None:
    unc = ~(L >= 0).any(axis=1)
    if not unc.any():
        return
    acc = {}
    for tag, model in (("vote_share", vs), ("em", em)):
        pred = _pred(model.predict_proba(L))
        acc[tag] = (100.0 * float((pred[unc] == y[unc]).mean()), 100.0 * float((pred == y).mean()))
    src = (em.fit_report_.get("uncovered_balance") or {}).get("source", "-")
    d = acc["em"][1] - acc["vote_share"][1]
    out.append((name.split(":")[0], d))
    print(f"| {name} | {split} | {unc.mean():.2f} | {acc['vote_share'][0]:.1f} | {acc['em'][0]:.1f} | "
          f"{acc['vote_share'][1]:.2f} | {acc['em'][1]:.2f} | {d:+.2f} | {src} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=8, help="LF subsets per WRENCH set and size")
    ap.add_argument("--seeds", default="0,1,2,10,11,12,13,14,15", help="data seeds of the WRENCH-shaped matrices")
    args = ap.parse_args()
    print("| matrix | scored on | rows without a vote | vote share: acc there | EM prior: acc there | "
          "auto (vote share) | auto (EM prior) | EM - vote share | balance used by em |")
    print("|---|---|---|---|---|---|---|---|---|")
    real: list[tuple[str, float]] = []
    synth: list[tuple[str, float]] = []
    for task in SETS:
        S = {s: load_wrench(task, s) for s in ("train", "test")}
        W = {s: np.asarray(S[s].weak_labels) for s in S}
        y = {s: np.asarray(S[s].labels) for s in S}
        k, m = len(S["train"].class_names), W["train"].shape[1]
        draws = [("all", np.arange(m))]
        for frac in FRACTIONS:
            size = max(3, round(frac * m))
            for d in range(args.draws):  # the draws of diag_lf_subsets.py
                draws.append((f"{size} of {m} #{d}",
                               np.sort(np.random.default_rng([d, size, k]).choice(m, size, replace=False))))
        for tag, cols in draws:
            if not (W["train"][:, cols] >= 0).any():
                continue
            vs, em = _fit_both(W["train"][:, cols], k)
            if vs.selected != "majority_vote/raw":
                continue
            for s in S:
                _row(f"{task} {tag}", s, W[s][:, cols], y[s], vs, em, real)
    for name, (n, m, k, imb, cov, _metric) in SHAPES.items():
        for seed in (int(x) for x in args.seeds.split(",")):
            R = make_regime_label_matrix(n, k=k, m=m, lf_type="single", coverage=cov, accuracy=U, imbalance=imb,
                                         accuracy_scale="above_chance", seed=seed)
            vs, em = _fit_both(R.L, k)
            if vs.selected == "majority_vote/raw":
                _row(f"{name}:{seed}", "train", R.L, R.y, vs, em, synth)
    for label, rows in (("WRENCH (real LFs)", real), ("WRENCH-shaped (synthetic)", synth)):
        d = np.array([x for _, x in rows])
        if d.size:
            print(f"{label}: {d.size} scored matrices, EM - vote share mean {d.mean():+.2f}, "
                  f"better by > 0.5: {int((d > 0.5).sum())}, worse by > 0.5: {int((d < -0.5).sum())} "
                  f"(worst {d.min():+.2f}, best {d.max():+.2f})")


if __name__ == "__main__":
    main()
