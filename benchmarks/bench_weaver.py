"""Benchmark: Weaver selection (arXiv 2506.18203) vs baselines on GSM8K (offline heuristic verifiers) and a toy.

Prints, on held-out problems: first sample, majority vote, naive ensemble, best single verifier (dev), logistic
regression (dev), Weaver in each supervision mode, oracle Pass@N; then the same on synthetic data with known verifier
accuracies (spec §13-like toy, 8 verifiers incl. two yes-leaning) for several label models, with fit times.

Also on GSM8K: Weaver with the reference's fixed-step label-model recipe (``metal_compat``) in the reference's own
supervision mode (transductive: class prior from the evaluation labels).

    python benchmarks/bench_weaver.py [--verifiers all|heuristic] [--embed] [--cache-dir DIR] [--seeds 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lightning_ws.weaver import load_gsm8k_verification, make_synthetic_verification
from lightning_ws.weaver.report import format_report, weaver_report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--embed", action="store_true", help="add the two MiniLM verifiers on GSM8K (minutes on CPU)")
    ap.add_argument("--cache-dir", default=None, help="cache folder for the MiniLM embeddings")
    ap.add_argument("--verifiers", default="all", choices=("all", "heuristic"))
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)

    t0 = time.perf_counter()
    data = load_gsm8k_verification(verifiers=args.verifiers, embed=args.embed, cache_dir=args.cache_dir)
    print(f"GSM8K: {data.num_problems} x {data.num_candidates}, verifiers {data.verifier_names} "
          f"(offline heuristics, NOT the paper's reward models); load {time.perf_counter() - t0:.1f}s")
    agg: dict[str, list[float]] = {}
    for seed in range(args.seeds):
        rep = weaver_report(data, dev_fraction=0.1, seed=seed)
        if seed == 0:
            print(format_report(rep))
        for r in rep["rows"]:
            key = r["method"].split("[")[0] if r["method"].startswith("best_single") else r["method"]
            agg.setdefault(key, []).append(r["select_at_1"])
        ref = weaver_report(data, dev_fraction=0.1, seed=seed, modes=("transductive",),
                            weaver_kwargs={"label_model": "metal_compat"})
        agg.setdefault("weaver[metal_compat,transductive]", []).append(
            next(r["select_at_1"] for r in ref["rows"] if r["method"] == "weaver[transductive]"))
    print(f"\nGSM8K Select@1 over {args.seeds} dev/eval splits (mean +- std):")
    best_peer = max(np.mean(v) for k, v in agg.items() if not k.startswith(("weaver", "oracle")))
    for k, v in agg.items():
        print(f"  {k:<36} {np.mean(v):.4f} +- {np.std(v):.4f}   ratio to best baseline {np.mean(v) / best_peer:.3f}")
    if args.skip_synthetic:
        return

    print("\nSynthetic (500 problems x 20 candidates; TPR .55-.75/TNR .5-.7 + 2 yes-leaning verifiers):")
    tpr = [0.75, 0.7, 0.65, 0.6, 0.55, 0.7, 0.95, 0.95]
    tnr = [0.7, 0.6, 0.65, 0.55, 0.6, 0.5, 0.15, 0.15]
    from lightning_ws.weaver import Weaver, majority_vote_scores, majority_vote_select, select_candidates
    from lightning_ws.weaver.report import naive_ensemble_scores
    from lightning_ws.weaver.select import ScoreNormalizer

    res: dict[str, list[float]] = {}
    times: dict[str, list[float]] = {}
    for seed in range(args.seeds):
        d = make_synthetic_verification(500, 20, tpr, tnr, seed=seed)
        y = d.correct
        acc = lambda sel: float(y[np.arange(len(sel)), sel].mean())  # noqa: E731
        res.setdefault("majority_vote", []).append(acc(majority_vote_select(d.answer_ids())))
        raw = np.concatenate([d.scores, majority_vote_scores(d.answer_ids())[:, :, None]], axis=2)
        ne = naive_ensemble_scores(ScoreNormalizer().fit_transform(raw))
        res.setdefault("naive_ensemble", []).append(acc(select_candidates(ne, tie_break="first")[0]))
        for lm in ("moment_matching", "dawid_skene", "triplet"):
            for mode in ("label_free", "transductive"):
                t = time.perf_counter()
                w = Weaver(lm, seed=seed).fit(d, mode)
                sel = w.select(d)
                times.setdefault(f"weaver[{lm},{mode}]", []).append(time.perf_counter() - t)
                res.setdefault(f"weaver[{lm},{mode}]", []).append(acc(sel))
        res.setdefault("oracle_pass@N", []).append(float(y.any(1).mean()))
    best = max(np.mean(res["majority_vote"]), np.mean(res["naive_ensemble"]))
    for k, v in res.items():
        tt = f"  fit+select {np.mean(times[k]):.2f}s" if k in times else ""
        print(f"  {k:<40} {np.mean(v):.4f} +- {np.std(v):.4f}  ratio {np.mean(v) / best:.3f}{tt}")


if __name__ == "__main__":
    main()
