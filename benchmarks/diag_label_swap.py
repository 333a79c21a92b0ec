"""Diagnostic (issue 16): ``auto``'s label-swap guard - how far its label-free pick agrees with majority vote.

Label-free estimation identifies the classes only up to a permutation; LFs that vote for their class better than
chance fix it. On binary matrices with a rare positive class (spouse-like: 8 % or 20 % positives, 5-20 single-class
LFs at low coverage), LFs of the majority class whose precision is below that class's share make EM's best optimum
the permuted one, and ``auto``'s criterion (which assumes held-out LFs better than chance) can prefer it.
``AutoLabelModel`` therefore rejects a label-free pick whose hard labels differ from majority vote's on more than
half of the rows where the vote majority is clear (``_MIN_MV_AGREEMENT``). This script fits ``auto`` with the guard
off, records the pick's agreement with majority vote on those rows, and prints, per group of matrices:

* how many draws picked a label model (not majority vote on the raw or the cluster-merged LFs, which the guard
  does not check), and the agreement of those picks (min / 5 % quantile);
* how many picks the guard rejects, and ``auto - MV`` (accuracy on all rows, transductive, points) without and with
  the guard (a rejected pick gives majority vote's labels).

Groups: a spouse-like grid (LF precision ranges (0.3, 0.7), (0.5, 0.9), (0.6, 0.95); coverage (0.01, 0.05),
(0.02, 0.1), (0.05, 0.2); 5, 9 or 20 LFs; imbalance 4 or 11.5; seeds 500-502; 10,000 rows), the regime matrix
``REGIMES`` (seeds 0-1, 5,000 rows) and the WRENCH train splits shipped in the repository. The spouse-like precisions
are drawn regardless of the class's share, so 41-53 % of those LFs fire more often on the other class than on their
own (``diag_rare_class_f1.py`` counts them and redraws the grid with every LF better than chance); ``--sweep`` adds the
720-draw grid of ``diag_uncovered_rows.py`` (seeds 100-102). Gold labels score only. Run:
``OMP_NUM_THREADS=1 python benchmarks/diag_label_swap.py [--sweep]`` (about 2 minutes; 5 with ``--sweep``).
"""

from __future__ import annotations

import argparse
import itertools
import warnings

import numpy as np

import lightning_ws.labelmodels.auto as auto_mod
from lightning_ws.labelmodels import REGIMES, make_label_model, make_regime_label_matrix

SPOUSE = {"accuracy": ((0.3, 0.7), (0.5, 0.9), (0.6, 0.95)), "coverage": ((0.01, 0.05), (0.02, 0.1), (0.05, 0.2)),
          "m": (5, 9, 20), "imbalance": (4.0, 11.5), "seed": (500, 501, 502)}
SWEEP = {"m": (3, 4, 5, 6, 8, 20, 50), "k": (2, 3, 4, 6), "lf_type": ("multi", "single", "mixed"),
         "coverage": ((0.1, 0.6), (0.02, 0.3), (0.005, 0.05)), "seed": (100, 101, 102)}


def one(L: np.ndarray, y: np.ndarray, k: int) -> tuple[bool, float, float, float]:
    """``(picked a label model, its agreement with MV on clear rows, auto - MV without guard, with guard)``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auto = make_label_model("auto", num_classes=k, seed=0).fit(L)
        mv = make_label_model("majority_vote", num_classes=k, seed=0).fit(L)
    pm, pa = mv.predict(L), auto.predict(L)
    off = 100.0 * float((pa == y).mean() - (pm == y).mean())
    agree = auto.fit_report_["selection"].get("mv_agreement")  # only for label models (not MV, raw or merged)
    if agree is None:
        return False, float("nan"), off, off
    return True, float(agree), off, (0.0 if agree < 0.5 else off)


def report(name: str, rows: list[tuple[bool, float, float, float]]) -> None:
    picked = [r for r in rows if r[0]]
    ag = np.array([r[1] for r in picked]) if picked else np.zeros(0)
    off = np.array([r[2] for r in rows])
    on = np.array([r[3] for r in rows])
    rej = int((ag < 0.5).sum())
    q = f"{ag.min():.3f} / {np.quantile(ag, 0.05):.3f}" if ag.size else "-"
    print(f"| {name} | {len(rows)} | {len(picked)} | {q} | {rej} | {off.mean():+.2f} / {off.min():+.2f} / "
          f"{int((off < -0.5).sum())} | {on.mean():+.2f} / {on.min():+.2f} / {int((on < -0.5).sum())} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", action="store_true", help="also the 720-draw grid of diag_uncovered_rows.py")
    args = ap.parse_args()
    auto_mod._MIN_MV_AGREEMENT = -1.0  # guard off: the pick and its agreement are what the guard would see
    print("| matrices | draws | label-model picks | their agreement with MV: min / 5 % | rejected by the guard | "
          "auto - MV without guard: mean / min / draws < -0.5 | with guard: mean / min / draws < -0.5 |")
    print("|---|---|---|---|---|---|---|")
    for acc in SPOUSE["accuracy"]:
        rows = []
        for cov, m, imb, seed in itertools.product(SPOUSE["coverage"], SPOUSE["m"], SPOUSE["imbalance"],
                                                   SPOUSE["seed"]):
            R = make_regime_label_matrix(10000, k=2, m=m, lf_type="single", coverage=cov, accuracy=acc,
                                         imbalance=imb, seed=seed)
            rows.append(one(R.L, R.y, 2))
        report(f"spouse-like, LF precision {acc}", rows)
    rows = []
    for _, kw in REGIMES:
        for seed in (0, 1):
            R = make_regime_label_matrix(5000, seed=seed, **kw)
            rows.append(one(R.L, R.y, kw["k"]))
    report("regime matrix (REGIMES)", rows)
    from lightning_ws.data import load_wrench

    rows = []
    for ds in ("youtube", "sms", "trec"):
        d = load_wrench(ds, "train")
        rows.append(one(d.weak_labels, d.labels, d.num_classes))
    report("WRENCH YouTube, SMS, TREC train", rows)
    if args.sweep:
        rows = []
        for m, k, lt, cov, seed in itertools.product(*SWEEP.values()):
            if lt == "single" and m < k:
                continue
            R = make_regime_label_matrix(3000, k=k, m=m, lf_type=lt, coverage=cov, seed=seed)
            rows.append(one(R.L, R.y, k))
        report("diag_uncovered_rows grid", rows)


if __name__ == "__main__":
    main()
