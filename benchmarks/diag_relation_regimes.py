"""Diagnostic (issue 16): ``auto`` against majority vote *and snorkel* on relation-style regimes, and what the rows
where every LF abstains cost.

The issue's goal on real sets is ``auto >= max(MV, snorkel) - 0.5``; it cites an unseen WRENCH relation set (9
classes, 164 single-class LFs) where snorkel beats MV by 4.3 points. The regime matrix and
``diag_uncovered_rows.py`` compare ``auto`` with MV only. This script draws relation-style matrices with
:func:`~lightning_ws.labelmodels.make_regime_label_matrix` - single-class LFs, k = 5 or 9, 60 or 164 LFs, per-LF
coverage (0.002, 0.02) or (0.005, 0.05), LF precision (0.5, 0.9) or (0.8, 0.99), balanced or skewed classes
(imbalance 8), without or with clusters of near-copies (half of the LFs in clusters of 3) - 2 draws of 3,000 rows
each (seeds 300-301, used by no other script), and prints, transductively against the generator's labels:

* ``auto`` - MV and ``auto`` - max(MV, snorkel 0.10 with its default uniform prior), on all rows;
* accuracy on the rows where every LF abstains ("uncovered"), for the library's contract (they get the model's
  ``class_balance_``; snorkel's uniform prior makes them coin flips) and for three label-free alternatives, none of
  them in the library:

  - ``own posterior``: the fitted model's ``P(Y | every LF abstains)`` from ``lf_confusions`` (column 0);
  - ``clamped EM``: covered rows keep the pick's posterior; the class mix ``r`` of the uncovered rows and each LF
    group's ``P(group silent | Y)`` are fitted by EM (groups = ``auto``'s agreement clusters, so near-copies count
    once; best of ``k + 1`` starts by the objective). This is capture-recapture: it is identified only because LFs
    of one class are assumed to fire independently given the class;
  - ``clamped EM, gated``: the same over the groups whose silence depends on the class on covered rows (G-test,
    p < 0.001), the class balance when none does.

Then the same clamped EM on the train splits of WRENCH YouTube, SMS and TREC (repository copies), with the gold
class mix of their uncovered train rows, to show whether its independence assumption holds on real LFs. Gold labels
are used for scoring only; no test split is read. Run: ``OMP_NUM_THREADS=1 python benchmarks/diag_relation_regimes.py``
(about 8 minutes on one core; ``--quick`` draws seed 300 only).
"""

from __future__ import annotations

import argparse
import itertools
import time
import warnings

import numpy as np
from diag_uncovered_rows import abstain_posterior  # the fitted model's P(Y | every LF abstains)

from lightning_ws.labelmodels import covered_mask, make_label_model, make_regime_label_matrix, probs_to_preds

GRID = {"k": (5, 9), "m": (60, 164), "coverage": ((0.002, 0.02), (0.005, 0.05)),
        "accuracy": ((0.5, 0.9), (0.8, 0.99)), "imbalance": (1.0, 8.0), "cluster_frac": (0.0, 0.5), "seed": (300, 301)}
TIE_SEEDS = (0, 1, 2)
GATE_ALPHA = 1e-3


def silent_groups_dependent(Lc: np.ndarray, q: np.ndarray, groups: list[list[int]], alpha: float) -> list[list[int]]:
    """The groups whose all-silent indicator is not independent of the class (soft-count G-test on covered rows)."""
    from scipy.stats import chi2

    k = q.shape[1]
    kept = []
    for g in groups:
        silent = (Lc[:, g] == -1).all(axis=1)
        O = np.stack([q[silent].sum(0), q[~silent].sum(0)])
        E = O.sum(1, keepdims=True) * O.sum(0, keepdims=True) / max(O.sum(), 1e-12)
        with np.errstate(divide="ignore", invalid="ignore"):
            G = 2.0 * np.where(O > 0, O * np.log(O / E), 0.0).sum()
        if chi2.sf(G, k - 1) < alpha:
            kept.append(g)
    return kept


