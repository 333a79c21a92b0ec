"""Benchmark: Weaver's reference label-model recipe (``metal_compat``) vs a converged fit (arXiv 2506.18203 §13).

Synthetic binary verifier votes with KNOWN TPR/TNR, spec §13 style: P problems x N candidates, per-problem correct
rate ~ Beta(1, 1.5); 6 verifiers with TPR 0.55-0.75 / TNR 0.5-0.7 plus 2 "yes-leaning" ones (TPR 0.95, TNR 0.15).
Scenario ``correlated`` adds 3 near-copies of verifier 0 (each copies verifier 0's vote with probability 0.8, else
votes independently with the same TPR/TNR, so marginals stay known while conditional independence is violated).

Rows (class prior = the true correct rate, as in every reference config, unless "label-free"):
* ``metal_compat``: SGD + momentum 0.9, lr 1e-5, 1000 steps, clamp, column-sum penalty 10, init 0.7 * r (seeded r);
* ``moment_matching``: the same moment objective solved to convergence (projected Newton / L-BFGS-B);
* ``moment_matching label-free``: converged, class prior estimated by EM (no labels at all);
* ``true-parameter naive Bayes``: the ceiling of any conditionally independent model;
* majority vote over answers, naive ensemble (mean vote), oracle Pass@N.

Reported: mean absolute TPR/TNR error of the recovered parameters, Select@1 with the reference's tie-break
(lowest index among tied top scores) and with our tie-break (mean of the continuous verifier scores), and the tie rate.

    python benchmarks/bench_weaver_metal.py [--seeds 3] [--problems 500] [--candidates 100]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lightning_ws.labelmodels import make_label_model
from lightning_ws.weaver import majority_vote_select, select_candidates

TPR = [0.75, 0.7, 0.65, 0.6, 0.55, 0.7, 0.95, 0.95]
TNR = [0.7, 0.6, 0.65, 0.55, 0.6, 0.5, 0.15, 0.15]


def make_votes(P: int, N: int, correlated: bool, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    tpr, tnr = list(TPR), list(TNR)
    rate = rng.beta(1.0, 1.5, size=P)
    y = rng.random((P, N)) < rate[:, None]
    V = len(tpr)
    u = rng.random((P, N, V))
    votes = np.where(y[:, :, None], u < np.array(tpr), u >= np.array(tnr))
    if correlated:
        extra = []
        for _ in range(3):
            own = np.where(y, rng.random((P, N)) < tpr[0], rng.random((P, N)) >= tnr[0])
            extra.append(np.where(rng.random((P, N)) < 0.8, votes[:, :, 0], own))
            tpr.append(tpr[0])
            tnr.append(tnr[0])
        votes = np.concatenate([votes, np.stack(extra, axis=2)], axis=2)
    votes = votes.astype(np.int64)
    cont = votes + 0.3 * rng.standard_normal(votes.shape)  # continuous scores behind the votes (tie-break)
    wrong = rng.integers(0, 3, size=(P, N))
    skew = rng.random((P, N)) < 0.5
    ans = np.where(y, 0, 1 + np.where(skew, wrong, 0))  # correct answer id 0; skewed distractors
    return {"y": y, "votes": votes, "cont": cont, "answers": ans, "tpr": np.array(tpr), "tnr": np.array(tnr)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--problems", type=int, default=500)
    ap.add_argument("--candidates", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(2)
    for scenario in ("independent", "correlated"):
        res: dict[str, dict[str, list[float]]] = {}

        def add(name: str, key: str, val: float) -> None:
            res.setdefault(name, {}).setdefault(key, []).append(val)

        for seed in range(args.seeds):
            d = make_votes(args.problems, args.candidates, scenario == "correlated", seed)
            y, votes, P, N = d["y"], d["votes"], args.problems, args.candidates
            L = votes.reshape(P * N, -1)
            pi = float(y.mean())
            acc = lambda sel: float(y[np.arange(P), sel].mean())  # noqa: E731
            tie_sec = d["cont"].mean(axis=2)

            def selections(name: str, s: np.ndarray) -> None:
                sel_first, tied = select_candidates(s, tie_break="first")
                sel_ours, _ = select_candidates(s, secondary=tie_sec, tie_break="secondary")
                add(name, "sel_first", acc(sel_first))
                add(name, "sel_ours", acc(sel_ours))
                add(name, "tie_rate", float(tied.mean()))

            for name, lm_name, cb in (("metal_compat (fixed 1000 steps)", "metal_compat", [1 - pi, pi]),
                                      ("moment_matching (converged)", "moment_matching", [1 - pi, pi]),
                                      ("moment_matching label-free", "moment_matching", "estimated")):
                t0 = time.perf_counter()
                lm = make_label_model(lm_name, num_classes=2, seed=seed).fit(L, class_balance=cb)
                add(name, "fit_s", time.perf_counter() - t0)
                conf = lm.lf_confusions
                add(name, "tpr_mae", float(np.abs(conf[:, 1, 2] - d["tpr"]).mean()))
                add(name, "tnr_mae", float(np.abs(conf[:, 0, 1] - d["tnr"]).mean()))
                selections(name, lm.predict_proba(L)[:, 1].reshape(P, N))
            # true-parameter naive Bayes
            lt = np.where(votes == 1, np.log(d["tpr"]) - np.log(1 - d["tnr"]),
                          np.log(1 - d["tpr"]) - np.log(d["tnr"])).sum(2)
            selections("true-parameter naive Bayes", lt)
            selections("naive ensemble (mean vote)", votes.mean(axis=2))
            add("majority vote (answers)", "sel_first", acc(majority_vote_select(d["answers"])))
            add("oracle Pass@N", "sel_first", float(y.any(axis=1).mean()))
        print(f"\nscenario: {scenario} ({args.problems} x {args.candidates}, {len(make_votes(2, 2, scenario == 'correlated', 0)['tpr'])} "
              f"verifiers, {args.seeds} seeds; prior = true correct rate unless label-free)")
        print(f"  {'method':<34} {'TPR MAE':>8} {'TNR MAE':>8} {'Sel@1 first-tie':>16} {'Sel@1 our tie':>14} "
              f"{'tie rate':>9} {'fit s':>6}")
        for name, r in res.items():
            f = lambda k, fmt: (fmt.format(np.mean(r[k])) if k in r else "-")  # noqa: E731
            sd = f" +-{np.std(r['sel_first']):.4f}"
            print(f"  {name:<34} {f('tpr_mae', '{:.4f}'):>8} {f('tnr_mae', '{:.4f}'):>8} "
                  f"{f('sel_first', '{:.4f}') + sd:>16} {f('sel_ours', '{:.4f}'):>14} {f('tie_rate', '{:.3f}'):>9} "
                  f"{f('fit_s', '{:.2f}'):>6}")


if __name__ == "__main__":
    main()
