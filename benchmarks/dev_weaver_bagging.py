"""Development check (issue 17, session 48): does bagging the label model make label-free Weaver steadier on small data?

At 64 problems Weaver's label-free fits move a lot with the data: the per-seed losses on the one-judge sets (down to
-25 points at 64 x 16) come from EM ending in a poor solution on that draw. Averaging the label model over bootstrap
resamples of the problems is the textbook remedy for a high-variance fit. This script compares, on the sets of
``diag_weaver_few_candidates.py`` (the development judge sets, the suite's three judge sets and the two sets in the
issue's regime) at 64 problems x ``--candidates``:

* ``shipped``: ``Weaver(seed=0)`` as shipped (guard on);
* ``bag, no guard``: the mean P(correct) of ``--members`` fits of ``Weaver(guard=False)``, each on a bootstrap resample
  of the problems (the whole pipeline refitted per resample: normaliser, verifier groups, offsets, label model),
  scored on all problems; the argmax per problem is the pick;
* ``bag in the pipeline``: :class:`BaggedWeaver`, Weaver with its answer-level label model replaced by the mean of
  ``--members`` answer-level models fitted on bootstrap resamples of the problems (on the sources as the shipped fit
  adjusts them); the guard then judges the bagged picks as it judges the label model's.

Cells: Weaver - max(majority vote, mean verifier) in points (mean / min / seeds more than 0.5 below), as
``bench_weaver_suite.py`` measures it; then the same over all seeds and the sets below -0.5 on average. Bootstrap
resamples: ``numpy.random.default_rng([data seed, 44])``. Gold labels are used for scoring only. Data seeds 44000+
(16 candidates) and 44100+ (64 candidates) by default: development seeds, used by no other script. About 25 minutes for
``--candidates 16`` with all three variants on one core.

    python benchmarks/dev_weaver_bagging.py [--candidates 16] [--seeds 8] [--seed-base 44000] [--members 8]
        [--variants shipped,bag_no_guard,bag_in_pipeline]
"""

from __future__ import annotations

import argparse
import os
import warnings

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

from dev_weaver_guard import DEV
from diag_weaver_few_candidates import issue_regime_sets

from lightning_ws.weaver import Weaver
from lightning_ws.weaver.data import VerificationData
from lightning_ws.weaver.report import suite_baselines
from lightning_ws.weaver.select import _fingerprint
from lightning_ws.weaver.suite import make_set

VARIANTS = ("shipped", "bag_no_guard", "bag_in_pipeline")


def take(data: VerificationData, rows: np.ndarray) -> VerificationData:
    """The problems ``rows`` of ``data`` (repeats allowed: a bootstrap resample)."""
    return VerificationData(data.scores[rows], [data.answers[i] for i in rows], data.verifier_names,
                            data.verifier_kinds, correct=data.correct[rows])


class BaggedWeaver(Weaver):
    """Weaver whose answer-level label model is the mean of ``members`` refits on bootstrap resamples of the problems.

    The resamples are fitted on the sources after the shipped fit's per-problem offsets; new data are adjusted with the
    full fit's offsets, then every member scores them and the mean is P(correct). Development code: not saved by
    :meth:`save` (the members are not written)."""

    def __init__(self, members: int = 8, data_seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.members = int(members)
        self.data_seed = int(data_seed)
        self.members_: list = []

    def _fit_with_offsets(self, data, pooled, mode, correct, dev_idx, source_names):
        adjusted, fit_report, offsets_report = super()._fit_with_offsets(data, pooled, mode, correct, dev_idx,
                                                                        source_names)
        ids = data.answer_ids()
        rng = np.random.default_rng([self.data_seed, 44])
        P = ids.shape[0]
        self.members_ = []
        for _ in range(self.members):
            rows = rng.integers(0, P, size=P)
            self.members_.append(self._make_lm().fit(ids[rows], adjusted[rows]))
        self._score_cache = (self._score_cache[0], self._bag_proba(ids, adjusted))
        return adjusted, fit_report, offsets_report

    def _bag_proba(self, ids: np.ndarray, adjusted: np.ndarray) -> np.ndarray:
        return np.mean([m.predict_proba(ids, adjusted) for m in self.members_], axis=0)

    def score(self, data: VerificationData) -> np.ndarray:
        data = self._aligned(data)
        pooled, _ = self._sources(data)
        ids = data.answer_ids()
        key = _fingerprint(pooled, ids)
        if self._score_cache is None or self._score_cache[0] != key:
            adjusted = self.offsets_.transform(pooled, ids, self.label_model_)[0]
            self._score_cache = (key, self._bag_proba(ids, adjusted))
        return self._score_cache[1].copy()


def accuracy(data: VerificationData, picks: np.ndarray) -> float:
    return float(data.correct[np.arange(data.num_problems), picks].mean())


def run_variant(variant: str, data: VerificationData, data_seed: int, members: int) -> float:
    """Select@1 of one variant on ``data``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if variant == "shipped":
            return accuracy(data, Weaver(seed=0).fit(data, "label_free").select(data))
        if variant == "bag_in_pipeline":
            w = BaggedWeaver(members=members, data_seed=data_seed, seed=0).fit(data, "label_free")
            return accuracy(data, w.select(data))
        rng = np.random.default_rng([data_seed, 44])
        total = np.zeros(data.correct.shape)
        for _ in range(members):
            rows = rng.integers(0, data.num_problems, size=data.num_problems)
            member = Weaver(seed=0, guard=False).fit(take(data, rows), "label_free")
            total += np.nan_to_num(member.score(data), nan=-1.0)
        return accuracy(data, np.argmax(total, axis=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--seed-base", type=int, default=None, help="default 44000 (16 candidates), else 44100")
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; choose from {VARIANTS}")
    base = args.seed_base if args.seed_base is not None else (44000 if args.candidates == 16 else 44100)
    sets = dict(DEV)
    sets.update(issue_regime_sets())
    print(f"64 problems x {args.candidates} candidates, data seeds {base}-{base + args.seeds - 1}, "
          f"{args.members} bootstrap members; cells: Weaver - max(MV, mean verifier), points, mean / min / seeds below")
    print("| set | " + " | ".join(variants) + " |")
    print("|---|" + "---|" * len(variants))
    every = {v: [] for v in variants}
    below = {v: [] for v in variants}
    for name, spec in sets.items():
        diffs = {v: [] for v in variants}
        for s in range(base, base + args.seeds):
            data = make_set(spec, num_problems=64, num_candidates=args.candidates, seed=s)
            b, _ = suite_baselines(data)
            ref = max(b["majority_vote"], b["mean_verifier"])
            for v in variants:
                diffs[v].append(100.0 * (run_variant(v, data, s, args.members) - ref))
        cells = []
        for v in variants:
            d = np.array(diffs[v])
            every[v].extend(d)
            if d.mean() < -0.5:
                below[v].append(f"{name} {d.mean():+.2f}")
            cells.append(f"{d.mean():+.2f} / {d.min():+.1f} / {int((d < -0.5).sum())}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    for v in variants:
        d = np.array(every[v])
        print(f"{v}: all seeds {d.mean():+.2f} / {d.min():+.1f} / {int((d < -0.5).sum())} of {len(d)} below; sets "
              f"below -0.5 on average: {below[v]}")


if __name__ == "__main__":
    main()
