"""Diagnostic (issue 16): when ``auto`` keeps majority vote on thin evidence, would the held-out clusters' signs help?

Until session 31 ``AutoLabelModel`` took a candidate only if its held-out agreement gain over majority vote exceeded
``margin_z`` standard errors per vote *and* cluster-robust standard errors per held-out cluster
(``few_cluster_test=False``; this script fits that rule). With 4-10 LFs the cluster-robust test has few clusters, and
the WRENCH-shaped matrices of ``diag_wrench_shapes.py`` show large gains left on the table there (basketball seed
123: Dawid-Skene 98.59 accuracy against majority vote's 83.52). A small-sample alternative to the sandwich standard
error is a sign rule: take the candidate when *every* held-out cluster agrees more with it than with majority vote
(probability ``2 ** -G`` under a fair coin per cluster), or all but one. This script measures what such rules would
do: for every matrix it fits ``AutoLabelModel(few_cluster_test=False)`` label-free, reads
``fit_report_["selection"]`` (per-cluster gains ``cluster_gains``; ``thin_evidence``), refits the best thin-evidence
candidate on the whole matrix and scores it and majority vote against the gold labels (accuracy on all rows, ties
by the same seeded coin).

Matrices: the WRENCH shapes of ``diag_wrench_shapes.py`` (``--seeds``) and the random subsets of the real WRENCH LFs
of ``diag_lf_subsets.py`` (``--first-draw``, ``--draws``; train split, transductive). Gold labels score only.

Printed: one row per matrix where ``auto`` kept majority vote with a thin-evidence candidate (clusters against it /
held-out clusters, the candidate's accuracy minus majority vote's), then per rule ("no cluster against",
"at most one against", the same with 4-8 held-out clusters: ``few_cluster_test=True``, the default in session 32)
the matrices where it would take the candidate and the mean / min / count below -0.5 of that change.

Note: the candidate is scored as refitted alone, not as ``auto`` would return it (``auto``'s support rule may restrict
a binary pick to each row's voted classes), so a row here can differ from what the default then does.

``--census`` (session 33) instead fits ``AutoLabelModel(few_cluster_test=True)`` (the default in session 32 only)
and prints every matrix where its pick passed the per-cluster test by the signs (``per_cluster_test == "signs"``):
the held-out clusters, how many agree more with majority vote and how many have no disagreement with it at all (gain
exactly 0), and ``auto``'s accuracy minus majority vote's as ``auto`` returns it, on the matrix it was fitted on and,
for the LF subsets, on the test split of the same LFs. Then the mean / min / count below -0.5 per kind of matrix.

Run: ``OMP_NUM_THREADS=1 python benchmarks/diag_thin_evidence.py [--seeds 0,1,2] [--first-draw 0 --draws 8]
[--census]`` (about 2 minutes on 2 CPU cores for the defaults).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from diag_lf_subsets import FRACTIONS, SETS, subset_columns
from diag_wrench_shapes import SHAPES, _pred, shape_matrix

from lightning_ws.labelmodels import make_label_model, merge_clusters

Matrix = tuple[str, np.ndarray, np.ndarray, int, "tuple[np.ndarray, np.ndarray] | None"]


def _matrices(seeds: list[int], first_draws: list[int], draws: int,
              shapes: tuple[str, ...] | None = None) -> Iterator[Matrix]:
    """``(label, L, y, k, test)`` of every WRENCH-shaped matrix (``shapes``: their names, default all) and every LF
    subset of the shipped WRENCH train splits; ``test`` is ``(L, y)`` of the same LFs on the test split (``None`` for
    the shapes)."""
    for name, spec in SHAPES.items():
        if shapes is not None and name not in shapes:
            continue
        for seed in seeds:
            R = shape_matrix(name, seed)
            yield f"shape {name} seed {seed}", R.L, R.y, spec[2], None
    from lightning_ws.data import load_wrench

    for task in SETS:
        tr = load_wrench(task, "train", require_text=False)
        te = load_wrench(task, "test", require_text=False)
        m, k = tr.weak_labels.shape[1], tr.num_classes
        for frac in FRACTIONS:
            for draw in (d0 + i for d0 in first_draws for i in range(draws)):
                cols = subset_columns(m, k, frac, draw)
                yield (f"{task} {len(cols)} of {m} draw {draw}", tr.weak_labels[:, cols], tr.labels, k,
                       (te.weak_labels[:, cols], te.labels))


def _acc(model, L: np.ndarray, y: np.ndarray) -> float:
    return 100.0 * float((_pred(model.predict_proba(L)) == y).mean())


def census(seeds: list[int], first_draws: list[int], draws: int, shapes: tuple[str, ...] | None) -> None:
    """The picks of ``auto`` with ``few_cluster_test=True`` that passed the per-cluster test by the clusters' signs
    (``--census``)."""
    print("| matrix | auto picks | held-out clusters | against | no disagreement | auto - MV, fitted matrix | "
          "auto - MV, test split |")
    print("|---|---|---|---|---|---|---|")
    n_mats = 0
    kinds: dict[str, dict[str, list[float]]] = {}
    for label, L, y, k, test in _matrices(seeds, first_draws, draws, shapes):
        n_mats += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            auto = make_label_model("auto", num_classes=k, seed=0, few_cluster_test=True).fit(L)
        sc = auto.fit_report_["selection"].get("scores", {}).get(auto.selected)
        if not sc or sc.get("per_cluster_test") != "signs":
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mv = make_label_model("majority_vote", num_classes=k, seed=0).fit(L)
        gains = np.array(list(sc["cluster_gains"].values()))
        d_fit = _acc(auto, L, y) - _acc(mv, L, y)
        d_test = _acc(auto, *test) - _acc(mv, *test) if test is not None else None
        kind = kinds.setdefault("WRENCH shapes" if test is None else label.split()[0], {"fit": [], "test": []})
        kind["fit"].append(d_fit)
        if d_test is not None:
            kind["test"].append(d_test)
        test_cell = f"{d_test:+.2f}" if d_test is not None else "-"
        print(f"| {label} | {auto.selected} | {gains.size} | {int((gains < -1e-12).sum())} | "
              f"{int((np.abs(gains) <= 1e-12).sum())} | {d_fit:+.2f} | {test_cell} |", flush=True)
    print(f"\n{sum(len(v['fit']) for v in kinds.values())} of {n_mats} matrices: auto's pick passed by the signs.")
    print("| matrices | picks | auto - MV, fitted matrix: mean / min / below -0.5 | auto - MV, test: mean / min / "
          "below -0.5 |")
    print("|---|---|---|---|")
    for kind, d in kinds.items():
        cells = [f"{np.mean(x):+.2f} / {np.min(x):+.2f} / {sum(v < -0.5 for v in x)}" if x else "-"
                 for x in (d["fit"], d["test"])]
        print(f"| {kind} | {len(d['fit'])} | {cells[0]} | {cells[1]} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2", help="WRENCH-shape data seeds, comma-separated (default 0,1,2)")
    ap.add_argument("--first-draw", default="0",
                    help="first LF-subset draw (default 0); comma-separated for several blocks of --draws each")
    ap.add_argument("--draws", type=int, default=8, help="LF subsets per set and size (default 8)")
    ap.add_argument("--census", action="store_true",
                    help="list the picks of auto with few_cluster_test=True that passed the per-cluster test by the "
                         "signs instead")
    ap.add_argument("--shapes", default=None,
                    help="WRENCH shapes to draw, comma-separated (default all; 'none' for the LF subsets only)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    first_draws = [int(d) for d in args.first_draw.split(",") if d.strip()]
    shapes = None if args.shapes is None else tuple(x for x in args.shapes.split(",") if x and x != "none")
    if shapes is not None and (bad := sorted(set(shapes) - set(SHAPES))):
        raise SystemExit(f"unknown shapes {bad}; choose from {sorted(SHAPES)}")
    if args.census:
        census(seeds, first_draws, args.draws, shapes)
        return
    rows: list[tuple[str, int, int, float]] = []  # label, clusters against, held-out clusters, candidate - MV
    n_mats = 0
    print("| matrix | auto keeps | thin-evidence candidate | held-out clusters against it / all | candidate - MV "
          "accuracy, points |")
    print("|---|---|---|---|---|")
    for label, L, y, k, _test in _matrices(seeds, first_draws, args.draws, shapes):
        n_mats += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            auto = make_label_model("auto", num_classes=k, seed=0, few_cluster_test=False).fit(L)
        sel = auto.fit_report_["selection"]
        thin = sel.get("thin_evidence") or {}
        if auto.selected != "majority_vote/raw" or not thin:
            continue
        scores = sel["scores"]
        cand = max(thin, key=lambda c: scores[c]["gain_vs_mv"])
        gains = np.array(list(scores[cand]["cluster_gains"].values()))
        model_name, variant = cand.split("/")
        M = merge_clusters(L, auto.clusters_, k) if variant == "merged" else L
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cm = make_label_model(model_name, num_classes=k, seed=0).fit(M)
            mv = make_label_model("majority_vote", num_classes=k, seed=0).fit(L)
        delta = _acc(cm, M, y) - _acc(mv, L, y)
        against = int((gains < 0).sum())
        rows.append((label, against, gains.size, delta))
        print(f"| {label} | {auto.selected} | {cand} | {against} / {gains.size} | {delta:+.2f} |", flush=True)
    print(f"\n{len(rows)} of {n_mats} matrices kept majority vote with a thin-evidence candidate.")
    print("| rule (on those matrices) | matrices where it takes the candidate | candidate - MV: mean / min / below "
          "-0.5 |")
    print("|---|---|---|")
    rules = (("no held-out cluster against", 0, 0, 10**9), ("at most one against", 1, 0, 10**9),
             ("4-8 held-out clusters, at most one against (few_cluster_test)", 1, 4, 8),
             ("any (per-vote test only)", 10**9, 0, 10**9))
    for rule, cap, g_lo, g_hi in rules:
        d = [r[3] for r in rows if r[1] <= cap and g_lo <= r[2] <= g_hi]
        cell = f"{np.mean(d):+.2f} / {np.min(d):+.2f} / {sum(x < -0.5 for x in d)}" if d else "-"
        print(f"| {rule} | {len(d)} | {cell} |")


if __name__ == "__main__":
    main()
