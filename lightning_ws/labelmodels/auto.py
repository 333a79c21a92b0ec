"""``AutoLabelModel``: a label-free safeguard that picks a label model which does not lose to majority vote.

No label model wins everywhere: on binary sets with multi-polarity LFs the conditional-independence models (Dawid-Skene,
MeTaL moment matching) beat majority vote, on multi-class sets of single-class keyword LFs with duplicated rules they
often lose to it (WRENCH, arXiv 2109.11377, Tables 3/11). :class:`AutoLabelModel` chooses per label matrix, with a
criterion that uses no gold label.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np

from lightning_ws.errors import ConfigError
from lightning_ws.labelmodels.base import LabelModel, _check_float, _check_int, registry, single_thread_blas
from lightning_ws.labelmodels.dawid_skene import DawidSkene
from lightning_ws.labelmodels.matrix import (
    _COLLAPSE_MAX_RATIO,
    ABSTAIN,
    _column_vote_counts,
    _constant_columns,
    covered_mask,
    lf_clusters,
    merge_clusters,
    restrict_to_voted,
    unique_rows,
    vote_counts,
)
from lightning_ws.labelmodels.moment_matching import MomentMatching

__all__ = ["AutoLabelModel", "DEFAULT_CANDIDATES"]

#: Candidate models of :class:`AutoLabelModel`, majority vote first (the reference it must beat). Triplet is not
#: a default candidate: on WRENCH YouTube (10 single-class LFs) the criterion ranked its firing-indicator posterior
#: first while its train-split accuracy (gold labels used for scoring only) was below majority vote's - abstain
#: patterns of real keyword LFs are not conditionally independent, and the criterion cannot see that. Pass
#: ``candidates=(..., "triplet")`` to include it.
DEFAULT_CANDIDATES = ("majority_vote", "dawid_skene", "moment_matching")

#: Convergence tolerance of the selection fits (Dawid-Skene's L1 change; MomentMatching's projected gradient uses
#: ``1e-3`` of it). The selection only needs each candidate's hard labels on held-out votes: on WRENCH TREC, SMS and
#: YouTube, EM stopped at 1e-4 instead of the default 1e-5 changes no argmax and no posterior by more than 0.01,
#: at 1.5-2x fewer EM steps. The chosen model is refitted on the whole matrix with its own defaults.
_SELECT_TOL = 1e-4
#: EM-step cap of the selection's Dawid-Skene fits. With LF folds held out, EM on the remaining LFs often crawls along
#: a flat ridge (WRENCH TREC and SMS, an ad hoc check when this cap was set: 9 of 20 fold fits ran to the default cap
#: of 1000 steps without meeting the tolerance) while its hard labels stopped changing long before.
_SELECT_MAX_ITER = 100
#: A label-free pick must agree with majority vote on at least this share of the rows where the vote majority is
#: clear (covered, no tie); below it the fit took the class-permuted ("label-swapped") solution, see
#: :meth:`AutoLabelModel._reject_swapped`.
_MIN_MV_AGREEMENT = 0.5
#: Share of all-abstain rows from which :meth:`AutoLabelModel._warn_uncovered_balance` warns (at 5 % a class
#: balance that picks the other class can move accuracy by up to 5 points), and from which
#: ``uncovered_balance="auto"`` compares the two label-free balances.
_UNCOVERED_WARN_SHARE = 0.05
#: ``uncovered_balance="auto"``: an EM fit with some ``P(LF j votes | Y = y)`` at or above this is degenerate for the
#: class balance - class ``y`` has become "the rows where LF ``j`` fires", so its prior is just that LF's coverage
#: (real SMS / TREC LF subsets, where the EM prior was 44-69 points wrong, see :meth:`AutoLabelModel._em_balance`).
_EM_BOUNDARY_FIRE_RATE = 0.95
#: ``uncovered_balance="auto"``: log-likelihood by which the label-free Dawid-Skene fit must beat the same fit with
#: its class prior held at majority vote's vote shares before its prior is used (a likelihood-ratio statistic of 40;
#: misspecified real LFs inflate it, so the bar is far above a chi-square quantile).
_EM_LOGLIK_MARGIN = 20.0
#: ``uncovered_balance="auto"``: the EM prior must itself expect the switch to gain this much accuracy on the rows
#: without a vote (its prior of its own class minus its prior of the vote-share class). Nearly flat priors
#: (balanced multi-class sets) make the argmax a coin flip that cost up to 2.2 points against majority vote on
#: synthetic semeval-shaped matrices.
_EM_MIN_PRIOR_GAP = 0.2
#: ``uncovered_balance="auto"``: the EM fit must agree with majority vote on at least this share of the rows where the
#: vote majority is clear. Label-model picks with LFs better than chance for their class agreed on 64 % or more in the
#: regimes of :meth:`AutoLabelModel._reject_swapped`; on spouse-like matrices whose majority-class LFs are worse than
#: chance, fits at 50-52 % passed the swap check (50 %) and their prior was 18-68 points wrong for the silent rows. It
#: is conservative: a basketball-shaped draw (``diag_wrench_shapes.py`` seed 52) agreed on 57 % with a right prior
#: (43 points on its silent rows), which this check gives up.
#: A separate constant from :data:`_MIN_MV_AGREEMENT`, so switching the swap guard off (``diag_label_swap.py``) leaves
#: this check on.
_EM_MIN_MV_AGREEMENT = 0.6
#: :meth:`AutoLabelModel._reject_copy_collapse`: a label-free pick on the raw LFs whose fit says some LF with a
#: near-copy in the matrix (a member of an agreement cluster) votes on at least this share of one class's rows ...
_COPY_COLLAPSE_RATE_IN = 0.9
#: ... and on at most this share of the other classes' rows has made that class "the rows where the copied LF fires".
_COPY_COLLAPSE_RATE_OUT = 0.05

#: ``support="auto"``: the pick's own probabilities are used on covered rows only if its fitted model reproduces how
#: often each pair of LFs fires together: the mean squared Pearson residual ``(observed - expected) ** 2 / expected``
#: over the LF pairs with at least :data:`_SUPPORT_MIN_EXPECTED` expected co-firing rows must be at most this, the
#: value Poisson-like residuals of a correctly specified model average to (less, since its parameters are fitted to
#: the same counts: 95 % of the label-model picks on the synthetic grids of BENCHMARKS.md "Session 30" were at or
#: under 0.78). The real WRENCH / program LF sets where ``auto`` picked a model gave 1.6-46.
_SUPPORT_MAX_MEAN_Z2 = 1.0
#: LF pairs expected to fire together on fewer rows than this are left out of the co-firing check (their residuals
#: are mostly Poisson noise).
_SUPPORT_MIN_EXPECTED = 5.0
#: The co-firing check passes only if at least this share of all LF pairs is expected to fire together on
#: :data:`_SUPPORT_MIN_EXPECTED` rows or more: with rarely overlapping LFs it sees too little of their dependence to
#: tell (label-free Dawid-Skene passed it on 9 of 24 real SMS LF subsets with 1-12 of 153-1485 pairs, where its own
#: probabilities were far below majority vote; the synthetic picks it lets through see 70-100 % of their pairs,
#: one 11 %).
_SUPPORT_MIN_PAIR_SHARE = 0.5
#: ``support="auto"`` uses the pick's own probabilities only for tasks with at most this many classes. With more, the
#: model also chooses *which* unvoted class, on the prior and the abstains alone: on the multi-class synthetic grids of
#: BENCHMARKS.md "Session 30" the own probabilities gained 0.18 points on average over the voted classes and lost 5.8
#: on a chemprot-shaped draw whose EM prior had merged two classes (co-firing check passed), against +2.15 on
#: average for the binary draws.
_SUPPORT_MAX_CLASSES = 2


#: Held-out cluster counts (inclusive) where a candidate may pass the per-cluster test by the clusters' signs instead
#: of the cluster-robust standard error, and how many held-out clusters may agree more with majority vote. With 4-8
#: clusters the sandwich estimate rests on 3-7 degrees of freedom. Session 32 (``benchmarks/diag_thin_evidence.py``,
#: BENCHMARKS.md): on 4 runs over WRENCH-shaped matrices and random subsets of the real WRENCH LFs, every
#: majority-vote keep with 4-8 held-out clusters and at most one against was a WRENCH-shaped matrix where the
#: candidate was 1-59 points more accurate, and every real YouTube LF subset in that range whose candidate lost had
#: at least 2 held-out clusters against it. Session 33's census of every pick the rule decided found real YouTube LF
#: subsets with at most one cluster against that lost too, so the rule is opt-in (``few_cluster_test=True``).
_FEW_CLUSTERS = (4, 8)
_FEW_CLUSTERS_MAX_AGAINST = 1
#: The lift's second baseline (a held-out column's other-class votes, :func:`_off_vote_rates`) needs more than this
#: many of them on the scored rows; with fewer (a single-class LF) the first baseline, its abstains, serves for both.
#: Below about 20 rows a rate's standard error (about 0.1) is larger than the gains the selection acts on.
_OFF_MIN_VOTES = 20


def _macro(x: np.ndarray, cls: np.ndarray, k: int, extra_var: np.ndarray | None = None) -> tuple[float, float]:
    """Mean of ``x`` per held-out vote class, averaged over the classes present, and its standard error.

    Averaging per class keeps the criterion from rewarding a model that predicts the most-voted class: with
    single-class LFs, agreement with a held-out LF of class ``c`` is the recall of ``c``, so a plain average over
    votes would weight each class by how many votes its LFs cast. ``extra_var`` (per vote, optional) adds variance
    that the votes' spread does not show: summed over the votes of a class and divided by their number squared (the
    lift's baseline, estimated once per held-out column and class, puts ``votes x its variance`` on each vote).
    """
    means, var = [], 0.0
    for c in range(k):
        sel = cls == c
        xc = x[sel]
        if xc.size:
            means.append(float(xc.mean()))
            var += float(xc.var(ddof=1)) / xc.size if xc.size > 1 else 1.0
            if extra_var is not None:
                var += float(extra_var[sel].sum()) / xc.size ** 2
    if not means:
        return float("nan"), float("inf")
    return float(np.mean(means)), float(np.sqrt(var) / len(means))


def _macro_clustered_se(x: np.ndarray, cls: np.ndarray, group: np.ndarray, k: int) -> float:
    """Cluster-robust standard error of :func:`_macro`'s mean, the votes grouped by ``group`` (held-out cluster).

    The votes of one held-out cluster share that cluster's precision and its dependence on the LFs kept, so they are
    not independent draws. Sandwich estimator: each group's influence on the per-class mean is summed over its votes,
    then the influences' sum of squares, with the usual ``G / (G - 1)`` small-sample factor. ``inf`` with fewer than
    two groups.
    """
    classes = [c for c in range(k) if (cls == c).any()]
    groups = np.unique(group)
    if not classes or groups.size < 2:
        return float("inf")
    infl = np.zeros(groups.size)
    gidx = np.searchsorted(groups, group)
    for c in classes:
        sel = cls == c
        resid = x[sel] - x[sel].mean()
        infl += np.bincount(gidx[sel], weights=resid, minlength=groups.size) / sel.sum()
    infl /= len(classes)
    g = groups.size
    return float(np.sqrt(g / (g - 1) * np.sum(infl ** 2)))


def _held_votes_by_class(H: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per class ``c``: the ``(rows, columns)`` where the held-out matrix ``H`` votes ``c``, per column the number of
    rows where it votes another class, and per column the number of rows where it does not vote ``c`` (abstains
    included). The part of :func:`_off_vote_rates` that does not depend on the candidate (memory in the number of
    votes, not rows x held-out columns). The last entry of the list is ``(rows, columns)`` of every vote of ``H``."""
    n, h = H.shape
    vrows, vcols = np.nonzero(H != ABSTAIN)
    voted = np.bincount(vcols, minlength=h)
    out = []
    for c in range(k):
        rows, cols = np.nonzero(H == c)
        on = np.bincount(cols, minlength=h)
        out.append((rows, cols, voted - on, n - on))
    out.append((vrows, vcols, voted, voted))
    return out


