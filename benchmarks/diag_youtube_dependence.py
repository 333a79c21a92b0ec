"""Why MomentMatching misestimates the WRENCH YouTube LFs (issue 16): a causal test with the gold train labels.

Gold labels are used for diagnosis only (nothing here is a model setting). Each line refits the label-free default
``MomentMatching`` on a copy of the YouTube train matrix in which some LF columns were shuffled *within each gold
class*. Shuffling keeps every LF's class-conditional vote rates ``P(lambda_j = l | Y = y)`` - the parameters the
model estimates, so the true LF accuracies stay what they were - and removes only the dependence of the shuffled
columns, given ``Y``, on the others. Shuffling a set of columns with one shared permutation ("block") keeps their
dependence on each other. If a line recovers the true accuracies, the dependence it removed caused the error.

Printed: MAE of the estimated vs gold LF accuracies (accuracy given firing), two LFs' estimated/true accuracy,
``P(ham)`` for the vote pattern of test rows 55 and 92 (keyword_subscribe: spam, short_comment: ham; gold spam), the
estimated ``P(spam)`` (gold 0.524) and the accuracy on covered train rows; mean over 5 shuffles.

    OMP_NUM_THREADS=1 python benchmarks/diag_youtube_dependence.py
"""

from __future__ import annotations

import warnings

import numpy as np

from lightning_ws.data import load_wrench
from lightning_ws.labelmodels.moment_matching import MomentMatching

ROW = np.array([[-1, 1, -1, -1, -1, -1, 0, -1, -1, -1]])  # test rows 55 and 92
SPAM_LFS, HAM_LFS = [0, 1, 2, 3, 5], [4, 6, 7, 8, 9]


def shuffle_within_class(L: np.ndarray, y: np.ndarray, blocks: list[list[int]], seed: int) -> np.ndarray:
    """Each block of columns gets its own permutation of the rows of each gold class."""
    rng = np.random.default_rng(seed)
    out = L.copy()
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        for cols in blocks:
            out[np.ix_(idx, cols)] = L[np.ix_(rng.permutation(idx), cols)]
    return out


def main() -> None:
    warnings.simplefilter("ignore")
    tr = load_wrench("youtube", "train")
    L, y = np.asarray(tr.weak_labels), np.asarray(tr.labels)
    m = L.shape[1]
    true_acc = np.array([np.mean(L[L[:, j] >= 0, j] == y[L[:, j] >= 0]) for j in range(m)])
    cases = {
        "original matrix": None,
        "every LF shuffled alone (CI given Y)": [[j] for j in range(m)],
        "spam LFs each alone, ham LFs one block": [[j] for j in SPAM_LFS] + [HAM_LFS],
        "spam LFs one block, ham LFs one block": [SPAM_LFS, HAM_LFS],
        "short_comment alone, rest one block": [[6], [j for j in range(m) if j != 6]],
    }
    print(f"{'case':42s} {'MAE':>5s} {'subscribe':>11s} {'short':>11s} {'P(ham|55)':>9s} {'P(spam)':>7s} "
          f"{'cov-acc':>7s}")
    for name, blocks in cases.items():
        rows = []
        for s in range(1 if blocks is None else 5):
            Ls = L if blocks is None else shuffle_within_class(L, y, blocks, s)
            mm = MomentMatching(2, seed=0).fit(Ls, "estimated")
            acc = mm.lf_accuracies
            cov = (Ls >= 0).any(axis=1)
            rows.append([np.mean(np.abs(acc - true_acc)), acc[1], acc[6], mm.predict_proba(ROW)[0, 0],
                         mm.class_balance_[1], np.mean(mm.predict_proba(Ls[cov]).argmax(1) == y[cov])])
        r = np.mean(rows, axis=0)
        print(f"{name:42s} {r[0]:5.3f} {r[1]:.3f}/{true_acc[1]:.3f} {r[2]:.3f}/{true_acc[6]:.3f} {r[3]:9.3f} "
              f"{r[4]:7.3f} {100 * r[5]:7.2f}")


if __name__ == "__main__":
    main()
