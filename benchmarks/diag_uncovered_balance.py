"""Diagnostic (issue 16): which class ``auto`` gives the rows where every LF abstains when it keeps majority vote.

Such rows get the class balance. When ``auto`` keeps majority vote, that balance is label-free and comes from one of
two estimates, or a rule between them (``AutoLabelModel(uncovered_balance=...)``):

* ``vote_share``: majority vote's mean vote share over the covered rows. It describes the covered rows, weighted by
  how often each class's LFs fire, so with single-class LFs of unequal coverage it can name a rare class.
* ``em``: the class prior of a label-free Dawid-Skene fit on the same matrix (an estimate of the class mix of all
  rows under conditionally independent LFs); a label-swapped fit falls back to the vote shares.
* ``auto`` (the default since session 29): the EM prior where it names another class and its fit passes five
  checks (its prior of its class at least 0.2 above its prior of the vote-share class; no cluster of dependent LFs
  found; agreement with majority vote on at least 60 % of the clearly voted rows; no LF votes on 95 % or more of one
  class's rows; log-likelihood at least 20 above the fit with the prior held at the vote shares), else the vote
  share.

For every matrix on which ``auto`` keeps majority vote and some rows get no vote, it prints the share of such rows,
the accuracy on them of each estimate's class, and the whole-matrix accuracy of ``auto`` with each, in %. Matrices:

* the shipped WRENCH sets (YouTube, SMS, TREC), fitted on train and scored on train and test, with all their LFs and
  with random LF subsets (a quarter, half or three quarters of the LFs, ``--draws`` draws each from
  ``--first-draw``; draws 0-7 are those of ``diag_lf_subsets.py``);
* synthetic matrices shaped like the WRENCH sets this repository does not hold (``diag_wrench_shapes.py``:
  conditionally independent single-class LFs better than chance), ``--seeds``, scored transductively.

Every model's ties are broken by the same seeded coin (``diag_wrench_shapes._pred``). Gold labels score only. The
``auto`` rule's vote-rate and log-likelihood checks were written after looking at the default draws and seeds
(session 29), the prior-gap check after ``--first-draw 100 --seeds 30,...,41``; ``--first-draw 200 --seeds
60,...,71`` was unseen by those three; the cluster and agreement checks came later (BENCHMARKS.md, "Session 29").

Run: ``OMP_NUM_THREADS=1 python benchmarks/diag_uncovered_balance.py`` (about 5 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from diag_lf_subsets import FRACTIONS, SETS, subset_columns, wrench_matrices
from diag_wrench_shapes import SHAPES, _pred, shape_matrix

from lightning_ws.labelmodels import AutoLabelModel

MODES = ("vote_share", "em", "auto")


def _fit_all(L: np.ndarray, k: int) -> dict[str, AutoLabelModel]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {mode: AutoLabelModel(k, seed=0, uncovered_balance=mode).fit(L) for mode in MODES}


def _row(name: str, split: str, L: np.ndarray, y: np.ndarray, fits: dict[str, AutoLabelModel],
         out: list[tuple[float, float]]) -> None:
    unc = ~(L >= 0).any(axis=1)
    if not unc.any():
        return
    acc = {}
    for tag, model in fits.items():
        pred = _pred(model.predict_proba(L))
        acc[tag] = (100.0 * float((pred[unc] == y[unc]).mean()), 100.0 * float((pred == y).mean()))
    report = fits["auto"].fit_report_.get("uncovered_balance") or {}
    d_em, d_auto = acc["em"][1] - acc["vote_share"][1], acc["auto"][1] - acc["vote_share"][1]
    out.append((d_em, d_auto))
    gain = report.get("em_loglik_gain")
    print(f"| {name} | {split} | {unc.mean():.2f} | {acc['vote_share'][0]:.1f} | {acc['em'][0]:.1f} | "
          f"{acc['vote_share'][1]:.2f} | {acc['em'][1]:.2f} | {acc['auto'][1]:.2f} | {d_em:+.2f} | {d_auto:+.2f} | "
          f"{report.get('em_prior_gap', float('nan')):.2f} | {report.get('em_max_vote_rate', float('nan')):.3f} | "
          f"{'-' if gain is None else f'{gain:.1f}'} | "
          f"{report.get('source', '-')} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=8, help="LF subsets per WRENCH set and size")
    ap.add_argument("--first-draw", type=int, default=0, help="index of the first LF subset draw")
    ap.add_argument("--seeds", default="0,1,2,10,11,12,13,14,15", help="data seeds of the WRENCH-shaped matrices")
    args = ap.parse_args()
    print("| matrix | scored on | rows without a vote | vote share: acc there | EM prior: acc there | "
          "auto (vote share) | auto (EM prior) | auto (default rule) | EM - vote share | rule - vote share | "
          "EM prior gap | EM max vote rate | EM log-lik gain | balance used by the rule |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    real: list[tuple[float, float]] = []
    synth: list[tuple[float, float]] = []
    for task in SETS:
        W, y, k, m = wrench_matrices(task)
        draws = [("all", np.arange(m))]
        for frac in FRACTIONS:
            for d in range(args.first_draw, args.first_draw + args.draws):  # 0-7: diag_lf_subsets.py's
                cols = subset_columns(m, k, frac, d)
                draws.append((f"{cols.size} of {m} #{d}", cols))
        for tag, cols in draws:
            if not (W["train"][:, cols] >= 0).any():
                continue
            fits = _fit_all(W["train"][:, cols], k)
            if fits["vote_share"].selected != "majority_vote/raw":
                continue
            for s in W:
                _row(f"{task} {tag}", s, W[s][:, cols], y[s], fits, real)
    for name, (_, _, k, _, _, _) in SHAPES.items():
        for seed in (int(x) for x in args.seeds.split(",")):
            R = shape_matrix(name, seed)
            fits = _fit_all(R.L, k)
            if fits["vote_share"].selected == "majority_vote/raw":
                _row(f"{name}:{seed}", "train", R.L, R.y, fits, synth)
    for label, rows in (("WRENCH (real LFs)", real), ("WRENCH-shaped (synthetic)", synth)):
        if not rows:
            continue
        for col, tag in ((0, "EM prior"), (1, "default rule")):
            d = np.array([r[col] for r in rows])
            print(f"{label}: {d.size} scored matrices, {tag} - vote share mean {d.mean():+.2f}, "
                  f"better by > 0.5: {int((d > 0.5).sum())}, worse by > 0.5: {int((d < -0.5).sum())} "
                  f"(worst {d.min():+.2f}, best {d.max():+.2f})")


if __name__ == "__main__":
    main()
