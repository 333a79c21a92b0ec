"""Diagnostic (issue 16): ``WeightedMajorityVote`` counts the class prior once per vote; does counting it once help?

``WeightedMajorityVote`` weights a vote by ``log(a (k - 1) / (1 - a))`` with ``a`` the LF's precision
``P(Y = vote | vote)`` and adds the log class prior. A precision already contains the prior, so under class imbalance
a rare-class rule that is right less often than ``1 / k`` counts against its own class even when it beats the prior
(the library warns about such LFs). The naive-Bayes form that counts the prior once gives each vote for class ``c``
the weight ``logit(a) - logit(p_c)`` instead: for a lone vote the posterior is then the LF's precision (binary). Both
ignore abstains. This script prints, label-free and with dev accuracies, the shipped weights (``shipped``) against
that correction (``prior once``) and majority vote:

* WRENCH YouTube, SMS, TREC (repository copies): fit on train, scored on train and test (accuracy; SMS spam F1);
* the synthetic WRENCH shapes of ``diag_wrench_shapes.py`` (label-free, transductive, mean over ``--seeds``).

Gold labels are used for scoring only. Run: ``OMP_NUM_THREADS=1 python benchmarks/diag_wmv_prior.py`` (about 1
minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from diag_lf_subsets import _metric
from diag_rare_class_f1 import f1_pos
from diag_wrench_shapes import SHAPES, _pred, shape_matrix

from lightning_ws.data import load_wrench
from lightning_ws.labelmodels import MajorityVote, WeightedMajorityVote


class PriorOnceWMV(WeightedMajorityVote):
    """``WeightedMajorityVote`` with each vote for class ``c`` weighted ``logit(a) - logit(p_c)`` (prior counted once)."""

    def _scores(self, L: np.ndarray, w: np.ndarray, prior: np.ndarray, sl: slice) -> np.ndarray:
        block = L[sl]
        a = np.clip(self.accuracies_, 1e-3, 1 - 1e-3)
        p = np.clip(prior, 1e-6, 1 - 1e-6)
        S = np.tile(np.log(p), (block.shape[0], 1))
        for c in range(self.k_):
            S[:, c] += (block == c).astype(np.float64) @ (np.log(a / (1 - a)) - np.log(p[c] / (1 - p[c])))
        return S


def _fit(cls: type, L: np.ndarray, k: int, **kw: np.ndarray) -> WeightedMajorityVote:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(k, seed=0).fit(L, **kw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="80,81,82", help="data seeds of the synthetic shapes (default 80,81,82)")
    args = ap.parse_args()
    print("| set | accuracies | split | MV | shipped | prior once |")
    print("|---|---|---|---|---|---|")
    for task in ("youtube", "sms", "trec"):
        S = {s: load_wrench(task, s) for s in ("train", "valid", "test")}
        k = len(S["train"].class_names)
        Ltr = S["train"].weak_labels
        mv = _fit(MajorityVote, Ltr, k)
        for mode, kw in (("label-free", {}), ("dev", {"dev_L": S["valid"].weak_labels, "dev_y": S["valid"].labels})):
            old, new = _fit(WeightedMajorityVote, Ltr, k, **kw), _fit(PriorOnceWMV, Ltr, k, **kw)
            for split in ("train", "test"):
                L, y = S[split].weak_labels, S[split].labels
                cells = [_metric(task, y, _pred(m.predict_proba(L))) for m in (mv, old, new)]
                print(f"| {task} | {mode} | {split} | " + " | ".join(f"{c:.2f}" for c in cells) + " |", flush=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"\nSynthetic WRENCH shapes, label-free, transductive, mean over seeds {seeds} (F1 of class 1 where WRENCH "
          "scores F1, else accuracy):\n")
    print("| shape | metric | MV | shipped | prior once |")
    print("|---|---|---|---|---|")
    for name, (_, _, k, _, _, metric) in SHAPES.items():
        cells = np.zeros(3)
        for seed in seeds:
            R = shape_matrix(name, seed)
            for i, cls in enumerate((MajorityVote, WeightedMajorityVote, PriorOnceWMV)):
                p = _pred(_fit(cls, R.L, k).predict_proba(R.L))
                cells[i] += (f1_pos(R.y, p) if metric == "f1" else 100.0 * float((p == R.y).mean())) / len(seeds)
        print(f"| {name} | {metric} | " + " | ".join(f"{c:.2f}" for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
