"""Diagnostic (issue 16): ``auto`` on spouse-like binary matrices whose LFs are all better than chance, scored by
accuracy *and* by the rare class's F1 (the metric WRENCH reports for spouse, CDR, SMS, census and the other binary
relation / tabular sets).

``diag_label_swap.py`` draws spouse-like matrices with ``accuracy_scale="absolute"``: an LF's precision is drawn in
(0.3, 0.7), (0.5, 0.9) or (0.6, 0.95) whatever its class's share, so a majority-class LF with precision 0.7 at 92 %
negatives fires *more* often on positives than on negatives. The first table counts how many of that grid's LFs
are worse than chance that way. Such an LF points to the other class, which neither majority vote nor any model
that assumes better-than-chance LFs (ours, snorkel) can see, so that grid measures a regime outside every model's
assumptions.

The second table redraws the same grid (5/9/20 single-class LFs, coverage (0.01, 0.05) / (0.02, 0.1) / (0.05, 0.2),
imbalance 4 or 11.5, seeds 500-502, 10,000 rows) with ``accuracy_scale="above_chance"``: every LF's precision is
``p_c + u (1 - p_c)`` with ``u`` drawn in (0.1, 0.5), (0.2, 0.8) or (0.5, 0.95). Per group it prints ``auto - MV``
and ``auto - snorkel`` (snorkel 0.10, its defaults: uniform prior, 100 epochs; every model's ties, the uncovered rows
included, broken by the same seeded coin) on accuracy and on the positive (rare) class's F1, transductive, in
points: mean / min / draws more than 0.5 point below. The last columns take the draws where ``auto`` picked a label
model and lose F1 to majority vote, and refit that model with the *true* class balance (gold labels, diagnostic
only): if its F1 stays below majority vote's there, the loss is the accuracy-optimal decision rule (a lone vote of a
weak positive LF does not make a positive posterior), not an error in the estimated class balance.

The third table asks whether a label-free F1 decision rule would do better than the posterior argmax. It is not in
the library: ``plugin_f1_labels`` thresholds the positive posterior at the value that maximises the model's own
expected F1, ``2 sum_{p_i >= t} p_i / (#{p_i >= t} + sum_i p_i)`` (the plug-in rule of Nan et al., ICML 2012; for
a calibrated posterior the optimal threshold is half the optimal F1, Lipton et al., arXiv:1402.1892). It is applied
to every row, or to the covered rows only (uncovered rows keep the argmax, since their posterior is the class
balance, not ``P(y | no vote)``), for ``auto``'s pick and for majority vote's vote shares; every cell is F1 against
plain majority vote (argmax).

Run: ``OMP_NUM_THREADS=1 python benchmarks/diag_rare_class_f1.py`` (about 25 seconds on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import itertools
import warnings

import numpy as np
from bench_labelmodels import _fit_snorkel, _snorkel

from lightning_ws.labelmodels import make_label_model, make_regime_label_matrix, probs_to_preds

GRID = {"coverage": ((0.01, 0.05), (0.02, 0.1), (0.05, 0.2)), "m": (5, 9, 20), "imbalance": (4.0, 11.5),
        "seed": (500, 501, 502)}
ABSOLUTE = ((0.3, 0.7), (0.5, 0.9), (0.6, 0.95))
ABOVE_CHANCE = ((0.1, 0.5), (0.2, 0.8), (0.5, 0.95))


def f1_pos(y: np.ndarray, pred: np.ndarray) -> float:
    """F1 of class 1, in points."""
    tp = int(((pred == 1) & (y == 1)).sum())
    return 200.0 * tp / max(1, int((pred == 1).sum() + (y == 1).sum()))


def acc(y: np.ndarray, pred: np.ndarray) -> float:
    return 100.0 * float((pred == y).mean())


def plugin_f1_labels(p: np.ndarray) -> np.ndarray:
    """``(n,)`` 0/1: positive where ``p >= t``, ``t`` the distinct value of ``p`` maximising the plug-in expected F1."""
    vals = np.unique(p)[::-1]
    total = float(p.sum())
    best, best_t = 0.0, np.inf
    for v in vals:
        sel = p >= v
        f = 2.0 * float(p[sel].sum()) / (int(sel.sum()) + total)
        if f > best:
            best, best_t = f, v
    return (p >= best_t).astype(np.int64)


def _snorkel_pred(L: np.ndarray) -> np.ndarray | None:
    SL = _snorkel()
    if SL is None:
        return None
    lm = _fit_snorkel(SL, L, 2, None, 100, 0)
    return probs_to_preds(lm.predict_proba(L.astype(np.int64)), "random", seed=0)[0]


def _cell(x: np.ndarray) -> str:
    if not x.size:
        return "-"
    return f"{x.mean():+.2f} / {x.min():+.2f} / {int((x < -0.5).sum())}"


def worse_than_chance() -> None:
    print("| LF precision (absolute) | LFs | worse than chance (precision below its class's share) |")
    print("|---|---|---|")
    for prec in ABSOLUTE:
        total = bad = 0
        for cov, m, imb, seed in itertools.product(*GRID.values()):
            R = make_regime_label_matrix(10000, k=2, m=m, lf_type="single", coverage=cov, accuracy=prec,
                                         imbalance=imb, seed=seed)
            share = R.class_balance[R.lf_class]
            total += m
            bad += int((R.accuracies < share).sum())
        print(f"| {prec} | {total} | {bad} ({100.0 * bad / total:.0f} %) |", flush=True)


def above_chance(auto_support: str = "auto") -> list[str]:
    """Print the second table; return the rows of the third (the F1 decision rule on the same fits)."""
    print("\n| u (precision = p_c + u (1 - p_c)) | draws | auto picks | accuracy: auto - MV | accuracy: auto - snorkel | "
          "F1: auto - MV | F1: auto - snorkel | label-model picks losing F1 to MV | of those, still losing with the "
          "true class balance |")
    print("|---|---|---|---|---|---|---|---|---|")
    decision_rows = []
    for u in ABOVE_CHANCE:
        da, dsa, df, dsf, picks = [], [], [], [], {}
        rule: list[list[float]] = [[] for _ in range(4)]  # plug-in F1 rule - MV: auto all / covered, MV all / covered
        lost = still = 0
        for cov, m, imb, seed in itertools.product(*GRID.values()):
            R = make_regime_label_matrix(10000, k=2, m=m, lf_type="single", coverage=cov, accuracy=u, imbalance=imb,
                                         accuracy_scale="above_chance", seed=seed)
            L, y = R.L, R.y
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                auto = make_label_model("auto", num_classes=2, seed=0, support=auto_support).fit(L)
                mv = make_label_model("majority_vote", num_classes=2, seed=0).fit(L)
                Pa, Pm = auto.predict_proba(L), mv.predict_proba(L)
                pa = probs_to_preds(Pa, "random", seed=0)[0]
                pm = probs_to_preds(Pm, "random", seed=0)[0]
                ps = _snorkel_pred(L)
            pick = f"{auto.fit_report_['selected']}/{auto.fit_report_['variant']}"
            picks[pick] = picks.get(pick, 0) + 1
            da.append(acc(y, pa) - acc(y, pm))
            df.append(f1_pos(y, pa) - f1_pos(y, pm))
            if ps is not None:
                dsa.append(acc(y, pa) - acc(y, ps))
                dsf.append(f1_pos(y, pa) - f1_pos(y, ps))
            covered = (L >= 0).any(axis=1)
            for j, (P, arg) in enumerate(((Pa, pa), (Pm, pm))):
                rule[2 * j].append(f1_pos(y, plugin_f1_labels(P[:, 1])) - f1_pos(y, pm))
                part = arg.copy()
                part[covered] = plugin_f1_labels(P[covered, 1])
                rule[2 * j + 1].append(f1_pos(y, part) - f1_pos(y, pm))
            if auto.fit_report_["selected"] != "majority_vote" and df[-1] < -0.5:
                lost += 1
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    oracle = make_label_model(auto.fit_report_["selected"], num_classes=2, seed=0).fit(
                        L, class_balance=R.class_balance)
                    po = probs_to_preds(oracle.predict_proba(L), "random", seed=0)[0]
                still += int(f1_pos(y, po) - f1_pos(y, pm) < -0.5)
        picks_s = ", ".join(f"{k} {v}" for k, v in sorted(picks.items()))
        print(f"| {u} | {len(da)} | {picks_s} | {_cell(np.array(da))} | {_cell(np.array(dsa))} | "
              f"{_cell(np.array(df))} | {_cell(np.array(dsf))} | {lost} | {still} |", flush=True)
        decision_rows.append(f"| {u} | {len(df)} | " + " | ".join(_cell(np.array(c)) for c in [df, *rule]) + " |")
    return decision_rows


def f1_decision(rows: list[str]) -> None:
    print("\n| u | draws | auto (argmax) | auto, plug-in F1 rule, all rows | auto, plug-in F1 rule, covered rows | "
          "MV, plug-in F1 rule, all rows | MV, plug-in F1 rule, covered rows |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(row, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--auto-support", default="auto", choices=["auto", "voted", "model"],
                    help="AutoLabelModel(support=...): 'auto' (default) uses the pick's own probabilities when its model "
                         "reproduces the LFs' pairwise co-firing, else restricts covered rows to their voted classes "
                         "('voted'); 'model' never restricts")
    args = ap.parse_args()
    worse_than_chance()
    f1_decision(above_chance(args.auto_support))


if __name__ == "__main__":
    main()
