"""Diagnostic (issue 16): how should majority vote break its ties on real keyword LFs? A coin against label-free rules.

When ``auto`` keeps majority vote, a covered row whose top vote count is shared by several classes is a tie, and the
library breaks it by a seeded coin (``predict(tie_break="random")``). Three label-free alternatives are scored here
against the coin, each fitted on the train matrix only:

- ``prior (vote share)``: the tied class with the largest majority-vote class balance (its mean vote share over the
  covered rows; ``predict(tie_break="prior")``). Under exchangeable one-coin LFs the Bayes rule breaks a tie by the
  class prior, so this is the textbook choice.
- ``prior (EM)``: the same with the class prior of a label-free Dawid-Skene fit
  (``estimate_class_balance(L, k, "em")``).
- ``Dawid-Skene posterior``: the tied class that a label-free Dawid-Skene fit on the same train matrix finds most
  probable on that row.

Matrices: each shipped WRENCH set (YouTube, SMS, TREC) with all its LFs and the 24 LF subsets of
``diag_lf_subsets.py`` (draws 0-7 keeping a quarter, half or three quarters of the LFs), scored on train
(transductive) and on test, all rows. Metric: accuracy (YouTube, TREC) or the spam class's F1 (SMS), in points; the
coin's score is its mean over 10 seeds. Rows without any vote are not ties (they get the class balance) and are
scored the same way by every rule.

Run: ``OMP_NUM_THREADS=1 python benchmarks/diag_mv_ties.py`` (about 10 seconds on 2 CPU cores).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from diag_lf_subsets import FRACTIONS, SETS, _metric, subset_columns, wrench_matrices

from lightning_ws.labelmodels import make_label_model, probs_to_preds
from lightning_ws.labelmodels.majority import estimate_class_balance

COIN_SEEDS = 10
DRAWS = 8


def _tie_pick(P: np.ndarray, score: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """Argmax of ``P``; on rows where several classes tie, the tied class with the largest ``score`` (row-wise; a
    per-class ``score`` is ``probs_to_preds(P, "prior", prior=score)``)."""
    tied = P >= P.max(axis=1, keepdims=True) - tol
    return np.where(tied, score, -np.inf).argmax(axis=1)


def main() -> None:
    rules = ("prior (vote share)", "prior (EM)", "Dawid-Skene posterior")
    print("| set | split | matrices | tied rows (median) | " + " | ".join(f"{r} - coin: mean / min / max / below -0.5"
                                                                      for r in rules) + " |")
    print("|---|---|---|---|" + "---|" * len(rules))
    for task in SETS:
        W, Y, k, m = wrench_matrices(task)
        configs = [np.arange(m)] + [subset_columns(m, k, f, d) for f in FRACTIONS for d in range(DRAWS)]
        diffs: dict[str, list[list[float]]] = {s: [] for s in W}
        n_tied: dict[str, list[int]] = {s: [] for s in W}
        for cols in configs:
            Ltr = W["train"][:, cols]
            if not (Ltr >= 0).any():
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mv = make_label_model("majority_vote", num_classes=k, seed=0).fit(Ltr)
                em_prior = estimate_class_balance(Ltr, k, "em")
                ds = make_label_model("dawid_skene", num_classes=k, seed=0).fit(Ltr)
            for s in W:
                L, y = W[s][:, cols], Y[s]
                P = mv.predict_proba(L)
                tied = (P >= P.max(axis=1, keepdims=True) - 1e-9).sum(axis=1) > 1
                n_tied[s].append(int(tied.sum()))
                coin = float(np.mean([_metric(task, y, probs_to_preds(P, "random", seed=c)[0])
                                      for c in range(COIN_SEEDS)]))
                picks = (probs_to_preds(P, "prior", prior=mv.class_balance_)[0],
                         probs_to_preds(P, "prior", prior=em_prior)[0],
                         _tie_pick(P, ds.predict_proba(L)))
                diffs[s].append([_metric(task, y, p) - coin for p in picks])
        for s in W:
            d = np.asarray(diffs[s])
            cells = " | ".join(f"{d[:, j].mean():+.2f} / {d[:, j].min():+.2f} / {d[:, j].max():+.2f} / "
                               f"{int((d[:, j] < -0.5).sum())}" for j in range(len(rules)))
            print(f"| {task} | {s} | {d.shape[0]} | {int(np.median(n_tied[s]))} | {cells} |", flush=True)
    print("\nCells: rule minus the coin (mean of 10 seeds), in points, over the full LF set and its 24 LF subsets; "
          "'below -0.5' counts the matrices where the rule is more than 0.5 point below the coin.")


if __name__ == "__main__":
    main()