def clamped_em(Lc: np.ndarray, q: np.ndarray, groups: list[list[int]], n_uncovered: int, n: int,
               iters: int = 2000, tol: float = 1e-10) -> np.ndarray:
    """``(k,)`` class mix of the uncovered rows: EM with the covered rows' soft labels ``q`` held fixed.

    Parameters: ``p_c`` and ``theta_gc = P(group g silent | Y = c)``; the uncovered rows (every group silent) carry
    the latent class. Starts: uniform and each class; the fixed point with the largest objective is returned.
    """
    k = q.shape[1]
    silent = np.stack([(Lc[:, g] == -1).all(axis=1) for g in groups], axis=1).astype(np.float64)
    M, A, Nu = q.sum(0), silent.T @ q, float(n_uncovered)

    def params(r):
        u = Nu * r
        return (M + u) / n, np.clip((A + u) / (M + u), 1e-12, 1 - 1e-12)

    def objective(r):
        p, th = params(r)
        covered = (q * (np.log(p) + silent @ np.log(th) + (1 - silent) @ np.log1p(-th))).sum()
        unc = np.log(p) + np.log(th).sum(0)
        return covered + Nu * (unc.max() + np.log(np.exp(unc - unc.max()).sum()))

    best = None
    for r in [np.full(k, 1.0 / k)] + [0.98 * np.eye(k)[c] + 0.02 / k for c in range(k)]:
        for _ in range(iters):
            p, th = params(r)
            lp = np.log(p) + np.log(th).sum(0)
            new = np.exp(lp - lp.max())
            new /= new.sum()
            done = np.abs(new - r).max() < tol
            r = new
            if done:
                break
        obj = objective(r)
        if best is None or obj > best[0]:
            best = (obj, r)
    return best[1]


def uncovered_mix(L: np.ndarray, lm, groups: list[list[int]], gated: bool) -> np.ndarray:
    cov = covered_mask(L)
    q = lm.predict_proba(L)[cov]
    use = silent_groups_dependent(L[cov], q, groups, GATE_ALPHA) if gated else groups
    if not use:
        return np.asarray(lm.class_balance_, dtype=np.float64)
    return clamped_em(L[cov], q, use, int((~cov).sum()), L.shape[0])