def _off_row_sums(X: np.ndarray, by_class: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per held-out column ``j`` and class ``c`` (each ``(h, k)``): the sum of ``X[:, c]`` over the rows of the lift's
    first baseline and their number, then the same for its second baseline (the rows of each: :func:`_off_vote_rates`).
    ``X``: ``(n, k)`` per-row values on the rows of :func:`_held_votes_by_class`'s ``by_class``."""
    n, k = X.shape
    h = by_class[0][2].size
    total = X.sum(axis=0)
    vrows, vcols, _, _ = by_class[k]
    s_abstain, m_abstain = np.empty((h, k)), np.empty((h, k))
    s_other, m_other = np.empty((h, k)), np.empty((h, k))
    for c, (rows, cols, other, rest) in enumerate(by_class[:k]):
        on = np.bincount(cols, weights=X[rows, c], minlength=h)
        s_abstain[:, c] = np.where(rest > 0, total[c] - on, total[c])
        m_abstain[:, c] = np.where(rest > 0, rest, n)
        use = other > _OFF_MIN_VOTES
        if use.any():
            on_voted = np.bincount(vcols, weights=X[vrows, c], minlength=h)
            s_other[:, c] = np.where(use, on_voted - on, s_abstain[:, c])
            m_other[:, c] = np.where(use, other, m_abstain[:, c])
        else:
            s_other[:, c], m_other[:, c] = s_abstain[:, c], m_abstain[:, c]
    return s_abstain, m_abstain, s_other, m_other


def _off_vote_rates(T: np.ndarray, by_class: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The two baselines of the ``"lift"`` criterion, each ``(h, k)``: for each held-out column ``j`` and class ``c``,
    a candidate's rate of predicting ``c``

    1. on the rows where ``j`` does not vote ``c`` (its abstains and other-class votes); where ``j`` votes ``c`` on
       every row, over all rows;
    2. on the rows where ``j`` votes another class, where it has more than ``_OFF_MIN_VOTES`` such votes; else (a
       single-class LF) the first baseline.

    ``T``: the candidate's ``(n, k)`` hard labels, ties split, on the rows of :func:`_held_votes_by_class`'s
    ``by_class``. Why two (session 44): each is a rate the candidate has whatever ``Y`` is when the held-out LF's
    votes do not depend on ``Y``, and each fails where the other holds. The first counts the held-out LF's abstains,
    which LFs that vote both classes and abstain on the same kind of row (LLM-written programs that abstain when unsure)
    share with the other LFs beyond the class; Dawid-Skene reads abstains as evidence, so its predictions on those rows
    track the held-out abstains and the first baseline rewarded it: on the 10 Alchemist programs of WRENCH SMS its lift
    over majority vote was positive for all 10 held-out programs while its gold accuracy on their rows was lower for
    7, and ``auto`` picked it, 3.6 F1 points below majority vote on valid and 2.0 on test. The second has fewer rows,
    so it is noisier: alone, it let Dawid-Skene through on a synthetic draw (``diag_constant_lf.py --extra skew``,
    k = 2, 3 LFs, draw 8) that lost 4.5 points to majority vote (11.75 on fresh rows), which the first rejects.
    :meth:`AutoLabelModel._select_label_free` requires a candidate to win against both."""
    s_abstain, m_abstain, s_other, m_other = _off_row_sums(T, by_class)
    return s_abstain / np.maximum(m_abstain, 1), s_other / np.maximum(m_other, 1)


def _baseline_variances(D: np.ndarray, by_class: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
                        ) -> tuple[np.ndarray, np.ndarray]:
    """``(h, k)`` each: the sampling variance of :func:`_off_vote_rates`' two baselines for the difference ``D`` of
    two candidates' hard labels (``(n, k)``, a candidate's minus the reference's), i.e. ``s**2 / m`` over the ``m``
    rows each baseline averages. A baseline is an estimate too: a held-out LF that votes one class on 95 % of the rows
    leaves few rows for it, and its error is shared by every vote of that LF (session 44)."""

    def var_of_mean(s1: np.ndarray, s2: np.ndarray, m: np.ndarray) -> np.ndarray:
        mm = np.maximum(m, 2)
        return np.where(m >= 2, np.maximum(s2 - s1 ** 2 / mm, 0.0) / (mm - 1) / mm, 0.0)

    s1_abstain, m_abstain, s1_other, m_other = _off_row_sums(D, by_class)
    s2_abstain, _, s2_other, _ = _off_row_sums(D ** 2, by_class)
    return var_of_mean(s1_abstain, s2_abstain, m_abstain), var_of_mean(s1_other, s2_other, m_other)


#: the keys of the within-strata tests in ``fit_report_["selection"]["scores"][...]`` (:func:`_lift_strata`)
_STRATA_TESTS = ("within_strata", "within_strata_other_class")


def _lift_strata(Hc: np.ndarray, n_voting: np.ndarray, k: int
                 ) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, list, np.ndarray]]] | None:
    """The strata of the within-strata lift tests (``within_strata=True``, session 45) for one fold and sub-matrix.

    ``Hc``: the held-out clusters' votes on the covered rows; ``n_voting``: per covered row, how many of the kept LF
    clusters vote on it. A stratum is the rows with one value of ``n_voting``. ``None`` when no held-out column votes
    more than one class there, or every row is in one stratum (the tests would repeat the plain ones). Otherwise
    ``(stratum of each covered row, whether each held-out column votes more than one class, [(the stratum's rows,
    _held_votes_by_class of them, votes per held-out column and class in it)])``."""
    dual = np.array([np.unique(Hc[:, j][Hc[:, j] != ABSTAIN]).size > 1 for j in range(Hc.shape[1])], dtype=bool)
    levels, st = np.unique(n_voting, return_inverse=True)
    if not dual.any() or levels.size < 2:
        return None
    strata = []
    for si in range(levels.size):
        rs = np.nonzero(st.reshape(-1) == si)[0]
        by_class = _held_votes_by_class(Hc[rs], k)
        strata.append((rs, by_class, rs.size - np.stack([cnt[3] for cnt in by_class[:k]], axis=1)))
    return st.reshape(-1), dual, strata


def _per_stratum(fn: Any, X: np.ndarray, strata: list[tuple[np.ndarray, list, np.ndarray]], h: int, k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``fn`` (:func:`_off_vote_rates` or :func:`_baseline_variances`) on the rows of ``X`` of each stratum of
    :func:`_lift_strata`: its two ``(h, k)`` results stacked, ``(strata, h, k)`` each."""
    first, second = np.empty((len(strata), h, k)), np.empty((len(strata), h, k))
    for si, (rs, by_class, _) in enumerate(strata):
        first[si], second[si] = fn(X[rs], by_class)
    return first, second


class AutoLabelModel(LabelModel):
    """Choose, without gold labels, between majority vote and the other label models (and LF-cluster merging).

    Criterion: **leave-cluster-out agreement**. LFs are grouped into clusters of strongly dependent rules
    (:func:`~lightning_ws.labelmodels.matrix.lf_clusters`); the clusters are split into ``n_folds`` folds. For each
    fold, every candidate is fitted on the LFs outside the fold and predicts every row; its score is how often its
    hard label equals the (cluster-merged) vote of a held-out cluster, over the rows where the held-out cluster votes
    and some remaining LF votes (tied classes count fractionally), averaged per voted class (:func:`_macro`). If a
    held-out LF is conditionally independent of the others given ``Y`` and better than chance, this agreement is an
    increasing function of the candidate's (balanced) accuracy on those rows, so it ranks aggregators without labels
    (the same idea as validating on a held-out noisy annotator). Since session 43 the default ``criterion="lift"``
    subtracts from each held-out vote for class ``c`` the candidate's rate of predicting ``c`` on the covered rows
    where that held-out cluster does not vote ``c``: the score per class is then ``P(pred = c | vote c) - P(pred = c |
    no vote c)``, which under conditional independence is the candidate's ``P(pred = c | Y = c) - P(pred = c | Y !=
    c)`` times the held-out cluster's own ``P(Y = c | vote c) - P(Y = c | no vote c)``. Plain agreement
    (``criterion="agreement"``, the rule until session 42) also rewards a candidate for predicting the held-out
    cluster's class more often, and an LF whose votes do not depend on ``Y`` (a rule that votes class 1 on 90 % of
    the rows, a broken program) casts the most votes of all: on 3-LF binary matrices with such an LF ``auto`` chose a
    label model 7.75 points below majority vote (11.75 on fresh rows). Under the lift such an LF scores 0 for every
    candidate (the candidates are fitted without it, so their predictions do not depend on its votes), whatever its
    coverage. Measured in BENCHMARKS.md ("Session 43"): draws more than 0.5 point below majority vote on 1,152 random
    subsets of the real WRENCH LFs 12 -> 3 (train) and 14 -> 9 (test), on the Y-independent-LF draws 3 -> 0, but one
    new on a real program LF set (SMS Alchemist programs: -3.6 valid, -2.0 test); on synthetic WRENCH-shaped matrices
    it keeps majority vote on a few more draws where a label model was better (still none below it). Since session 44
    a held-out LF that votes more than one class also gives a second baseline, the candidate's rate of predicting
    ``c`` where that LF votes another class (its abstains left out), and a candidate must win against both
    (:func:`_off_vote_rates`; ``fit_report_["selection"]["scores"][...]["against_other_class_votes"]``): LLM-written
    programs abstain on the same messages whatever their class, and against their abstains Dawid-Skene won the SMS
    Alchemist programs above (BENCHMARKS.md, "Session 44"). Single-class LFs have no other-class votes, so for them
    nothing changed. Also since session 44 the per-vote standard error counts each baseline's own sampling error
    (:func:`_baseline_variances`): a baseline is one rate per held-out column and class, shared by all its votes, and
    a held-out LF that votes on 95 % of the rows leaves few rows to estimate it from. Since session 45
    (``within_strata=True``) a candidate must also win within strata: the rows are grouped by how many of the kept
    LF clusters vote on them, and for each held-out LF that votes more than one class both baselines are taken
    within the vote's stratum (:func:`_lift_strata`; ``scores[...]["within_strata"]`` and
    ``["within_strata_other_class"]``, ``["passed_all_tests"]`` whether every test passed, and ``thin_evidence``
    names a candidate that fails only these). LFs that vote
    both classes and abstain on the same unclear rows (LLM-written programs that abstain when unsure) make errors on
    those rows too: a model that reads the shared abstains as evidence predicts by how many LFs abstain, and the
    held-out LF's errors and abstains on the same rows rewarded it against both plain baselines
    (``benchmarks/diag_shared_abstains.py``: ``auto`` was 3-10 points below majority vote on average in 16 of 20
    draws). Within a stratum the rows are about as unclear as each other, and there it loses. Conditioning on a
    function of the kept LFs' votes leaves the lift valid under conditional independence, at the price of
    noisier baselines: ``auto`` keeps majority vote more often where held-out LFs vote both classes (WRENCH SMS
    programs ``T1_general``: Dawid-Skene's +2.4 F1 on test is given up; BENCHMARKS.md, "Session 45"). Held-out
    single-class LFs keep the plain baselines. It is evidence,
    not a guarantee: real keyword LFs
    fire together beyond what ``Y`` explains (see ``BENCHMARKS.md``: on WRENCH YouTube MomentMatching, its pick until
    the cluster-robust test below, beats majority vote on test but not on the train split). Holding out whole
    clusters keeps a near-duplicate of the held-out LF from rewarding the models that over-count it. When holding out
    some fold leaves LFs that vote only one class (a binary set whose only rule for one class is held out, as with 3
    single-class LFs), the candidates fitted there cannot tell the classes apart and their agreement means nothing:
    majority vote is kept (session 32: Dawid-Skene had passed both tests below on such a 3-LF YouTube subset and was
    18.66 points below majority vote; ``fit_report_["selection"]["reason"]`` says so).

    Candidates: each model of ``candidates`` on the raw LFs and, when clusters with several LFs are found
    (``merge="auto"``), on the merged matrix (one column per cluster: the majority of its members). The
    winner must beat raw majority vote by ``margin_z`` standard errors of the paired per-vote difference and by
    ``margin_z`` cluster-robust standard errors (the votes grouped by held-out cluster, :func:`_macro_clustered_se`);
    otherwise majority vote is kept. The votes of one held-out cluster share its precision and its dependence on the
    LFs kept, so thousands of them can be a handful of independent pieces of evidence: on 8 of WRENCH YouTube's 10
    LFs Dawid-Skene scored z = 4.2 per vote and 0.7 per held-out LF (two weak ham rules, one worse than chance,
    carried the gain) and lost 24 points of train accuracy to majority vote; merging the clusters of the 50 shipped
    YouTube programs scored z = 11 per vote and 1.1 per held-out cluster and lost 10 points
    (``tests/test_labelmodels_robust.py``, ``BENCHMARKS.md``). The price: with 4-10 LFs there are only 4-10 held-out
    clusters, so real gains there need to be large to be taken (WRENCH YouTube test: MomentMatching 83.20, now
    majority vote 81.16). With 4-8 held-out clusters the cluster-robust standard error rests on 3-7 degrees of
    freedom; there ``few_cluster_test=True`` (opt-in; the default in session 32 only) lets a candidate also pass the
    per-cluster test when at most one held-out cluster agrees more with majority vote than with it (the per-vote test
    still applies). It is off by default because real data disagree with the synthetic: on WRENCH-shaped matrices
    (conditionally independent LFs) every pick it decided gained (53 of 847 matrices, +0.94 to +59.57 accuracy points),
    but on random subsets of the real WRENCH LFs it decided 8 of 1,008, all YouTube, and lost more than 0.5 point to
    majority vote on 3 of them on train (down to -9.39) and on 2 on test (down to -5.20) (BENCHMARKS.md, session 33;
    ``benchmarks/diag_thin_evidence.py --census``; ``fit_report_["selection"]["scores"][...]["per_cluster_test"]``
    says which test a candidate passed). With
    ``merge="always"`` the reference is majority vote on the merged matrix. The chosen candidate is then refitted on
    the whole matrix. ``fit_report_`` lists every candidate's score (``se`` per vote, ``se_clustered``, and
    ``cluster_gains``: the mean gain over majority vote on each held-out cluster's votes, keyed by the cluster's LF
    columns, ``"3"`` or ``"3,7"``), the clusters, and the choice; ``fit_report_["selection"]["thin_evidence"]`` names
    the candidates that beat the choice per vote but not per held-out cluster, and how many held-out clusters agree
    more with majority vote. With ``dev_L``/``dev_y`` the choice is made on dev accuracy instead (same margin
    rule, per-row standard error), which uses labels the caller gave for that purpose.

    Voted classes (``support``). A conditional-independence model can predict, on a row where LFs vote, a class that
    no LF named there, on the strength of the class prior and of the LFs that abstained. On conditionally
    independent LFs that is the Bayes decision (a lone vote of a weak rule for a rare class is rightly overruled). On
    real keyword LFs those predictions were mostly wrong (75 WRENCH YouTube / SMS / TREC matrices: right on 11 % of
    such rows, where majority vote was right on 68-69 %), and on a TREC subset the pick lost 10 points of train
    accuracy to majority vote that way (``benchmarks/diag_voted_support.py``, ``BENCHMARKS.md``). ``"voted"``
    restricts the chosen model's probabilities on every covered row to the classes some LF voted there
    (:func:`~lightning_ws.labelmodels.matrix.restrict_to_voted`), so ``auto`` never contradicts every vote on a row,
    as majority vote never does; ``"model"`` keeps the model's own probabilities (how models saved before session 17
    predict). ``"auto"`` (the default since session 30) uses the model's own probabilities only when the fitted model
    reproduces how often each pair of LFs fires together (:meth:`_cofiring_check`: the mean squared Pearson residual
    of the pairwise co-firing counts against the model's ``sum_y p_y P(i fires | y) P(j fires | y)`` is at most
    :data:`_SUPPORT_MAX_MEAN_Z2`, over at least :data:`_SUPPORT_MIN_PAIR_SHARE` of the LF pairs), i.e. when the
    abstains behave as the model assumes, agrees with majority vote on clear rows, and the task is binary; otherwise
    it restricts. It is evidence about the abstain model, not a guarantee: the held-out agreement of the selection
    was no help here (it preferred the unrestricted predictions on every real matrix where they lost, BENCHMARKS.md
    "Session 30"). The selection compares the candidates' own probabilities in every mode: scoring restricted
    candidates let near-copies of majority vote win on tiny gains and was worse on the program LF sets.
    ``fit_report_["support"]`` holds the ``mode``, the one ``used``, the checks (``"check"``: ``classes``,
    ``mv_agreement``, ``cofiring`` with its pairs, mean squared residual and thresholds, and ``kept_voted_because``)
    and ``unvoted_argmax_rows``, the covered fit rows where the pick's own argmax is a class no LF voted (the rows
    ``"voted"`` changes).

    Class balance: the chosen candidate's own (``"estimated"``), or the given / dev / uniform one. Rows where every
    LF abstains get it, as in every model, with two exceptions. First (session 40), a label-free pick other than
    majority vote whose fitted model does not reproduce how the LFs fire together (:meth:`_cofiring_check`), with at
    least 5 % of the rows without a vote (or ``uncovered_balance="em"``), gives those rows the balance majority vote
    would give them (the rule below), not its own estimate: the selection scores candidates on covered rows only, so
    nothing checked the pick's class balance, and on correlated real LFs it can be far off (a 55-LF subset of WRENCH
    SMS: Dawid-Skene on the merged clusters, as accurate as majority vote on the covered rows, estimated 71 % spam -
    13.5 % true - and gave the 61 % of rows without a vote spam: 15.81 F1 points below majority vote on train). A
    pick that reproduces the co-firing keeps its own balance: on conditionally independent synthetic matrices
    (``diag_relation_regimes.py``) majority vote's rule was the worse guess there. Second, a label-free pick whose
    abstain model passed the
    checks of ``support="auto"`` (``support_ == "model"``: binary task, pairwise co-firing reproduced, agreement
    with majority vote) gives those rows its posterior for the all-abstain pattern, ``P(Y | every LF abstains)``
    (``uncovered_proba_``; ``fit_report_["uncovered"]["source"]``). Under conditional independence that is the Bayes
    decision: the rows nobody votes on lean to the class whose LFs fire least, which the class balance ignores (on
    synthetic WRENCH-shaped imdb / yelp draws the balance, nearly flat, named the other class and cost 1.1-2.8
    points against majority vote; BENCHMARKS.md "Session 30"). On real keyword LFs the posterior was no better than
    the balance (53 % of the all-abstain rows right against 52 %, ``diag_voted_support.py``), and none of those
    picks passes the checks. When majority vote is kept label-free, two estimates exist: majority
    vote's vote share over the covered rows (``uncovered_balance="vote_share"``) and the class prior of a label-free
    Dawid-Skene fit (``"em"``). Neither is safe alone (``benchmarks/diag_uncovered_balance.py``, BENCHMARKS.md): the
    vote share describes the covered rows, weighted by how often each class's LFs fire, and on synthetic matrices
    shaped like WRENCH spouse and basketball it gave the 73 % / 65 % of rows without a vote the rare class on 2 of
    the 14 draws where majority vote was kept (1-2 % of them right, 98-99 % with the EM prior: 62-72 points of
    accuracy); on random subsets of the real SMS LFs the EM prior named spam for those rows on 7 of 24 subsets
    (13-18 % right, 82-87 % with the vote share: 44-69 points). The default, ``"auto"``, uses the vote share unless,
    with at least 5 % of the rows without a vote, the EM prior names another class *and* that EM fit is
    trustworthy for its prior: ``auto`` found no cluster of dependent LFs (the fit assumes none), it agrees with
    majority vote on at least 60 % of the rows where the vote majority is clear (not nearly label-swapped), its prior of its own class is at least 0.2 above its prior of the
    vote-share class (a nearly flat prior's argmax is a coin flip), no LF with ``P(vote | Y = y) >= 0.95`` for some
    class (on the real subsets where the EM prior failed, one class had collapsed onto one LF's firing rows, or the
    prior was not identified), and a log-likelihood at least 20 above the same fit with its prior held at the vote
    shares (the data reject the vote-share balance). The rule was written on the matrices above and checked on two
    fresh sets of them (new LF subsets, new synthetic seeds; BENCHMARKS.md "Session 29"): it never moved a matrix
    below the vote share by more than 0.5 points, took the EM prior on the spouse / basketball failures and on
    some YouTube subsets (+9 to +24 points), and left most real-LF matrices at the vote share, including
    subsets where the EM prior would have been right. The agreement check was added after
    ``diag_label_swap.py``'s spouse-like grid, whose LFs are often worse than chance, showed five draws losing 18-68
    points without it, and the cluster check after ``diag_relation_regimes.py`` showed two draws with planted
    near-copies losing 5.6 and 12.7 points (and one gaining 17.8) without it. It is a heuristic, not a guarantee.
    A label-free
    fit that keeps majority vote warns when at least 5 % of the rows get no vote and the two estimates name
    different classes, saying which it used (``fit_report_["uncovered_balance"]`` records both and the checks). A
    fit that picks another model warns when its balance gives those rows another class than majority vote's vote
    shares would (``fit_report_["uncovered"]`` records the share and the balances compared).

    Label-swap guard: a label-free pick whose hard labels differ from majority vote's on more than half of the rows
    where the vote majority is clear is a class-permuted fit; it is rejected for majority vote, with a warning
    (:meth:`_reject_swapped`; ``fit_report_["selection"]["mv_agreement"]`` and ``["rejected"]``).

    Copied-LF guard (session 39): a label-free pick fitted on the raw LFs that has made a class "the rows where one
    LF fires" (``P(vote | Y = y) >= 0.9``, ``P(vote | Y != y) <= 0.05``), where that LF has near-copies in its
    agreement cluster and the fit says another rule's votes for that class mostly mean another class, is rejected for
    majority vote, with a warning (:meth:`_reject_copy_collapse`; ``fit_report_["selection"]["rejected"]``). The
    copies agree always, so a conditional-independence fit reads them as nearly perfect; the held-out selection
    rewarded such fits on WRENCH YouTube with one rule copied.

    LFs that never vote on the fit matrix (a rare rule on a small train split, a program that never fires) carry no
    information there: instead of refusing the matrix, as the single models do, ``auto`` warns, records them in
    ``fit_report_["silent_lfs"]`` and ignores their columns, also at prediction (their votes get no weight; a row
    only they vote on gets the class balance). ``lf_confusions`` gives them ``P(abstain | Y) = 1``. LFs that vote
    one and the same class on every row are ignored the same way (``fit_report_["constant_lfs"]``; their vote does
    not depend on the class, but majority vote would count it on every row and the held-out agreement would reward
    the candidate that predicts their class most; ``lf_confusions`` gives them ``P(vote = c | Y) = 1``), unless
    nothing else votes. Indices in ``fit_report_["clusters"]`` refer to the columns of the matrix passed to ``fit``;
    ``clusters_`` to the LFs kept.

    Args:
        num_classes: ``k``.
        candidates: label-model names (``majority_vote`` is always added first).
        merge: ``"auto"`` (also try the cluster-merged matrix when clusters were found), ``"never"`` or
            ``"always"`` (only the merged matrix).
        cluster_threshold: firing-correlation threshold of :func:`lf_clusters` (default 0.7).
        n_folds: folds of clusters (default 5; fewer when there are fewer clusters).
        margin_z: standard errors by which a candidate must beat majority vote (default 2).
        max_selection_rows: rows (a seeded random subset) used for the selection fits (default 200,000).
        structure: the LF groups: ``"agreement"`` (default, :func:`~lightning_ws.labelmodels.matrix.lf_clusters`),
            ``"rpca"`` (connected components of the robust-PCA dependency edges of Varma et al. 2019,
            :func:`~lightning_ws.labelmodels.structure.learn_structure_rpca`) or ``"both"`` (their union). The
            benchmark compares them on the regime matrix (``BENCHMARKS.md``); the agreement clusters stay the
            default there.
        support: ``"auto"`` (default: the chosen model's own probabilities when it reproduces the LFs' pairwise
            co-firing, else ``"voted"``), ``"voted"`` (its prediction on a covered row is restricted to the classes
            some LF voted on it; the default from session 17 to 29) or ``"model"`` (its own probabilities). See
            "Voted classes" above; ``support_`` is the one a fitted model uses.
        uncovered_balance: where the label-free class balance comes from when majority vote is kept (it is what
            rows without any vote get): ``"auto"`` (default: the vote share unless the checks of "Class balance"
            above pass for the EM prior), ``"vote_share"`` (majority vote's own, its mean vote share over the
            covered rows; the default until session 29, see BENCHMARKS.md) or ``"em"`` (the class prior of a
            label-free Dawid-Skene fit on the same matrix; a label-swapped fit falls back to the vote shares). See
            "Class balance" above for when each fails; since session 40 also what those rows get when another model
            is picked label-free whose model does not reproduce how the LFs fire together. Ignored with a given,
            uniform or dev class balance.
        few_cluster_test: with 4-8 held-out clusters, let a candidate pass the per-cluster test when at most one
            held-out cluster favours majority vote (default ``False``: the cluster-robust standard error test alone,
            the rule of sessions 16-31 and again since 33; ``True`` was the default in session 32, see above).
        uncovered_check: when the label-free pick is not majority vote, some rows get no vote and the pick's model
            does not reproduce how the LFs fire together, rerun the selection on the covered rows alone and keep the
            pick only if it wins there too (default ``True``; :meth:`_check_without_uncovered`). Not used with a dev
            split.
        criterion: the held-out score: ``"lift"`` (default since session 43: agreement with a held-out vote minus the
            candidate's rate of predicting that class where the held-out cluster does not vote it and, since session
            44, also minus its rate where the cluster votes another class; the pick must win under both, see above) or
            ``"agreement"`` (plain agreement, the rule until session 42). Models saved before session 43 load with
            ``"agreement"`` (it acts at fit time only).
        within_strata: with ``criterion="lift"``, also require the win within strata of rows on which the same
            number of kept LF clusters vote, for held-out LFs that vote more than one class (default ``True`` since
            session 45, see above; ``False`` is the rule of sessions 43-44). Models saved before session 45 load
            with ``False`` (it acts at fit time only).
        seed: seed of the fold split, the row subset and tie breaking.
    """

    name = "auto"
    min_lfs = 1
    tolerates_silent_lfs = True

    def __init__(self, num_classes: int | None = None, *, candidates: Any = DEFAULT_CANDIDATES,
                 merge: Literal["auto", "never", "always"] = "auto", cluster_threshold: float = 0.7, n_folds: int = 5,
                 margin_z: float = 2.0, max_selection_rows: int = 200_000,
                 structure: Literal["agreement", "rpca", "both"] = "agreement",
                 support: Literal["auto", "voted", "model"] = "auto",
                 uncovered_balance: Literal["auto", "vote_share", "em"] = "auto", few_cluster_test: bool = False,
                 uncovered_check: bool = True, criterion: Literal["lift", "agreement"] = "lift",
                 within_strata: bool = True, seed: int = 0) -> None:
        super().__init__(num_classes, seed=seed)
        if not isinstance(within_strata, (bool, np.bool_)):
            raise ConfigError(f"within_strata must be True or False, got {within_strata!r}.")
        self.within_strata = bool(within_strata)
        if criterion not in ("lift", "agreement"):
            raise ConfigError(f"criterion must be 'lift' or 'agreement', got {criterion!r}.")
        self.criterion = criterion
        if not isinstance(few_cluster_test, (bool, np.bool_)):
            raise ConfigError(f"few_cluster_test must be True or False, got {few_cluster_test!r}.")
        self.few_cluster_test = bool(few_cluster_test)
        if not isinstance(uncovered_check, (bool, np.bool_)):
            raise ConfigError(f"uncovered_check must be True or False, got {uncovered_check!r}.")
        self.uncovered_check = bool(uncovered_check)
        if support not in ("auto", "voted", "model"):
            raise ConfigError(f"support must be 'auto', 'voted' or 'model', got {support!r}.")
        self.support = support
        self.support_: str = "voted" if support == "auto" else support  # what predictions use (fit resolves "auto")
        self.uncovered_proba_: np.ndarray | None = None  # what rows without a vote get, when not class_balance_
        if uncovered_balance not in ("auto", "em", "vote_share"):
            raise ConfigError(f"uncovered_balance must be 'auto', 'em' or 'vote_share', got {uncovered_balance!r}.")
        self.uncovered_balance = uncovered_balance
        if structure not in ("agreement", "rpca", "both"):
            raise ConfigError(f"structure must be 'agreement', 'rpca' or 'both', got {structure!r}.")
        self.structure = structure
        cands = [str(c) for c in ([candidates] if isinstance(candidates, str) else list(candidates))]
        reg = registry()
        bad = [c for c in cands if c not in reg or c == self.name]
        if bad:
            raise ConfigError(f"unknown candidate label model(s) {bad}; choose among "
                              f"{sorted(n for n in reg if n != self.name)}.")
        self.candidates = ["majority_vote"] + [c for c in dict.fromkeys(cands) if c != "majority_vote"]
        if merge not in ("auto", "never", "always"):
            raise ConfigError(f"merge must be 'auto', 'never' or 'always', got {merge!r}.")
        self.merge = merge
        self.cluster_threshold = _check_float("cluster_threshold", cluster_threshold, 0.0, 1.0, low_open=True)
        self.n_folds = _check_int("n_folds", n_folds, 2)
        self.margin_z = _check_float("margin_z", margin_z, 0.0)
        self.max_selection_rows = _check_int("max_selection_rows", max_selection_rows, 100)
        self.inner_: LabelModel | None = None
        self.clusters_: list[list[int]] = []
        self.active_lfs_: np.ndarray | None = None
        self.merged_: bool = False

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments."""
        return {**super().get_config(), "candidates": list(self.candidates), "merge": self.merge,
                "cluster_threshold": self.cluster_threshold, "n_folds": self.n_folds, "margin_z": self.margin_z,
                "max_selection_rows": self.max_selection_rows, "structure": self.structure, "support": self.support,
                "uncovered_balance": self.uncovered_balance, "few_cluster_test": self.few_cluster_test,
                "uncovered_check": self.uncovered_check, "criterion": self.criterion,
                "within_strata": self.within_strata}

    # -- selection ----------------------------------------------------------------------------------------------

    def _make(self, name: str) -> LabelModel:
        return registry()[name](self.k_, seed=self.seed)

    def _cb(self) -> Any:
        return "estimated" if self.class_balance_ is None else self.class_balance_

    def _fit_quiet(self, name: str, L: np.ndarray, cb: Any = None, model: LabelModel | None = None
                   ) -> LabelModel | None:
        model = self._make(name) if model is None else model
        model._internal = True  # dependencies are this model's business (clusters, merging)
        if L.shape[1] < model.min_lfs:
            return None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return model.fit(L, self._cb() if cb is None else cb)
        except Exception:  # noqa: BLE001 - a candidate that cannot fit this sub-matrix is simply not chosen
            return None

    def _variants(self, L: np.ndarray) -> dict[str, tuple[np.ndarray, list[list[int]]]]:
        """``{variant: (matrix, column groups of that matrix per cluster)}``."""
        k = self.k_
        clusters = self.clusters_
        out: dict[str, tuple[np.ndarray, list[list[int]]]] = {}
        has_groups = any(len(c) > 1 for c in clusters)
        if self.merge != "always" or not has_groups:
            out["raw"] = (L, clusters)
        if has_groups and self.merge != "never":
            out["merged"] = (merge_clusters(L, clusters, k), [[g] for g in range(len(clusters))])
        return out

    def _select_label_free(self, L: np.ndarray) -> tuple[tuple[str, str], dict[str, Any]]:
        k = self.k_
        rng = np.random.default_rng([self.seed, 4049])
        L = self._selection_rows(L, rng)
        nc = len(self.clusters_)
        if nc < 2:
            return ("raw", "majority_vote"), {"reason": "fewer than 2 LF clusters: nothing to hold out"}
        folds = np.array_split(rng.permutation(nc), min(self.n_folds, nc))
        cols = self.active_lfs_ if self.active_lfs_ is not None else np.arange(L.shape[1])  # -> caller's columns
        for held in folds:  # every fold must leave LFs that vote two classes, or nothing can be scored on it
            held_set = set(held.tolist())
            rest = [col for g, members in enumerate(self.clusters_) if g not in held_set for col in members]
            sub = L[:, rest]
            voted = np.unique(sub[sub != ABSTAIN])
            if voted.size < 2:
                lfs = sorted(int(cols[j]) for g in held for j in self.clusters_[g])
                return ("raw", "majority_vote"), {
                    "reason": f"holding out the LF(s) {lfs} (columns of the fit matrix) leaves LFs that vote "
                              f"only class(es) {voted.tolist()}: a model fitted on them cannot tell the classes apart "
                              f"(not identifiable), so the held-out agreement cannot score the candidates; majority "
                              f"vote is kept"}
        held_votes = merge_clusters(L, self.clusters_, k)  # one vote per cluster
        # per row and cluster: does some member vote (a merged vote abstains only when every member does; the
        # within-strata tests count the kept clusters voting)
        fires = held_votes != ABSTAIN if self.criterion == "lift" and self.within_strata else None
        variants = self._variants(L)
        ref = self._reference(variants)
        keys = [(v, c) for v in variants for c in self.candidates]
        per_vote: dict[tuple[str, str], list[np.ndarray]] = {key: [] for key in keys}
        # the lift against the held-out LFs' other-class votes (:func:`_off_vote_rates`' second baseline)
        per_vote_other: dict[tuple[str, str], list[np.ndarray]] = {key: [] for key in keys}
        # per vote: the sampling variance of its held-out column's baseline (:func:`_baseline_variances`), x votes
        per_vote_var: dict[tuple[str, str], list[np.ndarray]] = {key: [] for key in keys}
        per_vote_var_other: dict[tuple[str, str], list[np.ndarray]] = {key: [] for key in keys}
        # the same four within strata of rows on which the same number of kept clusters vote (:func:`_lift_strata`;
        # the plain baselines where a held-out column votes one class or no strata are formed)
        per_vote_strat: dict[tuple[str, str], list[np.ndarray]] = {key: [] for key in keys}
        per_vote_strat_other: dict[tuple[str, str], list[np.ndarray]] = {key: [] for key in keys}
        per_vote_var_strat: dict[tuple[str, str], list[np.ndarray]] = {key: [] for key in keys}
        per_vote_var_strat_other: dict[tuple[str, str], list[np.ndarray]] = {key: [] for key in keys}
        vote_cls: list[np.ndarray] = []
        vote_grp: list[np.ndarray] = []  # the held-out cluster of each scored vote
        failed: set[tuple[str, str]] = set()
        for f_idx, held in enumerate(folds):
            held_set = set(held.tolist())
            T_ref = None  # the reference's hard labels on the covered rows of this fold
            held_cols = np.sort(held)  # the held-out clusters, in the column order of H
            kept_clusters = np.array([g for g in range(nc) if g not in held_set], dtype=np.int64)
            H = held_votes[:, held_cols]
            for v, (M, groups) in variants.items():
                keep = [col for g, cols in enumerate(groups) if g not in held_set for col in cols]
                Mr = M[:, keep]
                cov = covered_mask(Mr)
                rows, hcols = np.nonzero((H != ABSTAIN) & cov[:, None])
                # posteriors depend on the vote pattern only: predict each unique pattern once
                U, inv, counts = unique_rows(Mr)
                urows = inv[rows]
                # the candidates' own collapse_rows(Mr), computed once (False: not worth collapsing)
                hint = (U, inv, counts) if U.shape[0] <= _COLLAPSE_MAX_RATIO * Mr.shape[0] else False
                # the lift's held-out votes on the covered rows: the same for every candidate of this sub-matrix
                lift_votes = _held_votes_by_class(H[cov], k) if self.criterion == "lift" else None
                cov_patterns = inv[cov] if lift_votes is not None else None
                # per held-out column and class: its votes on the covered rows (the votes sharing one baseline)
                n_on = (None if lift_votes is None else
                        int(cov.sum()) - np.stack([cnt[3] for cnt in lift_votes[:k]], axis=1))
                strata = (None if lift_votes is None or fires is None else
                          _lift_strata(H[cov], fires[cov][:, kept_clusters].sum(axis=1), k))
                if strata is not None:
                    st_cov, dual_col, strata_rows = strata
                    vst = st_cov[np.cumsum(cov)[rows] - 1]  # each scored vote's stratum
                    vdual = dual_col[hcols]  # does its held-out column vote more than one class
                    # per scored vote: the votes sharing its stratum baseline (the same for every candidate)
                    s_on = np.stack([on for _, _, on in strata_rows])[vst, hcols, H[rows, hcols]]
                if v == ref[0]:
                    vote_cls.append(H[rows, hcols])
                    vote_grp.append(held_cols[hcols])
                # One (SQUAREM-accelerated) Dawid-Skene fit per sub-matrix serves as the Dawid-Skene candidate and
                # gives the label-free class balance of the others (MomentMatching and Triplet would each refit
                # the same EM for it).
                cb, ds = None, None
                if self.class_balance_ is None or "dawid_skene" in self.candidates:
                    ds = DawidSkene(k, accelerate=True, tol=_SELECT_TOL, max_iter=_SELECT_MAX_ITER, seed=self.seed)
                    ds._collapsed_hint = hint or None
                    ds = self._fit_quiet("dawid_skene", Mr, model=ds)
                    if self.class_balance_ is None:
                        cb = None if ds is None else ds.class_balance_
                for c in self.candidates:
                    if (v, c) in failed:
                        continue
                    if c == "dawid_skene" and ds is not None:
                        model = ds
                    elif c == "moment_matching":
                        model = MomentMatching(k, tol=1e-3 * _SELECT_TOL, seed=self.seed)
                        if ds is not None and cb is not None:
                            # the start a label-free MomentMatching fit takes (its own EM confusions), so the
                            # candidate scored is the model that gets refitted (the objective is not convex: the
                            # majority-vote start used before could end in another optimum)
                            model._em_conf_hint = ds.lf_confusions
                        model._collapsed_hint = hint
                        model = self._fit_quiet(c, Mr, cb, model=model)
                    elif c == "majority_vote":  # no parameters; its class balance only serves uncovered rows,
                        model = self._fit_quiet(c, U, cb)  # and every scored row is covered: fit on the patterns
                    else:
                        model = self._fit_quiet(c, Mr, cb)
                    if model is None:
                        failed.add((v, c))
                        continue
                    PU = model.predict_proba(U)
                    tied = PU >= PU.max(axis=1, keepdims=True) - 1e-9
                    TU = tied / tied.sum(axis=1, keepdims=True)  # hard label per vote pattern (ties split)
                    hv = H[rows, hcols]
                    a = TU[urows, hv]
                    if lift_votes is not None:
                        T_cov = TU[cov_patterns]
                        by_abstain, by_other = _off_vote_rates(T_cov, lift_votes)
                        # each vote's two baselines, then the same taken within its stratum where that applies
                        b_abstain, b_other = by_abstain[hcols, hv], by_other[hcols, hv]
                        per_vote_other[(v, c)].append(a - b_other)
                        if strata is not None:
                            s_abstain, s_other = _per_stratum(_off_vote_rates, T_cov, strata_rows, H.shape[1], k)
                            b_abstain = np.where(vdual, s_abstain[vst, hcols, hv], b_abstain)
                            b_other = np.where(vdual, s_other[vst, hcols, hv], b_other)
                        per_vote_strat[(v, c)].append(a - b_abstain)
                        per_vote_strat_other[(v, c)].append(a - b_other)
                        a = a - by_abstain[hcols, hv]
                        if (v, c) == ref:
                            T_ref = T_cov
                        if T_ref is not None:
                            # the baselines' own sampling variance, for the difference with the reference (computed
                            # first in every fold: raw before merged, majority vote first); votes x variance per vote
                            var_a, var_o = _baseline_variances(T_cov - T_ref, lift_votes)
                            x_a, x_o = n_on[hcols, hv] * var_a[hcols, hv], n_on[hcols, hv] * var_o[hcols, hv]
                            per_vote_var[(v, c)].append(x_a)
                            per_vote_var_other[(v, c)].append(x_o)
                            if strata is not None:
                                sv_a, sv_o = _per_stratum(_baseline_variances, T_cov - T_ref, strata_rows,
                                                          H.shape[1], k)
                                x_a = np.where(vdual, s_on * sv_a[vst, hcols, hv], x_a)
                                x_o = np.where(vdual, s_on * sv_o[vst, hcols, hv], x_o)
                            per_vote_var_strat[(v, c)].append(x_a)
                            per_vote_var_strat_other[(v, c)].append(x_o)
                    per_vote[(v, c)].append(a)
            del f_idx
        cls = np.concatenate(vote_cls) if vote_cls else np.zeros(0, dtype=np.int64)
        grp = np.concatenate(vote_grp) if vote_grp else np.zeros(0, dtype=np.int64)
        held = np.unique(grp)  # the held-out clusters that were scored, named by the caller's LF columns in them
        held_names = [",".join(str(int(cols[j])) for j in self.clusters_[g]) for g in held]
        held_masks = [grp == g for g in held]

        def tests(a: np.ndarray, base: np.ndarray, extra_var: np.ndarray | None = None) -> dict[str, Any]:
            """A candidate's per-vote scores ``a`` against the reference's ``base``: the gain and its two tests
            (``extra_var``: the per-vote variance of the lift's baselines, see :func:`_macro`)."""
            d = a - base
            agreement, _ = _macro(a, cls, k)
            gain, se = _macro(d, cls, k, extra_var)
            se_cl = _macro_clustered_se(d, cls, grp, k)
            cluster_gains = {nm: float(d[mask].mean()) for nm, mask in zip(held_names, held_masks)}
            against = sum(v < 0 for v in cluster_gains.values())
            # the gain must hold per vote and per held-out cluster (the votes of one cluster are not independent);
            # per cluster: by the cluster-robust standard error or, with few held-out clusters, by their signs
            per_cluster = ("standard_error" if gain > self.margin_z * se_cl else
                           "signs" if (self.few_cluster_test and gain > 0 and
                                       _FEW_CLUSTERS[0] <= len(held) <= _FEW_CLUSTERS[1] and
                                       against <= _FEW_CLUSTERS_MAX_AGAINST) else None)
            return {"agreement": agreement, "gain_vs_mv": gain, "se": se, "se_clustered": se_cl,
                    "cluster_gains": cluster_gains, "per_cluster_test": per_cluster,
                    "passed": bool(gain > self.margin_z * se and per_cluster is not None)}

        base = np.concatenate(per_vote[ref]) if per_vote[ref] else np.zeros(0)
        base_other = np.concatenate(per_vote_other[ref]) if per_vote_other[ref] else None
        scores: dict[str, Any] = {}
        best, best_gain = ref, 0.0
        for key in keys:
            if key in failed or not per_vote[key]:
                scores[f"{key[1]}/{key[0]}"] = None
                continue
            xv = np.concatenate(per_vote_var[key]) if per_vote_var[key] else None
            sc = tests(np.concatenate(per_vote[key]), base, xv)
            passed, gain = sc["passed"], sc["gain_vs_mv"]
            if base_other is not None:
                a_other = np.concatenate(per_vote_other[key])
                if not np.array_equal(a_other - base_other, np.concatenate(per_vote[key]) - base):
                    # some held-out LF votes both classes: the candidate must also win against its other-class votes
                    xv_o = np.concatenate(per_vote_var_other[key]) if per_vote_var_other[key] else None
                    sc["against_other_class_votes"] = sc_o = tests(a_other, base_other, xv_o)
                    passed = passed and sc_o["passed"]
                    gain = min(gain, sc_o["gain_vs_mv"])
                # within strata (held-out LFs that vote more than one class): the candidate must also win there
                for nm, pv, pvar, plain, plain_base in zip(
                        _STRATA_TESTS, (per_vote_strat, per_vote_strat_other),
                        (per_vote_var_strat, per_vote_var_strat_other), (per_vote[key], per_vote_other[key]),
                        (base, base_other)):
                    a_s, base_s = np.concatenate(pv[key]), np.concatenate(pv[ref])
                    if np.array_equal(a_s - base_s, np.concatenate(plain) - plain_base):
                        continue
                    sc[nm] = sc_s = tests(a_s, base_s, np.concatenate(pvar[key]) if pvar[key] else None)
                    passed = passed and sc_s["passed"]
                    gain = min(gain, sc_s["gain_vs_mv"])
            sc["passed_all_tests"] = passed
            scores[f"{key[1]}/{key[0]}"] = sc
            if key != ref and passed and gain > best_gain:
                best, best_gain = key, gain
        info: dict[str, Any] = {"criterion": f"leave-cluster-out {self.criterion}", "folds": len(folds),
                                "held_out_votes": int(base.size), "scores": scores}
        # candidates that beat the kept choice per vote but not per held-out cluster: say so, it is why MV stayed
        thin: dict[str, str] = {}
        for name, sc in scores.items():
            if sc is None or name == f"{ref[1]}/{ref[0]}":
                continue
            g, se, se_cl = sc["gain_vs_mv"], sc["se"], sc["se_clustered"]
            if g > max(best_gain, self.margin_z * se) and sc["per_cluster_test"] is None:
                z_vote = g / se if se > 0 else float("inf")
                against = sum(v < 0 for v in sc["cluster_gains"].values())
                thin[name] = (f"gain {g:+.4f} is {z_vote:.1f} standard errors per vote but {g / se_cl:.1f} per "
                              f"held-out cluster (margin_z = {self.margin_z}); {against} of "
                              f"{len(sc['cluster_gains'])} held-out clusters agree more with majority vote")
            sc_o = sc.get("against_other_class_votes")
            if sc["passed"] and sc_o is not None and not sc_o["passed"] and name not in thin:
                thin[name] = (f"gain {g:+.4f} passes against the held-out LFs' abstains but not against their "
                              f"other-class votes ({sc_o['gain_vs_mv']:+.4f}, standard errors {sc_o['se']:.4f} per "
                              f"vote, {sc_o['se_clustered']:.4f} per held-out cluster; margin_z = {self.margin_z})")
            failed_strata = {nm: sc[nm] for nm in _STRATA_TESTS if nm in sc and not sc[nm]["passed"]}
            if sc["passed"] and (sc_o is None or sc_o["passed"]) and failed_strata and name not in thin:
                thin[name] = (f"gain {g:+.4f} passes on all rows but not within strata of rows on which the same "
                              f"number of kept LF clusters vote (" + "; ".join(
                                  f"{nm}: {x['gain_vs_mv']:+.4f}, standard errors {x['se']:.4f} per vote, "
                                  f"{x['se_clustered']:.4f} per held-out cluster" for nm, x in failed_strata.items())
                              + f"; margin_z = {self.margin_z})")
        if thin:
            info["thin_evidence"] = thin
        return best, info

    def _check_without_uncovered(self, L: np.ndarray, choice: tuple[str, str], model: LabelModel, M: np.ndarray,
                                 info: dict[str, Any]) -> bool:
        """Whether the label-free pick ``choice`` (fitted as ``model`` on ``M``) may stand: ``False`` when its win
        rests on the rows where no LF votes (session 40).

        The held-out agreement is scored on covered rows only, but the candidates are fitted on every row, and a
        model that treats abstaining as evidence (Dawid-Skene, and MomentMatching through its class balance) reads
        the all-abstain rows as rows of the class whose LFs abstain most. That is right when the LFs fire
        independently given the class, and wrong for real keyword LFs, which fire on nearly disjoint rows (a spam
        comment with a link is not a short comment): there those rows push the class balance and the abstain
        weights far beyond what they can carry. WRENCH YouTube with 10 % more all-abstain rows (20 % in all) made
        MomentMatching's class balance 83 % ham (47.6 % true), yet its held-out agreement gain over majority vote
        rose from +0.04 to +0.10 and passed both tests (the held-out ham rules fire on exactly the spam rows it
        relabelled): ``auto`` picked it and was 7.76 points below majority vote on the train rows, 5.20 on test.

        So when some rows get no vote: if the pick's fitted model reproduces how often the LFs fire together
        (:meth:`_cofiring_check`, the firing-independence its reading of the all-abstain rows rests on), it stands;
        otherwise the selection is run again on the covered rows alone (same clusters and folds) and the pick stands
        only if it passes the same two tests there, else the caller keeps majority vote (the reference) and
        ``fit_report_["selection"]["rejected"]`` says why. ``fit_report_["selection"]["without_uncovered"]``
        records the co-firing check and the rerun's scores. Session 40, BENCHMARKS.md: on 288 random subsets of the
        real WRENCH LFs the draws more than 0.5 point below majority vote went from 9 to 0 on train (14 to 2 on
        test, with the class-balance change below); without the co-firing exemption the rerun also gave up about
        half of the gain on conditionally independent WRENCH-shaped matrices, where the all-abstain rows are real
        evidence. ``uncovered_check=False`` keeps the behaviour before.
        """
        cov = covered_mask(L)
        n0 = int((~cov).sum())
        if n0 == 0 or cov.sum() < 2:
            return True
        key = f"{choice[1]}/{choice[0]}"
        cof = self._cofiring_check(model, M)
        record: dict[str, Any] = {"uncovered_rows": n0, "pick": key, "cofiring": cof}
        info["without_uncovered"] = record
        if cof["passed"]:
            record.update(passed=True, rerun=False)
            return True
        _, rerun = self._select_label_free(L[cov])
        sc = rerun.get("scores", {}).get(key)
        other = None if sc is None else sc.get("against_other_class_votes")
        passed = bool(sc is not None and sc["passed_all_tests"])
        record.update(passed=passed, rerun=True, reason=rerun.get("reason"), score=None if sc is None else {
            f: sc[f] for f in ("gain_vs_mv", "se", "se_clustered", "per_cluster_test")})
        if passed:
            return True
        why = ("no score (" + str(rerun.get("reason")) + ")" if sc is None else
               f"gain {sc['gain_vs_mv']:+.4f}, {sc['gain_vs_mv'] / sc['se'] if sc['se'] > 0 else float('inf'):.1f} "
               f"standard errors per vote, per-cluster test {'passed' if sc['per_cluster_test'] else 'failed'}"
               + ("" if other is None else
                  f"; against the other-class votes {'passed' if other['passed'] else 'failed'}")
               + "".join(f"; {nm.replace('_', ' ')} {'passed' if sc[nm]['passed'] else 'failed'}"
                         for nm in _STRATA_TESTS if sc is not None and nm in sc))
        info["rejected"] = {"pick": choice[1], "variant": choice[0],
                            "reason": f"its gain rests on the {n0} rows without a vote: its model does not reproduce "
                                      f"how the LFs fire together, and refitted on the covered rows alone it does "
                                      f"not beat majority vote ({why})"}
        return False

    @staticmethod
    def _reference(variants: dict[str, Any]) -> tuple[str, str]:
        """The candidate to beat: majority vote on the raw LFs (on the merged matrix with ``merge="always"``)."""
        return ("raw" if "raw" in variants else "merged", "majority_vote")

    def _select_dev(self, L: np.ndarray, dev_L: np.ndarray, dev_y: np.ndarray) -> tuple[tuple[str, str], dict]:
        variants = self._variants(L)
        dev_vars = self._variants(dev_L)
        ref = self._reference(variants)
        correct: dict[tuple[str, str], np.ndarray] = {}
        for v, (M, _) in variants.items():
            for c in self.candidates:
                model = self._fit_quiet(c, M)
                if model is not None:
                    P = model.predict_proba(dev_vars[v][0])
                    top = P.max(axis=1, keepdims=True)
                    tied = P >= top - 1e-9
                    correct[(v, c)] = tied[np.arange(dev_y.size), dev_y] / tied.sum(axis=1)
        best, best_gain, scores = ref, 0.0, {}
        for key, a in correct.items():
            d = a - correct[ref]
            se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else float("inf")
            scores[f"{key[1]}/{key[0]}"] = {"dev_accuracy": float(a.mean()), "gain_vs_mv": float(d.mean()), "se": se}
            if key != ref and d.mean() > self.margin_z * se and d.mean() > best_gain:
                best, best_gain = key, float(d.mean())
        return best, {"criterion": "dev accuracy", "scores": scores}

    def _clusters(self, L: np.ndarray) -> list[list[int]]:
        """LF groups held out (and merged) together: agreement clusters, robust-PCA components, or their union."""
        k, m = self.k_, L.shape[1]
        groups = lf_clusters(L, k, threshold=self.cluster_threshold) if self.structure != "rpca" else []
        if self.structure == "agreement":
            return groups
        from lightning_ws.labelmodels.structure import learn_structure_rpca

        sub = self._selection_rows(L, np.random.default_rng([self.seed, 4050]))
        est = learn_structure_rpca(sub, k, seed=self.seed)
        edges = list(est.edges) + [(g[0], j) for g in groups for j in g[1:]]
        from lightning_ws.labelmodels.structure import StructureEstimate

        self.fit_report_["rpca_edges"] = [list(e) for e in est.edges]
        return StructureEstimate(edges=edges, scores=est.scores, rank=est.rank, n_iter=est.n_iter,
                                 converged=est.converged, columns=est.columns).components(m)

    # -- LabelModel hooks ---------------------------------------------------------------------------------------

    def _fit(self, L: np.ndarray, dev_L: np.ndarray | None, dev_y: np.ndarray | None) -> None:
        k = self.k_
        L, dev_L = self._drop_silent(L, dev_L)
        cols = self.active_lfs_ if self.active_lfs_ is not None else np.arange(L.shape[1])  # -> caller's columns
        self.clusters_ = self._clusters(L)
        if "rpca_edges" in self.fit_report_:
            self.fit_report_["rpca_edges"] = [[int(cols[j]) for j in e] for e in self.fit_report_["rpca_edges"]]
        with single_thread_blas():  # dozens of small fits: BLAS threads cost more than they give
            if dev_L is not None and dev_y is not None:
                choice, info = self._select_dev(L, dev_L, dev_y)
            else:
                choice, info = self._select_label_free(L)
        variant, name = choice
        self.merged_ = variant == "merged"
        M = merge_clusters(L, self.clusters_, k) if self.merged_ else L
        model = self._fit_quiet(name, M)
        if model is None:  # pragma: no cover - the candidate fitted on sub-matrices, so the full fit works
            variant, name, self.merged_ = "raw", "majority_vote", False
            model = self._make(name).fit(L, self._cb())
        label_free = info.get("criterion") != "dev accuracy"  # a pick made on dev labels is checked by them
        if (name != "majority_vote" and label_free and self.uncovered_check
                and not self._check_without_uncovered(L, (variant, name), model, M, info)):
            variant, name = self._reference(self._variants(L))
            self.merged_ = variant == "merged"
            M = merge_clusters(L, self.clusters_, k) if self.merged_ else L
            model = self._fit_quiet(name, M)
        if name != "majority_vote" and label_free and (
                self._reject_swapped(L, model, M, name, info)
                or (variant == "raw" and self._reject_copy_collapse(L, model, name, cols, info))):
            variant, name, self.merged_ = "raw", "majority_vote", False
            model = self._fit_quiet(name, L)
        self.inner_ = model
        self.uncovered_proba_ = None
        support = self._support_report(L, model, M, info.get("mv_agreement"))
        if self.class_balance_ is None:
            self.class_balance_ = model.class_balance_
            if dev_y is None:
                share = float(1.0 - covered_mask(L).mean())
                mv_rule: np.ndarray | None = None  # majority vote's vote shares, where its rule gave the balance
                if name == "majority_vote" and (self.uncovered_balance == "em" or share >= _UNCOVERED_WARN_SHARE):
                    self.class_balance_ = self._em_balance(L, M if self.merged_ else L, model.class_balance_)
                if name != "majority_vote" and self.support == "auto" and self.support_ == "model":
                    self.uncovered_proba_ = self._all_abstain_posterior(model)  # its abstain model passed the checks
                elif (name != "majority_vote" and (self.uncovered_balance == "em" or share >= _UNCOVERED_WARN_SHARE)
                      and not (info.get("without_uncovered", {}).get("cofiring")
                               or self._cofiring_check(model, M))["passed"]):
                    # the selection never scored the rows without a vote and the pick's model does not reproduce how
                    # the LFs fire together: those rows get what they would get under majority vote (its vote shares
                    # unless the EM prior passes the checks), not the pick's estimate
                    mv = self._fit_quiet("majority_vote", L, "estimated")
                    if mv is not None:
                        self.class_balance_ = self._em_balance(L, L, np.asarray(mv.class_balance_))
                        mv_rule = np.asarray(mv.class_balance_, dtype=np.float64)
                self._warn_uncovered_balance(L, name, share, mv_rule)
        self.fit_report_.update(selected=name, variant=variant,
                                clusters=[[int(cols[j]) for j in c] for c in self.clusters_ if len(c) > 1],
                                n_clusters=len(self.clusters_), selection=info,
                                converged=bool(model.fit_report_.get("converged", True)),
                                n_iter=int(model.fit_report_.get("n_iter", 0)), inner_report=model.fit_report_,
                                support=support)

    @staticmethod
    def _all_abstain_posterior(model: LabelModel) -> np.ndarray:
        """``(k,)`` the fitted model's ``P(Y | every LF abstains)``: its class balance times each LF's
        ``P(abstain | Y)`` (column 0 of ``lf_confusions``), normalised."""
        logp = (np.log(np.clip(np.asarray(model.class_balance_, dtype=np.float64), 1e-300, None))
                + np.log(np.clip(np.asarray(model.lf_confusions)[:, :, 0], 1e-300, None)).sum(axis=0))
        p = np.exp(logp - logp.max())
        return p / p.sum()

    def _uncovered_proba(self) -> np.ndarray:
        """``class_balance_``, or, when the fit trusted its pick's abstain model (``uncovered_proba_`` set; see "Class
        balance" above), the pick's ``P(Y | every LF abstains)``."""
        return self.class_balance_ if self.uncovered_proba_ is None else self.uncovered_proba_

    def _selection_rows(self, X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``X`` itself, or at most ``max_selection_rows`` of its rows drawn with ``rng``, in their original order."""
        if X.shape[0] <= self.max_selection_rows:
            return X
        return X[np.sort(rng.choice(X.shape[0], self.max_selection_rows, replace=False))]

    def _support_report(self, L: np.ndarray, model: LabelModel, M: np.ndarray,
                        mv_agreement: float | None = None) -> dict[str, Any]:
        """Resolve ``support_`` and report how often the pick's own argmax on a covered fit row is a class no LF
        voted there (what ``"voted"`` overrides), on at most ``max_selection_rows`` seeded rows.

        ``mv_agreement``: the pick's agreement with majority vote on all clear rows, when the label-swap guard
        (:meth:`_reject_swapped`) already computed it; otherwise it is computed here on the seeded rows.

        ``support="auto"`` uses the pick's own probabilities (``"model"``) only when all of these hold, else
        ``"voted"``: the task is binary (:data:`_SUPPORT_MAX_CLASSES`); the pick's fitted model reproduces the LFs'
        pairwise co-firing (:meth:`_cofiring_check`); and it agrees with majority vote on at least
        :data:`_EM_MIN_MV_AGREEMENT` of the rows where the vote majority is clear (nearer 50 % is a nearly
        label-swapped fit, whose overruling of lone votes cost 16-24 points on two spouse-like draws).
        """
        rows = self._selection_rows(np.arange(M.shape[0]), np.random.default_rng([self.seed, 4051]))
        L, M = L[rows], M[rows]
        report: dict[str, Any] = {"mode": self.support, "covered_rows": 0, "unvoted_argmax_rows": 0}
        self.support_ = "voted" if self.support == "auto" else self.support
        if model.name == "majority_vote":  # never predicts an unvoted class: nothing to decide
            report.update(covered_rows=int(covered_mask(M).sum()), used=self.support_)
            return report
        patterns = unique_rows(M)  # posteriors and co-firing depend on the vote pattern only
        U, _, counts = patterns
        cov = (U != ABSTAIN).any(axis=1)  # covered patterns
        report["covered_rows"] = int(counts[cov].sum())
        if self.support == "auto":
            agree = mv_agreement if mv_agreement is not None else self._mv_agreement(L, model, M)[0]
            check = {"classes": self.k_, "max_classes": _SUPPORT_MAX_CLASSES, "mv_agreement": agree,
                     "min_mv_agreement": _EM_MIN_MV_AGREEMENT,
                     "cofiring": self._cofiring_check(model, M, patterns=patterns)}
            if self.k_ > _SUPPORT_MAX_CLASSES:
                check["kept_voted_because"] = f"{self.k_} classes (own probabilities only for binary tasks)"
            elif not check["cofiring"]["passed"]:
                check["kept_voted_because"] = "the model does not reproduce how often the LFs fire together"
            elif agree is None or agree < _EM_MIN_MV_AGREEMENT:
                check["kept_voted_because"] = (f"it agrees with majority vote on {agree if agree is not None else 0:.0%}"
                                               f" of the rows with a clear vote majority (< "
                                               f"{_EM_MIN_MV_AGREEMENT:.0%})")
            else:
                self.support_ = "model"
            report["check"] = check
        report["used"] = self.support_
        if cov.any():
            Uc = U[cov]
            top = model.predict_proba(Uc).argmax(axis=1)
            unvoted = vote_counts(Uc, self.k_)[np.arange(Uc.shape[0]), top] == 0
            report["unvoted_argmax_rows"] = int(counts[cov][unvoted].sum())
        return report

    @staticmethod
    def _cofiring_check(model: LabelModel, M: np.ndarray,
                        patterns: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
        """Does the pick's fitted model reproduce how often each pair of LFs fires together?

        Expected co-firing rows of LFs ``i, j`` under the model: ``n * sum_y p_y P(i fires | y) P(j fires | y)``
        (its class balance and ``lf_confusions``); observed: the rows where both vote. Statistic: the mean of
        ``(observed - expected) ** 2 / expected`` over the pairs expected on at least :data:`_SUPPORT_MIN_EXPECTED`
        rows. The check passes when such pairs are at least :data:`_SUPPORT_MIN_PAIR_SHARE` of all LF pairs and the
        mean is at most :data:`_SUPPORT_MAX_MEAN_Z2`. ``patterns``: :func:`unique_rows` of ``M``, when the caller
        already has it.
        """
        U, _, counts = unique_rows(M) if patterns is None else patterns
        F = (U != ABSTAIN).astype(np.float64)
        fire = 1.0 - np.asarray(model.lf_confusions)[:, :, 0]  # (m, k) P(fires | Y = y)
        p = np.asarray(model.class_balance_, dtype=np.float64)
        n = float(counts.sum())
        observed = F.T @ (F * counts[:, None])
        expected = n * (fire * p[None, :]) @ fire.T
        iu = np.triu_indices(F.shape[1], 1)
        o, e = observed[iu], expected[iu]
        keep = e >= _SUPPORT_MIN_EXPECTED
        out: dict[str, Any] = {"pairs": int(keep.sum()), "all_pairs": int(e.size), "mean_z2": None,
                               "max_mean_z2": _SUPPORT_MAX_MEAN_Z2, "min_pair_share": _SUPPORT_MIN_PAIR_SHARE,
                               "passed": False}
        if keep.any():
            z2 = (o[keep] - e[keep]) ** 2 / e[keep]
            out["mean_z2"] = float(z2.mean())
            out["passed"] = bool(out["mean_z2"] <= _SUPPORT_MAX_MEAN_Z2
                                 and keep.sum() >= _SUPPORT_MIN_PAIR_SHARE * e.size)
        return out

    def _mv_agreement(self, L: np.ndarray, model: LabelModel, M: np.ndarray) -> tuple[float | None, int]:
        """Share of the rows where the vote majority is clear (covered, untied) on which ``model`` (fitted on ``M``,
        the matrix ``L`` or its cluster-merged form) predicts the majority's class; ``None`` without such rows."""
        votes = vote_counts(L, self.k_)
        top = votes.max(axis=1)
        clear = (top > 0) & ((votes == top[:, None]).sum(axis=1) == 1)
        if not clear.any():
            return None, 0
        P = model.predict_proba(M[clear])
        return float((P.argmax(axis=1) == votes[clear].argmax(axis=1)).mean()), int(clear.sum())

    def _reject_swapped(self, L: np.ndarray, model: LabelModel, M: np.ndarray, name: str,
                        info: dict[str, Any]) -> bool:
        """``True`` (and a warning) when the label-free pick contradicts the plain vote majority on most rows.

        Label-free estimation identifies the classes only up to a permutation; the assumption that fixes it is that
        LFs vote for their class better than chance. A model whose hard labels differ from majority vote's on more
        than half (:data:`_MIN_MV_AGREEMENT`) of the rows where the vote majority is clear (covered, untied) has
        taken the permuted solution, however well it scores: the selection criterion itself assumes held-out LFs
        better than chance, and LFs of a majority class whose precision is below that class's share break it. On
        spouse-like synthetic matrices (8-20 % positives, LF precision 0.3-0.7) 14 picks agreed on 41-50 %: 13 of
        them were 55-86 points of accuracy below majority vote, one 1.8 above; picks in the other regimes, the
        regime matrix, WRENCH and a 720-draw sweep agreed on 64 % or more (``benchmarks/diag_label_swap.py``). The
        agreement is recorded in ``fit_report_["selection"]["mv_agreement"]``.
        """
        agree, n_clear = self._mv_agreement(L, model, M)
        if agree is None:
            return False
        info["mv_agreement"] = agree
        if agree >= _MIN_MV_AGREEMENT:
            return False
        info["rejected"] = {"pick": name, "mv_agreement": agree, "reason": "label-swapped"}
        warnings.warn(f"AutoLabelModel: the label-free pick {name} agrees with majority vote on only {agree:.0%} "
                      f"of the {n_clear} rows where the vote majority is clear, i.e. it reverses most "
                      "unambiguous votes (a class-permuted fit: some LFs are probably worse than chance for their "
                      "class); majority vote is used instead. Check the LFs' precision, or pass dev_L/dev_y.",
                      stacklevel=3)
        return True

    def _lf_label(self, j: Any) -> Any:
        """LF ``j`` (a caller's column) as warnings name it: its name when ``fit`` got ``lf_names``, else the index."""
        return self.lf_names_[int(j)] if self.lf_names_ else int(j)

    def _reject_copy_collapse(self, L: np.ndarray, model: LabelModel, name: str, cols: np.ndarray,
                              info: dict[str, Any]) -> bool:
        """``True`` (and a warning) when the label-free pick, fitted on the raw LFs, has turned a class into "the rows
        where one copied LF fires".

        A conditional-independence model reads two copies of a rule (an LF duplicated, or a keyword variant that fires
        on nearly the same rows) as two independent witnesses that always agree, i.e. as nearly perfect; the fit can
        then make class ``y`` the copied LF's firing rows. Rejected when all three hold:

        * ``P(LF j votes | Y = y) >= 0.9`` (:data:`_COPY_COLLAPSE_RATE_IN`) and ``P(LF j votes | Y != y) <= 0.05``
          (:data:`_COPY_COLLAPSE_RATE_OUT`) in the fit;
        * ``j`` is in an agreement cluster of several LFs (it has near-copies);
        * the fit contradicts another LF that votes ``y`` (5 votes or more, outside the cluster): its class-``y``
          votes are more often one other class than ``y``, against the premise majority vote rests on (and with
          which label-free fits fix the class permutation).

        The held-out selection does not see the collapse: the LFs of the classes it favours agree more, and other LFs
        of the copied rule's class fire on the same rows beyond what ``Y`` explains. Measured (session 39,
        ``benchmarks/diag_copied_lfs.py``): WRENCH YouTube train with ``keyword_please`` or ``keyword_my`` appended as
        a copy (also with 20 % of the copy's votes removed) made MomentMatching / Dawid-Skene raw collapse (spam prior
        0.11, the copied rule's coverage; 58 % accuracy on their own), pass both held-out tests, and cost 7.5-9.0
        points against majority vote on train after the voted-class restriction (4.8-11.2 on test). The third
        condition separates copies from genuine detectors: on spouse-like synthetic matrices
        (``diag_rare_class_f1.py``) several accurate rules catch 99 % of a rare class and almost nothing else, cluster
        together, and the fit that trusts them is right (100 % accuracy against majority vote's 89-94 %); the first two
        conditions alone rejected 6 such picks. Only raw-variant picks are checked: a merged fit holds one column per
        cluster, with no copy to over-count.
        """
        groups = [c for c in self.clusters_ if len(c) > 1]
        if not groups:
            return False
        conf = np.asarray(model.lf_confusions, dtype=np.float64)  # (m, k, k + 1), column 0 = abstain
        if conf.shape[0] != len(cols):  # pragma: no cover - a raw pick is fitted on the active LFs
            return False
        p = np.asarray(model.class_balance_, dtype=np.float64)
        fire = 1.0 - conf[:, :, 0]  # P(LF votes | Y = y)
        for c in groups:
            for j in c:
                for y in range(p.shape[0]):
                    w = np.delete(p, y)
                    out = float(np.delete(fire[j], y) @ w / max(float(w.sum()), 1e-12))
                    if fire[j, y] < _COPY_COLLAPSE_RATE_IN or out > _COPY_COLLAPSE_RATE_OUT:
                        continue
                    # the collapse must contradict the LFs outside the copies: some other rule that votes y (5 votes
                    # or more) gets a fit in which its y votes are more often one other class than y (the premise
                    # majority vote rests on, and with which label-free fits fix the class permutation)
                    post = p[None, :] * conf[:, :, y + 1]  # (m, k): P(Y = c, LF votes y)
                    with np.errstate(invalid="ignore", divide="ignore"):
                        precision = post[:, y] / post.sum(axis=1)
                    others = [i for i in range(len(cols)) if i not in c and int((L[:, i] == y).sum()) >= 5]
                    contradicted = [i for i in others if int(post[i].argmax()) != y]
                    if not contradicted:
                        continue
                    lf = self._lf_label(cols[j])
                    copies = [self._lf_label(cols[i]) for i in c]
                    info["rejected"] = {"pick": name, "reason": "class collapsed onto a copied LF", "lf": int(cols[j]),
                                        "class": y, "vote_rate_in_class": float(fire[j, y]),
                                        "vote_rate_other_classes": out, "cluster": [int(cols[i]) for i in c],
                                        "contradicted": {int(cols[i]): float(precision[i]) for i in contradicted}}
                    warnings.warn(f"AutoLabelModel: the label-free pick {name} made class {y} the rows where LF {lf!r} "
                                  f"fires (it votes on {fire[j, y]:.0%} of that class's rows and {out:.1%} of the "
                                  f"others' in the fit), that LF has near-copies in the matrix ({copies}), and the fit "
                                  f"says the class-{y} votes of {len(contradicted)} other rule(s) mostly mean another "
                                  "class: a conditional-independence model reads copies that always agree as nearly "
                                  "perfect rules. Majority vote is used instead. Remove duplicated LFs (or merge "
                                  "them), or pass dev_L/dev_y.", stacklevel=3)
                    return True
        return False

    def _drop_silent(self, L: np.ndarray, dev_L: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Remove the LF columns that carry no information on the fit matrix (warn and record them).

        Two kinds: LFs that never vote (``fit_report_["silent_lfs"]``), and LFs that vote one and the same class on
        every row (``fit_report_["constant_lfs"]``, ``{column: class}``). A constant LF's vote does not depend on
        ``Y`` (``P(vote = c | Y) = 1`` for every class), so every conditional-independence model gives it no
        weight; but majority vote counts it as a vote for ``c`` on every row, which breaks ties toward ``c``, and a
        constant LF held out by the label-free selection rewards whichever candidate predicts ``c`` most often
        (agreement with it is the share of rows predicted ``c``). Constant LFs are kept when nothing else votes.
        ``fit`` refused a matrix without votes.
        """
        votes = _column_vote_counts(L)
        silent = np.flatnonzero(votes == 0)
        constant = _constant_columns(L, votes)
        if constant and len(constant) == int((votes > 0).sum()):
            constant = {}  # nothing else votes: keep them (majority vote of constant LFs, as before)
        self.active_lfs_ = None
        self.constant_lfs_ = constant
        self.fit_report_["silent_lfs"] = silent.tolist()
        self.fit_report_["constant_lfs"] = {int(j): c for j, c in constant.items()}
        if not silent.size and not constant:
            return L, dev_L

        def _names(cols: Any) -> list[Any]:
            return [self._lf_label(j) for j in list(cols)[:10]]

        if silent.size:
            warnings.warn(f"{silent.size} of {L.shape[1]} labeling functions never vote on the {L.shape[0]} rows "
                          f"passed to fit (e.g. {_names(silent)}); they carry no information here, so AutoLabelModel "
                          f"ignores them, also at prediction (their votes get no weight). Drop them, or fit on data "
                          f"where they fire, to use them.", UserWarning, stacklevel=4)
        if constant:
            warnings.warn(f"{len(constant)} of {L.shape[1]} labeling functions vote the same class on every one of "
                          f"the {L.shape[0]} rows passed to fit (e.g. {_names(sorted(constant))}, classes "
                          f"{[constant[j] for j in sorted(constant)][:10]}); such a vote does not depend on the true "
                          f"class and carries no information, so AutoLabelModel ignores them, also at prediction "
                          f"(majority vote would count them as a vote on every row and break its ties toward their "
                          f"class). Check them for a bug (a rule that always fires); make them abstain where they "
                          f"do not apply to use them.", UserWarning, stacklevel=4)
        self.active_lfs_ = np.flatnonzero((votes > 0) & ~np.isin(np.arange(L.shape[1]), list(constant)))
        return L[:, self.active_lfs_], (None if dev_L is None else dev_L[:, self.active_lfs_])

    def _em_balance(self, L: np.ndarray, M: np.ndarray, vote_share: np.ndarray) -> np.ndarray:
        """The balance rows without a vote get when majority vote is kept, per ``uncovered_balance``.

        Fits a label-free Dawid-Skene model on ``M`` (the kept majority vote's matrix: ``L`` or its cluster-merged
        form) for its class prior. ``"em"`` uses that prior unless the fit failed or is label-swapped (it agrees with
        majority vote on under half of the rows where the vote majority is clear: its prior is then permuted too, see
        :meth:`_reject_swapped`). ``"auto"`` uses it only when it names another class than ``vote_share`` and the
        fit passes five checks; otherwise ``vote_share``:

        * the EM prior expects a real gain: its prior of its own class exceeds its prior of the vote-share class by
          at least :data:`_EM_MIN_PRIOR_GAP` (a nearly flat prior's argmax is a coin flip);
        * ``auto`` found no cluster of dependent LFs (:func:`~lightning_ws.labelmodels.matrix.lf_clusters`): the EM
          fit counts each copy of a duplicated rule as independent evidence, and on relation-style matrices with
          near-copies (``diag_relation_regimes.py``) its prior gave the silent rows a class that cost 5.6-12.7 points;
        * the fit agrees with majority vote on at least :data:`_EM_MIN_MV_AGREEMENT` of the rows where the vote
          majority is clear (fits of LFs worse than chance for their class sit just above the swap guard's 50 %);
        * no LF has ``P(vote | Y = y) >= 0.95`` (:data:`_EM_BOUNDARY_FIRE_RATE`) for a class ``y``. Such a fit has
          made class ``y`` "the rows where LF ``j`` fires" (WRENCH SMS subsets: a ham rule at 29 % coverage got rate
          1.0, so the ham prior became 0.29 and every silent row spam, 82-87 % of them wrongly);
        * its log-likelihood beats a Dawid-Skene fit with the prior held at ``vote_share`` by at least
          :data:`_EM_LOGLIK_MARGIN`: the data reject the vote-share balance, rather than leaving the prior on a flat
          ridge (SMS subsets with 94 % silent rows: 7 log-likelihood units, prior wrong by 69 points).

        ``vote_share`` is returned as ``float64``. Everything is recorded in ``fit_report_["uncovered_balance"]``.
        """
        vote_share = np.asarray(vote_share, dtype=np.float64)
        ds = self._fit_quiet("dawid_skene", M, "estimated")
        prior = None if ds is None else np.asarray(ds.class_balance_, dtype=np.float64)
        ok = prior is not None and prior.shape == vote_share.shape and bool(np.isfinite(prior).all())
        agree = self._mv_agreement(L, ds, M)[0] if ok else None
        usable = ok and not (agree is not None and agree < _MIN_MV_AGREEMENT)  # failed or label-swapped: unusable
        report: dict[str, Any] = {"mode": self.uncovered_balance, "em_prior": prior.tolist() if ok else None,
                                  "em_mv_agreement": agree, "em_usable": usable, "vote_share": vote_share.tolist()}
        use = usable and self.uncovered_balance != "vote_share"
        if use and self.uncovered_balance == "auto":
            reason = self._em_prior_veto(ds, M, prior, vote_share, agree, report)
            use = reason is None
            if reason is not None:
                report["kept_vote_share_because"] = reason
        report["source"] = "dawid_skene_em_prior" if use else "majority_vote_vote_share"
        self.fit_report_["uncovered_balance"] = report
        return prior if use else vote_share

    def _em_prior_veto(self, ds: LabelModel, M: np.ndarray, prior: np.ndarray, vote_share: np.ndarray,
                       agree: float | None, report: dict[str, Any]) -> str | None:
        """Why ``uncovered_balance="auto"`` keeps ``vote_share`` instead of the usable EM ``prior`` (``None``: it does
        not). The checks of :meth:`_em_balance`, cheapest first; the measured ones go into ``report``."""
        gap = float(prior.max() - prior[int(vote_share.argmax())])
        report["em_prior_gap"] = gap
        if int(prior.argmax()) == int(vote_share.argmax()):
            return "same class"
        if gap < _EM_MIN_PRIOR_GAP:
            return f"the EM prior expects only {gap:.2f} more accuracy on those rows from its class (< {_EM_MIN_PRIOR_GAP})"
        n_groups = sum(len(c) > 1 for c in self.clusters_)
        if n_groups:
            return (f"{n_groups} cluster(s) of dependent LFs were found, and the EM prior assumes conditionally "
                    "independent LFs")
        if agree is None or agree < _EM_MIN_MV_AGREEMENT:
            return (f"the EM fit agrees with majority vote on {agree if agree is not None else float('nan'):.1%} of "
                    f"the rows where the vote majority is clear (< {_EM_MIN_MV_AGREEMENT:.0%})")
        fire = float((1.0 - ds.lf_confusions[:, :, 0]).max())
        report["em_max_vote_rate"] = fire
        if fire >= _EM_BOUNDARY_FIRE_RATE:
            return f"an LF votes on {fire:.1%} of one class's rows in the EM fit (>= {_EM_BOUNDARY_FIRE_RATE})"
        held = self._fit_quiet("dawid_skene", M, vote_share)
        gain = (float("nan") if held is None else float(ds.fit_report_.get("log_likelihood", np.nan))
                - float(held.fit_report_.get("log_likelihood", np.nan)))
        report["em_loglik_gain"] = gain
        if not gain >= _EM_LOGLIK_MARGIN:  # nan (a failed fit) keeps the vote share too
            return f"EM log-likelihood gain over the vote-share prior {gain:.1f} < {_EM_LOGLIK_MARGIN}"
        return None

    def _warn_uncovered_balance(self, L: np.ndarray, name: str, share: float,
                                vote_share: np.ndarray | None = None) -> None:
        """Warn when the pick's estimated class balance labels the all-abstain rows differently from majority vote.

        The selection criterion scores candidates on rows where LFs vote; rows where every LF abstains get the
        chosen model's class balance, which nothing label-free checks. On a synthetic sweep beyond the regime matrix
        (``benchmarks/diag_uncovered_rows.py``) this was how ``auto`` lost most to majority vote without a warning
        (-4.97 and -4.10 points, 32-39 % of rows uncovered). Warn (at most once per fit) when at least
        :data:`_UNCOVERED_WARN_SHARE` of the rows are uncovered and the pick's most likely class differs from the one
        majority vote's vote-share balance gives them. When the pick is majority vote, warn instead when its vote
        shares and the EM prior of :meth:`_em_balance` name different classes, and likewise when another pick's
        rows without a vote got majority vote's rule (``vote_share`` given: majority vote's vote shares; session
        40). The report records the share
        (``share``: uncovered rows of ``L``, computed once by the caller) and the pick's balance, and majority vote's
        balance where it was needed (the kept majority vote's own vote shares; not refitted below the threshold,
        where nothing is compared).
        """
        ours = np.asarray(self._uncovered_proba(), dtype=np.float64)
        report: dict[str, Any] = {"share": share, "class_balance": np.asarray(self.class_balance_).tolist(),
                                  "source": "class_balance" if self.uncovered_proba_ is None
                                  else "all_abstain_posterior"}
        if self.uncovered_proba_ is not None:
            report["all_abstain_posterior"] = ours.tolist()
        self.fit_report_["uncovered"] = report
        if name == "majority_vote" or vote_share is not None:
            mv_balance = np.asarray(self.inner_.class_balance_ if vote_share is None else vote_share,
                                    dtype=np.float64)  # its vote shares
            report["majority_vote_class_balance"] = mv_balance.tolist()
            em = (self.fit_report_.get("uncovered_balance") or {})
            if share < _UNCOVERED_WARN_SHARE or not em.get("em_usable"):
                return
            prior = np.asarray(em["em_prior"], dtype=np.float64)
            if int(prior.argmax()) == int(mv_balance.argmax()):
                return
            estimates = {"majority_vote_vote_share": ("majority vote's vote shares", mv_balance),
                         "dawid_skene_em_prior": ("the class prior of a label-free Dawid-Skene fit", prior)}
            (used, b_used), (other, b_other) = (estimates.pop(em["source"]), *estimates.values())
            who = ("kept majority vote" if name == "majority_vote" else
                   f"picked {name}, and rows without a vote get what majority vote would give them")
            warnings.warn(f"AutoLabelModel {who}: {share:.0%} of the rows get no vote and take "
                          f"{used} {np.round(b_used, 3).tolist()} (class {int(b_used.argmax())}), while {other} "
                          f"{np.round(b_other, 3).tolist()} would give them class {int(b_other.argmax())} "
                          f"(uncovered_balance={self.uncovered_balance!r}"
                          f"{': ' + em['kept_vote_share_because'] if 'kept_vote_share_because' in em else ''}). "
                          "Neither is safe (vote shares describe the covered rows and can name a rare class; the EM "
                          "prior assumes conditionally independent LFs and named the rare class on real LF subsets). "
                          "If those rows matter, pass a known prior or "
                          "class_balance='dev' (with dev_L/dev_y), or exclude them with "
                          "predict(..., abstain_uncovered=True).", stacklevel=3)
            return
        if share < _UNCOVERED_WARN_SHARE:
            return
        mv = self._fit_quiet("majority_vote", L, "estimated")
        if mv is None:  # pragma: no cover - majority vote fits any valid matrix
            return
        mv_balance = mv.class_balance_
        report["majority_vote_class_balance"] = mv_balance.tolist()
        if int(ours.argmax()) == int(mv_balance.argmax()):
            return
        what = ("estimated class balance" if self.uncovered_proba_ is None else
                "posterior for a row where every LF abstains (its abstain model passed the co-firing check)")
        warnings.warn(f"AutoLabelModel picked {name}: {share:.0%} of the rows get no vote and take its {what} "
                      f"{np.round(ours, 3).tolist()} (class {int(ours.argmax())}), while majority "
                      f"vote's vote shares {np.round(mv_balance, 3).tolist()} would give them class "
                      f"{int(mv_balance.argmax())}; the label-free selection cannot check rows without votes. If "
                      "they matter, pass a known prior or class_balance='dev' (with dev_L/dev_y), or exclude them "
                      "with predict(..., abstain_uncovered=True).", stacklevel=3)

    def _covered_rows(self, L: np.ndarray) -> np.ndarray:
        """Rows where an LF the fit kept votes: a vote of an LF ignored as silent or constant labels nothing."""
        return covered_mask(L if self.active_lfs_ is None else L[:, self.active_lfs_])

    def _transform(self, L: np.ndarray) -> np.ndarray:
        if self.active_lfs_ is not None:
            L = L[:, self.active_lfs_]
        return merge_clusters(L, self.clusters_, self.k_) if self.merged_ else L

    def _proba_covered(self, L: np.ndarray) -> np.ndarray:
        M = self._transform(L)
        P = self.inner_.predict_proba(M)
        return restrict_to_voted(P, M, self.k_) if self.support_ == "voted" else P

    def _lf_confusions(self) -> np.ndarray:
        conf = self.inner_.lf_confusions
        active = self.active_lfs_
        if self.merged_:
            out = np.empty((self.num_lfs_ if active is None else active.size,) + conf.shape[1:])
            for g, members in enumerate(self.clusters_):
                out[members] = conf[g]  # each member gets its cluster's (merged) confusions
            conf = out
        if active is None:
            return conf
        full = np.zeros((self.num_lfs_,) + conf.shape[1:])
        full[:, :, 0] = 1.0  # an LF that never voted: abstains whatever the class
        for j, c in getattr(self, "constant_lfs_", {}).items():  # a constant LF: votes c whatever the class
            full[j, :, 0], full[j, :, c + 1] = 0.0, 1.0
        full[active] = conf
        return full

    @property
    def selected(self) -> str:
        """``"<model>/<raw|merged>"`` chosen at fit time."""
        self._check_fitted()
        return f"{self.inner_.name}/{'merged' if self.merged_ else 'raw'}"

    # -- persistence: the inner model's state travels inside ours ---------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Our meta plus the inner model's state (arrays prefixed ``inner.``)."""
        state = super().state_dict()
        inner = self.inner_.state_dict()
        state["arrays"].update({f"inner.{k}": np.array(v, copy=True) for k, v in inner["arrays"].items()})
        state["meta"]["extra"] = {"inner_meta": inner["meta"], "clusters": self.clusters_, "merged": self.merged_,
                                  "active_lfs": None if self.active_lfs_ is None else self.active_lfs_.tolist(),
                                  "constant_lfs": [[int(j), int(c)] for j, c in
                                                   sorted(getattr(self, "constant_lfs_", {}).items())],
                                  "support_used": self.support_,
                                  "uncovered_proba": None if self.uncovered_proba_ is None
                                  else [float(x) for x in self.uncovered_proba_]}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        super().load_state_dict(state)
        # files written before ``support`` existed predicted with the inner model's own probabilities
        self.support = state["meta"].get("config", {}).get("support", "model")
        # files written before session 43 were selected by plain agreement
        self.criterion = state["meta"].get("config", {}).get("criterion", "agreement")
        # files written before session 45 were selected without the within-strata tests
        self.within_strata = bool(state["meta"].get("config", {}).get("within_strata", False))
        extra = state["meta"]["extra"]
        # files written before support="auto" existed hold "voted" or "model" in their config
        self.support_ = extra.get("support_used", "voted" if self.support == "auto" else self.support)
        unc = extra.get("uncovered_proba")  # absent in files written before session 30
        self.uncovered_proba_ = None if unc is None else np.asarray(unc, dtype=np.float64)
        im = extra["inner_meta"]
        inner = registry()[im["name"]](**im["config"])
        inner.load_state_dict({"meta": im, "arrays": {k[6:]: v for k, v in state["arrays"].items()
                                                      if k.startswith("inner.")}})
        self.inner_ = inner
        self.clusters_ = [list(map(int, c)) for c in extra["clusters"]]
        self.merged_ = bool(extra["merged"])
        active = extra.get("active_lfs")  # absent in files written before silent LFs were accepted
        self.active_lfs_ = None if active is None else np.asarray(active, dtype=np.int64)
        self.constant_lfs_ = {int(j): int(c) for j, c in extra.get("constant_lfs", [])}  # absent before session 37

