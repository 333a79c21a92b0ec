"""Weaver on ragged verifier data (issue 17): problems with different numbers of candidates.

Real judge data often has fewer candidates on some problems (failed generations, deduplication, a budget cut).
``VerificationData`` holds one ``N`` per set, so such problems arrive padded with empty slots (no answer, no score;
``load_weaver_table`` pads ragged rows this way). This script draws every suite set (``lightning_ws.weaver.suite``,
data seeds 5000+, used by no other script), keeps a uniform random number of each problem's candidates in
``[N / 4, N]`` (the rest become padding slots) and prints, per set, the mean over seeds of Select@1 of majority vote,
the mean verifier and label-free ``Weaver()``, ``Weaver - max(MV, mean)`` in points (mean / min / seeds more than 0.5
point below), how many picks were padding slots (must be 0), and the same difference on the unpadded sets.

    python benchmarks/diag_weaver_ragged.py [--seeds 3] [--seeds-small 6]
"""

from __future__ import annotations

import argparse
import os
import warnings

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

from lightning_ws.weaver import Weaver
from lightning_ws.weaver.report import suite_report
from lightning_ws.weaver.suite import SUITE, make_suite_set


def ragged(data, seed: int):
    """``data`` with each problem keeping a random number of its candidates in ``[N / 4, N]`` (padding after)."""
    P, N, _ = data.scores.shape
    keep = np.random.default_rng(seed + 99).integers(max(N // 4, 1), N + 1, size=P)
    slot = np.arange(N)[None, :] >= keep[:, None]
    return data.pad_slots(slot), slot


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="seeds per 500-problem set")
    ap.add_argument("--seeds-small", type=int, default=6, help="seeds per 64-problem judge set")
    args = ap.parse_args()
    print("| set | MV | mean verifier | Weaver | Weaver - max(MV, mean): mean / min / seeds below | padding picks | "
          "unpadded: Weaver - max |")
    print("|---|---|---|---|---|---|---|")
    alld, allu = [], []
    for name, spec in SUITE.items():
        seeds = args.seeds_small if spec.num_problems <= 64 else args.seeds
        rows, d_r, d_u, bad = [], [], [], 0
        for s in range(seeds):
            full = make_suite_set(name, seed=5000 + s)
            data, slot = ragged(full, 5000 + s)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rep = suite_report(data, seed=s)
                picks = Weaver(seed=s).fit(data, "label_free").select(data)
                rep_u = suite_report(full, seed=s)
            sa, su = rep["select_at_1"], rep_u["select_at_1"]
            bad += int(slot[np.arange(len(picks)), picks].sum())
            rows.append((sa["majority_vote"], sa["mean_verifier"], sa["weaver"]))
            d_r.append(100 * (sa["weaver"] - max(sa["majority_vote"], sa["mean_verifier"])))
            d_u.append(100 * (su["weaver"] - max(su["majority_vote"], su["mean_verifier"])))
        m = np.mean(rows, axis=0)
        d_r, d_u = np.array(d_r), np.array(d_u)
        alld.append(d_r)
        allu.append(d_u)
        print(f"| {name} | {m[0]:.4f} | {m[1]:.4f} | {m[2]:.4f} | {d_r.mean():+.2f} / {d_r.min():+.1f} / "
              f"{int((d_r < -0.5).sum())} of {seeds} | {bad} | {d_u.mean():+.2f} / {d_u.min():+.1f} / "
              f"{int((d_u < -0.5).sum())} |", flush=True)
    a, u = np.concatenate(alld), np.concatenate(allu)
    print(f"| all | | | | {a.mean():+.2f} / {a.min():+.1f} / {int((a < -0.5).sum())} of {a.size} | | "
          f"{u.mean():+.2f} / {u.min():+.1f} / {int((u < -0.5).sum())} |")


if __name__ == "__main__":
    main()
