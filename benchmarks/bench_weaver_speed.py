"""Weaver pipeline speed at the issue's scale: 500 problems x 100 candidates x 40 verifiers.

Times the whole label-free pipeline of ``Weaver()`` (normalise, detect verifier groups, fit the label model, run the
guard, score, select) on synthetic verification data with known verifier accuracies, and reports selection accuracy
next to the naive ensemble from the same data, so a fast-but-wrong fit would show. ``--label-model`` defaults to
Weaver's own default, the answer-level model (until session 35 this script defaulted to the binary
``moment_matching`` path, whose numbers BENCHMARKS.md keeps under issue 4).

    python benchmarks/bench_weaver_speed.py [--problems 500 --candidates 100 --verifiers 40 --repeats 3]
        [--label-model answer_level]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lightning_ws.weaver import Weaver
from lightning_ws.weaver.synthetic import make_synthetic_verification


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=500)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--verifiers", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--label-model", default="answer_level",
                        help="Weaver's label model (default: Weaver's default, answer_level; the issue-4 number used "
                             "moment_matching)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    tpr = rng.uniform(0.55, 0.8, args.verifiers).tolist()
    tnr = rng.uniform(0.5, 0.75, args.verifiers).tolist()
    data = make_synthetic_verification(args.problems, args.candidates, tpr, tnr, seed=0)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        w = Weaver(label_model=args.label_model, seed=0).fit(data, mode="label_free")
        picks = w.select(data)
        times.append(time.perf_counter() - t0)
    correct = np.asarray(data.correct)
    acc = float(correct[np.arange(len(picks)), picks].mean())
    naive = np.nanmean(data.scores, axis=2)
    naive_acc = float(correct[np.arange(len(picks)), np.nanargmax(naive, axis=1)].mean())
    print(f"P={args.problems} N={args.candidates} V={args.verifiers}, label model {args.label_model}, label-free")
    print(f"full pipeline (fit + select): median {np.median(times):.2f} s over {args.repeats} runs "
          f"(min {min(times):.2f} s, max {max(times):.2f} s)")
    print(f"Select@1: Weaver {acc:.4f} | naive mean-score ensemble {naive_acc:.4f} | "
          f"oracle {float(correct.any(1).mean()):.4f}")


if __name__ == "__main__":
    main()
