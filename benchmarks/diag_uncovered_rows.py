"""Diagnostic (issue 16): where ``auto`` still loses to majority vote, and the rows its criterion cannot see.

``make_label_model("auto")`` (arXiv 2109.11377 for the WRENCH protocol; the criterion is our leave-cluster-out
agreement) is never below majority vote on the regime matrix ``REGIMES``. This script sweeps a wider grid of
:func:`~lightning_ws.labelmodels.make_regime_label_matrix` draws than ``REGIMES`` holds - 3-50 LFs, k = 2-6, multi-,
single- and mixed-class LFs, coverage ranges (0.1, 0.6), (0.02, 0.3) and (0.005, 0.05), 3 draws each of 3,000 rows
(seeds 100-102, used by no other script) - and prints, transductively against the generator's labels:

* ``auto - MV`` (accuracy on all rows, the shipped behaviour), with the worst draws and how each splits into rows
  where some LF votes ("covered") and rows where every LF abstains ("uncovered");
* how often ``auto`` warns that its pick labels the uncovered rows differently from majority vote (the warning
  added after this sweep first ran);
* what changes if the uncovered rows got each model's own posterior for the all-abstain pattern,
  ``P(Y | every LF abstains) ~ class_balance_ * prod_j P(lambda_j = abstain | Y)`` from ``lf_confusions`` (column 0),
  instead of ``class_balance_`` (the library's contract, as in snorkel). For majority vote, which has no model of
  abstains, ``lf_confusions`` is its plug-in estimate from its own soft labels.

``auto``'s criterion scores a candidate on rows where a held-out LF votes, so it never sees how the candidate's class
balance labels the uncovered rows; that choice is where the silent losses come from. No gold label is used except
for scoring. Run: ``python benchmarks/diag_uncovered_rows.py`` (about 1.5 minutes on 2 cores).
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np

from lightning_ws.labelmodels import AutoLabelModel, covered_mask, make_label_model, make_regime_label_matrix

GRID = {"m": (3, 4, 5, 6, 8, 20, 50), "k": (2, 3, 4, 6), "lf_type": ("multi", "single", "mixed"),
        "coverage": ((0.1, 0.6), (0.02, 0.3), (0.005, 0.05)), "seed": (100, 101, 102)}


def abstain_posterior(lm) -> np.ndarray:
    """``(k,)`` the fitted model's posterior for a row on which every LF abstains (what ``AutoLabelModel`` gives
    such rows when its pick's abstain model passes the ``support="auto"`` checks)."""
    return AutoLabelModel._all_abstain_posterior(lm)


def main() -> None:
    rows = []
    for m, k, lf_type, cov, seed in itertools.product(*GRID.values()):
        if lf_type == "single" and m < k:
            continue
        R = make_regime_label_matrix(3000, k=k, m=m, lf_type=lf_type, coverage=cov, seed=seed)
        unc = ~covered_mask(R.L)
        acc = {}
        for name in ("majority_vote", "auto"):
            with warnings.catch_warnings(record=True) as caught:  # only auto's uncovered-rows warning is counted
                warnings.simplefilter("always")
                lm = make_label_model(name, num_classes=k, seed=0).fit(R.L)
            pred = lm.predict(R.L)
            post = pred.copy()
            post[unc] = int(np.argmax(abstain_posterior(lm)))
            ok, ok_post = pred == R.y, post == R.y
            acc[name] = (ok.mean(), ok_post.mean(), ok[~unc].mean() if (~unc).any() else np.nan,
                         ok[unc].mean() if unc.any() else np.nan)
            if name == "auto":
                rep = lm.fit_report_
                acc["pick"] = f"{rep['selected']}/{rep['variant']}"
                acc["warned"] = any("get no vote" in str(w.message) for w in caught)
        rows.append({"cfg": (m, k, lf_type, cov, seed), "uncovered": float(unc.mean()), **acc})
    mv = np.array([r["majority_vote"] for r in rows])
    au = np.array([r["auto"] for r in rows])
    types = np.array([r["cfg"][2] for r in rows])
    print(f"{len(rows)} draws (3,000 rows each): accuracy %, transductive\n")
    print("| comparison | mean | min | draws below -0.5 point | below -2 points | draws above +0.5 point |")
    print("|---|---|---|---|---|---|")
    for label, d in (("auto - MV (shipped: uncovered rows get the class balance)", au[:, 0] - mv[:, 0]),
                     ("auto - MV, both with the all-abstain posterior", au[:, 1] - mv[:, 1]),
                     ("auto with the all-abstain posterior - auto shipped", au[:, 1] - au[:, 0]),
                     ("MV with the all-abstain posterior - MV shipped", mv[:, 1] - mv[:, 0])):
        d = 100 * d
        print(f"| {label} | {d.mean():+.2f} | {d.min():+.2f} | {(d < -0.5).sum()} | {(d < -2).sum()} | "
              f"{(d > 0.5).sum()} |")
    warned = np.array([r["warned"] for r in rows])
    below = au[:, 0] - mv[:, 0] < -0.005
    print(f"\nauto's uncovered-rows warning: {warned.sum()} of {len(rows)} draws; {(warned & below).sum()} of the "
          f"{below.sum()} draws more than 0.5 point below MV; {(warned & ~below).sum()} draws not below MV")
    print("\n| LF type | draws | auto with the all-abstain posterior - auto shipped: mean | better by > 0.5 | "
          "worse by > 0.5 |")
    print("|---|---|---|---|---|")
    for t in GRID["lf_type"]:
        d = 100 * (au[types == t, 1] - au[types == t, 0])
        print(f"| {t} | {d.size} | {d.mean():+.2f} | {(d > 0.5).sum()} | {(d < -0.5).sum()} |")
    print("\nWorst draws of auto - MV (shipped), with covered / uncovered accuracy of each:")
    print("| m, k, LF type, coverage, seed | uncovered share | auto pick | auto warned | auto - MV | "
          "MV covered / uncovered | auto covered / uncovered |")
    print("|---|---|---|---|---|---|---|")
    for i in np.argsort(au[:, 0] - mv[:, 0])[:8]:
        r = rows[i]
        print(f"| {r['cfg']} | {r['uncovered']:.2f} | {r['pick']} | {'yes' if r['warned'] else 'no'} | "
              f"{100 * (au[i, 0] - mv[i, 0]):+.2f} | "
              f"{100 * mv[i, 2]:.2f} / {100 * mv[i, 3]:.2f} | {100 * au[i, 2]:.2f} / {100 * au[i, 3]:.2f} |")


if __name__ == "__main__":
    main()
