"""Check (issue 16): transformations of a label matrix that leave it the same data, or add rows that carry no vote,
and what they do to ``make_label_model("auto")`` (session 40).

For the shipped WRENCH sets (YouTube, SMS, TREC) this fits ``auto`` on the train matrix as shipped and on:

* its LF columns in another order (three seeded orders; the test matrix gets the same order);
* its rows in another order;
* one more LF that never votes;
* every row twice;
* the classes renamed (a seeded permutation of the class ids, votes and gold labels alike);
* 5, 10, 25 and 50 % more rows on which no LF votes (the shipped splits have 12 % (YouTube), 51 % (SMS) and 5 %
  (TREC) such rows).

It prints ``auto``'s pick and, on the original train rows and on the test split (SMS in F1 of spam, the others in
accuracy), ``auto`` minus majority vote fitted on the same matrix, plus the largest change of any test probability
against the fit on the matrix as shipped (for the class renaming: after mapping the classes back). The first five
transformations should change nothing but EM's stopping point and the seeded fold split of the held-out selection
(the clusters are split into folds in column order, so a column order is another draw of that split); the rows
without votes are new data, but they carry no vote, so a pick that turns on them rests on how the model reads
abstentions. Before session 40 10 % more such rows made ``auto`` pick MomentMatching on YouTube, 7.76 points below
majority vote on train and 5.20 on test (``AutoLabelModel``'s uncovered check now reruns the selection on the
covered rows alone).

    OMP_NUM_THREADS=1 python benchmarks/diag_label_metamorphic.py [--sets youtube,sms,trec]
"""

from __future__ import annotations

import argparse
import os
import warnings

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

from lightning_ws.data import load_wrench
from lightning_ws.labelmodels import make_label_model
from lightning_ws.labelmodels.base import score_predictions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="youtube,sms,trec")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    print("| set | transformation | auto's pick | auto - MV, train rows | auto - MV, test | largest change of a test "
          "probability |")
    print("|---|---|---|---|---|---|")
    for name in args.sets.split(","):
        tr, te = load_wrench(name, "train"), load_wrench(name, "test")
        k = tr.num_classes
        metric = "f1" if name == "sms" else "accuracy"
        L, Lt, y, yt = tr.weak_labels, te.weak_labels, np.asarray(tr.labels), np.asarray(te.labels)
        n, m = L.shape

        def fit(M: np.ndarray, kind: str = "auto", k: int = k) -> object:
            return make_label_model(kind, seed=0, num_classes=k).fit(M)

        base = fit(L)
        p_base = base.predict_proba(Lt)
        # (label, train matrix, train rows to score, test matrix, class map applied to votes and gold)
        cases: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]] = [
            ("as shipped", L, L, Lt, None)]
        for r in range(3):
            cp = np.random.default_rng([40101, r]).permutation(m)
            cases.append((f"LF columns in seeded order {r}", L[:, cp], L[:, cp], Lt[:, cp], None))
        rp = np.random.default_rng([40102, 0]).permutation(n)
        cases.append(("rows in another order", L[rp], L, Lt, None))
        silent = -np.ones((n, 1), dtype=L.dtype)
        cases.append(("an LF that never votes appended", np.hstack([L, silent]), np.hstack([L, silent]),
                      np.hstack([Lt, -np.ones((len(Lt), 1), dtype=Lt.dtype)]), None))
        cases.append(("every row twice", np.vstack([L, L]), L, Lt, None))
        perm = np.random.default_rng([40103, k]).permutation(k)
        while (perm == np.arange(k)).all():
            perm = np.roll(perm, 1)
        cases.append((f"classes renamed {perm.tolist()}", L, L, Lt, perm))
        for frac in (0.05, 0.10, 0.25, 0.50):
            extra = np.full((round(frac * n), m), -1, dtype=L.dtype)
            cases.append((f"{frac:.0%} more rows without a vote", np.vstack([L, extra]), L, Lt, None))
        for label, M, Ms, Mt, cmap in cases:
            if cmap is not None:
                def ren(X: np.ndarray, cmap: np.ndarray = cmap) -> np.ndarray:
                    return np.where(X >= 0, cmap[np.clip(X, 0, None)], -1)
                M, Ms, Mt = ren(M), ren(Ms), ren(Mt)
                ys, yts = cmap[y], cmap[yt]
                pos = int(cmap[1]) if k == 2 else 1
            else:
                ys, yts, pos = y, yt, 1
            voting = (M != -1).any(axis=0)  # majority vote refuses an LF that never votes (auto ignores it)
            auto, mv = fit(M), fit(M[:, voting], "majority_vote")
            cells = []
            for X, g in ((Ms, ys), (Mt, yts)):
                a = 100 * score_predictions(g, auto.predict(X), metric, pos_label=pos)
                b = 100 * score_predictions(g, mv.predict(X[:, voting]), metric, pos_label=pos)
                cells.append(f"{a - b:+.2f}")
            p = auto.predict_proba(Mt)
            if cmap is not None:
                p = p[:, cmap]
            print(f"| {name} | {label} | {auto.selected} | {cells[0]} | {cells[1]} | "
                  f"{np.abs(p - p_base).max():.1e} |", flush=True)


if __name__ == "__main__":
    main()