def _fit(name, L, k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_label_model(name, num_classes=k, seed=0).fit(L)


def _acc(proba, y, rows):
    return float(np.mean([np.mean(probs_to_preds(proba[rows], "random", seed=s)[0] == y[rows]) for s in TIE_SEEDS]))


def sweep(seeds) -> list[dict]:
    try:
        from snorkel.labeling.model import LabelModel as Snorkel
    except Exception:  # noqa: BLE001 - any import problem means "not available"
        Snorkel = None
        print("snorkel not installed: its columns are NaN")
    rows = []
    grid = dict(GRID, seed=seeds)
    for k, m, cov_r, acc_r, imb, cf, seed in itertools.product(*grid.values()):
        R = make_regime_label_matrix(3000, k=k, m=m, lf_type="single", coverage=cov_r, accuracy=acc_r,
                                     imbalance=imb, cluster_frac=cf, cluster_size=3, seed=seed)
        L, y = R.L.astype(np.int64), R.y
        unc = ~covered_mask(L)
        mv, auto = _fit("majority_vote", L, k), _fit("auto", L, k)
        groups = [list(g) for g in auto.clusters_]
        rec = {"cfg": (k, m, cov_r, acc_r, imb, cf, seed), "unc": float(unc.mean()), "imbalance": imb,
               "clusters": cf, "pick": auto.fit_report_["selected"]}
        for nm, lm in (("mv", mv), ("auto", auto)):
            P = lm.predict_proba(L)
            rec[nm] = {"covered": _acc(P, y, ~unc), "ship": _acc(P, y, unc) if unc.any() else 0.0}
            if unc.any() and nm == "auto":
                for var, r in (("post", abstain_posterior(lm)), ("em", uncovered_mix(L, lm, groups, False)),
                               ("gated", uncovered_mix(L, lm, groups, True))):
                    rec[nm][var] = float(np.mean(y[unc] == int(np.argmax(r))))
            elif nm == "auto":
                rec[nm].update(post=0.0, em=0.0, gated=0.0)
        if Snorkel is not None:
            s = Snorkel(cardinality=k, verbose=False)
            s.fit(L, n_epochs=100, lr=0.01, seed=0, progress_bar=False)
            P = s.predict_proba(L)
            rec["snorkel"] = {"covered": _acc(P, y, ~unc), "ship": _acc(P, y, unc) if unc.any() else 0.0}
        else:
            rec["snorkel"] = {"covered": np.nan, "ship": np.nan}
        rows.append(rec)
    return rows


def total(rec, model, var="ship") -> float:
    d = rec[model]
    return 100.0 * ((1 - rec["unc"]) * d["covered"] + rec["unc"] * d[var])


def report(rows: list[dict]) -> None:
    mv = np.array([total(r, "mv") for r in rows])
    sn = np.array([total(r, "snorkel") for r in rows])
    best = np.maximum(mv, sn)
    print(f"{len(rows)} draws (3,000 rows each; single-class LFs): accuracy %, transductive, all rows\n")
    print("| auto, uncovered rows get | auto - MV: mean | min | draws below -0.5 | auto - max(MV, snorkel): mean | "
          "min | draws below -0.5 |")
    print("|---|---|---|---|---|---|---|")
    for label, var in (("class balance (shipped)", "ship"), ("own all-abstain posterior", "post"),
                       ("clamped EM over its LF groups", "em"), ("clamped EM, gated", "gated")):
        a = np.array([total(r, "auto", var) for r in rows])
        d, e = a - mv, a - best
        print(f"| {label} | {d.mean():+.2f} | {d.min():+.2f} | {(d < -0.5).sum()} | {e.mean():+.2f} | {e.min():+.2f} "
              f"| {(e < -0.5).sum()} |")
    print(f"\nsnorkel - MV: mean {np.mean(sn - mv):+.2f}; draws where snorkel is more than 0.5 above MV: "
          f"{int((sn - mv > 0.5).sum())}")
    a = np.array([total(r, "auto") for r in rows])
    lose = a - best < -0.5
    dc = np.array([100 * (r["auto"]["covered"] - max(r["mv"]["covered"], r["snorkel"]["covered"])) for r in rows])
    print(f"of the {lose.sum()} draws where shipped auto is more than 0.5 below max(MV, snorkel): auto picked MV in "
          f"{sum(r['pick'] == 'majority_vote' for r, b in zip(rows, lose) if b)}; on covered rows auto is within 0.7 "
          f"point of the better peer in {int((dc[lose] > -0.7).sum())}\n")
    print("Accuracy % on the uncovered rows (mean over draws with any):")
    print("| imbalance, clusters | draws | uncovered share | MV (class balance) | snorkel (coin flip) | auto (class "
          "balance) | auto own posterior | auto clamped EM | auto clamped EM, gated |")
    print("|---|---|---|---|---|---|---|---|---|")
    for imb, cf in itertools.product(GRID["imbalance"], GRID["cluster_frac"]):
        sub = [r for r in rows if r["imbalance"] == imb and r["clusters"] == cf and r["unc"] > 0]
        if not sub:
            continue
        cols = [100 * np.mean([r[mdl][v] for r in sub]) for mdl, v in (("mv", "ship"), ("snorkel", "ship"),
                ("auto", "ship"), ("auto", "post"), ("auto", "em"), ("auto", "gated"))]
        print(f"| {imb:g}, {cf:g} | {len(sub)} | {np.mean([r['unc'] for r in sub]):.2f} | "
              + " | ".join(f"{c:.1f}" for c in cols) + " |")


def real_sets() -> None:
    from lightning_ws.data import load_wrench

    print("\nClamped EM on the WRENCH train splits (auto's fit; gold used only for the last column):")
    print("| set | uncovered train rows | auto's class balance | clamped EM mix, all groups | gated (groups kept) | "
          "gold mix of the uncovered rows |")
    print("|---|---|---|---|---|---|")
    for ds in ("youtube", "sms", "trec"):
        tr = load_wrench(ds, "train")
        L, y = np.asarray(tr.weak_labels, dtype=np.int64), np.asarray(tr.labels)
        k = int(y.max() + 1)
        auto = _fit("auto", L, k)
        groups = [list(g) for g in auto.clusters_]
        cov = covered_mask(L)
        q = auto.predict_proba(L)[cov]
        kept = silent_groups_dependent(L[cov], q, groups, GATE_ALPHA)
        fmt = lambda v: "[" + ", ".join(f"{x:.2f}" for x in v) + "]"
        gold = np.bincount(y[~cov], minlength=k) / max(int((~cov).sum()), 1)
        print(f"| {ds} | {int((~cov).sum())} of {L.shape[0]} | {fmt(auto.class_balance_)} | "
              f"{fmt(uncovered_mix(L, auto, groups, False))} | {fmt(uncovered_mix(L, auto, groups, True))} "
              f"({len(kept)} of {len(groups)}) | {fmt(gold)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="seed 300 only")
    args = ap.parse_args()
    t0 = time.time()
    report(sweep((300,) if args.quick else GRID["seed"]))
    real_sets()
    print(f"\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
