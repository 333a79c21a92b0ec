"""Answer-level latent model: label-free EM over "which answer of this problem is correct, if any".

Weaver (arXiv 2506.18203) treats every (problem, candidate) pair as an independent item and lets a naive-Bayes label
model decide each one. Two facts of verifier data break that: correctness is a function of the *extracted answer*
(candidates that share an answer are all right or all wrong), and at most one distinct answer of a problem is
correct. :class:`AnswerLevelModel` uses both. For problem ``p`` with distinct answers ``a`` (a candidate without an
extracted answer is its own singleton answer), the latent ``z_p`` is the correct answer or "none":

    P(z_p = a) = gamma * P(a is correct | the problem's answer counts),   P(z_p = none) = 1 - gamma,
    P(bin of source k for answer a | a is / is not z_p) = f1[k, b] / f0[k, b],

where source ``k``'s evidence for ``a`` is built from the binned (pooled, normalised) scores of ``a``'s candidates:
their mean log-likelihood ratio times their effective number ``n / (1 + (n - 1) rho_k)``, with ``rho_k`` the
source's within-answer correlation given the class, estimated label-free in every EM step (``dependence="icc"``,
the default since session 19; the fixed ``n ** 0.5`` before it let EM over-trust a judge fooled the same way by
every candidate of an answer).
The agreement prior (default ``agreement="partition"``) is a generative model of how a problem's ``N`` candidates
split into answers: the problem's correct rate is ``Beta(a, b)`` (the correct answer's count is beta-binomial) and
the wrong candidates form a Pitman-Yor partition (concentration ``theta``, discount ``sigma``; negative ``sigma`` is
a finite symmetric Dirichlet-multinomial over ``theta / -sigma`` distractors, the multiple-choice case; ``sigma = 0``
a Chinese restaurant process, the free-form case). Bayes' rule gives ``P(a is correct | counts)`` as a function of
``a``'s count alone (:func:`_partition_log_weight`). EM learns ``gamma``, ``(a, b, theta, sigma)`` and the binned
class-conditional score distributions ``f1, f0`` without labels. The count parameters are fitted to the *count data*
of the problems EM believes solvable (:func:`_fit_partition`), so the weight of agreement is anchored by how the
answers are distributed, not only by what the verifiers say. Since session 24 the anchor is also checked
(``count_check``): a count model that explains the answer partitions clearly worse than the prior fitted to the
counts alone (:func:`_fit_partition_counts_only`) is replaced by that fit, and EM rerun with it held. Since session
26 the within-answer correlation is checked against the counts too (``rho_check``): EM's posterior sorts answers by
the very scores whose residual variance gives ``rho``, so a fit that over-trusts a source estimates a ``rho`` near 0,
counts every candidate of an answer as independent evidence and trusts the source more still; where EM's ``rho``
falls under half of the one estimated under the counts-only posterior, that one is used. The anchor
matters when a judge's error is shared by every candidate of an answer: with the previous, conditional prior
(``agreement="learned"``: ``softmax_a(theta_1 log share_a + theta_2 log(1 - share_a))`` fitted to the answer
posteriors) EM could trade agreement for an over-trusted judge, and lost to majority vote by up to 39 points on
development judge sets where majority vote is strong
(BENCHMARKS.md, issue-17 section). The prior can be U-shaped (a correct answer held by few candidates more plausible
than a wrong one held by a middling number: the Bayes-optimal shape on hard multiple choice with evenly spread
distractors) and it is steep where the correct rate is concentrated. ``agreement="exponent"`` is the monotone ``share
** beta`` of the first issue-17 version.

Two symmetry-breaking rules keep EM from inverted fits (both label-free; the weak-supervision assumption that sources
beat chance): among the EM starts, fits whose sources are on average clearly worse than chance (implied AUROC below
``0.5 - orient_tol``) are dropped; and with ``agreement="learned"`` ``theta_1 >= theta_2`` (of two answers that split
the candidates, the more frequent is never the less likely correct). The posterior ``P(z_p = a)`` is each
candidate's P(correct); selection takes the most probable answer.

Lightning-free (numpy).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from lightning_ws.errors import ConfigError, DataError
from lightning_ws.weaver._numeric import array_digest, nan_mean
from lightning_ws.weaver.data import present_candidates
from lightning_ws.weaver.ordinal import bin_scores

__all__ = ["AGREEMENT", "EVIDENCE", "AnswerGroups", "AnswerLevelModel", "no_shared_answer"]

#: Evidence models of :class:`AnswerLevelModel`.
EVIDENCE = ("random_effects", "candidates", "answer_mean")
#: How answer agreement enters :class:`AnswerLevelModel`.
AGREEMENT = ("partition", "learned", "exponent")
#: Largest Pitman-Yor discount of the ``"partition"`` agreement prior (the wrong answers' spread).
_SIGMA_MAX = 0.95


def no_shared_answer(answer_ids: np.ndarray) -> bool:
    """Whether no two candidates of any problem share an answer (``-1``, no answer, is nobody's answer, as in
    :class:`AnswerGroups`): data without an agreement signal, where ``AnswerLevelModel(monotone="auto")`` takes the
    likelihood-ratio order and ``Weaver(guard_split="auto")`` runs its split test."""
    ids = np.sort(np.asarray(answer_ids), axis=1)
    return not bool(((ids[:, 1:] == ids[:, :-1]) & (ids[:, 1:] >= 0)).any())


class AnswerGroups:
    """The distinct answers of every problem: group index per candidate, per-group problem, size and share.

    ``present`` (optional ``(P, N)`` bool) marks the candidates that exist. Problems with fewer candidates than
    others arrive padded to one ``N`` (no answer, no score); a padding slot is not a candidate: it is kept as a
    group of its own that can never be the correct answer (``log_mask`` = -inf), and shares and counts use the
    problem's own number of candidates (``n_candidates``). A problem with no present candidate keeps all of them.
    """

    def __init__(self, answer_ids: np.ndarray, present: np.ndarray | None = None) -> None:
        ids = np.asarray(answer_ids)
        if ids.ndim != 2:
            raise DataError(f"answer_ids must have shape (P, N); got {ids.shape}.")
        P, N = ids.shape
        # a candidate without an answer is its own answer: give it a code past every real one
        codes = np.where(ids >= 0, ids, ids.max(initial=0) + 1 + np.arange(N)[None, :])
        key = np.arange(P)[:, None] * (codes.max() + 1) + codes
        uniq, inv, counts = np.unique(key.ravel(), return_inverse=True, return_counts=True)
        self.group = inv.reshape(P, N)  # (P, N) group index, groups sorted by problem
        self.problem = (uniq // (codes.max() + 1)).astype(np.int64)  # (G,)
        self.size = counts.astype(np.float64)
        self.starts = np.flatnonzero(np.r_[True, self.problem[1:] != self.problem[:-1]])
        self.num_problems, self.num_candidates = P, N
        #: (G,) 0.0, or -inf for a padding slot; None when every candidate is present
        self.log_mask: np.ndarray | None = None
        #: (P,) number of present candidates of each problem
        self.n_present = np.full(P, float(N))
        if present is not None:
            pres = np.asarray(present, dtype=bool)
            if pres.shape != ids.shape:
                raise DataError(f"present must have shape {ids.shape}; got {pres.shape}.")
            pres = pres | (ids >= 0) | ~pres.any(axis=1, keepdims=True)
            if not pres.all():
                absent = np.zeros(self.num_groups, dtype=bool)
                absent[self.group[~pres]] = True
                self.log_mask = np.where(absent, -np.inf, 0.0)
                self.n_present = pres.sum(axis=1).astype(np.float64)
        #: (G,) number of candidates of each group's problem
        self.n_candidates = self.n_present[self.problem]
        self.share = self.size / self.n_candidates

    @property
    def absent(self) -> np.ndarray:
        """``(G,)`` True for a padding slot."""
        return np.zeros(self.num_groups, dtype=bool) if self.log_mask is None else np.isinf(self.log_mask)

    def masked(self, v: np.ndarray) -> np.ndarray:
        """``(G,)`` values with padding slots set to -inf (``v`` itself when nothing is padded)."""
        return v if self.log_mask is None else v + self.log_mask

    @property
    def answers_per_problem(self) -> np.ndarray:
        """``(G,)`` number of distinct answers of each group's problem."""
        return np.bincount(self.problem, minlength=self.num_problems)[self.problem].astype(np.float64)

    @property
    def num_groups(self) -> int:
        """``G``, the number of (problem, answer) groups."""
        return int(self.problem.size)

    def group_mean(self, x: np.ndarray) -> np.ndarray:
        """``(G, K)`` nan-mean over each group's candidates of ``(P, N, K)`` scores (NaN if all missing)."""
        s = np.asarray(x, dtype=np.float64)
        flat = s.reshape(-1, s.shape[2])
        g = self.group.ravel()
        ok = ~np.isnan(flat)
        num = np.zeros((self.num_groups, s.shape[2]))
        den = np.zeros_like(num)
        np.add.at(num, g, np.where(ok, flat, 0.0))
        np.add.at(den, g, ok.astype(np.float64))
        with np.errstate(all="ignore"):
            return np.where(den > 0, num / den, np.nan)

    def segment_logsumexp(self, v: np.ndarray) -> np.ndarray:
        """``(P,)`` log-sum-exp of ``(G,)`` values within each problem."""
        m = np.maximum.reduceat(v, self.starts)
        return m + np.log(np.add.reduceat(np.exp(v - m[self.problem]), self.starts))

    def log_softmax(self, v: np.ndarray) -> np.ndarray:
        """``(G,)`` log-softmax of ``(G,)`` values within each problem; a padding slot gets -inf (never chosen)."""
        v = self.masked(v)
        return v - self.segment_logsumexp(v)[self.problem]

    def softmax(self, v: np.ndarray) -> np.ndarray:
        """``(G,)`` softmax of ``(G,)`` values within each problem; a padding slot gets 0."""
        return np.exp(self.log_softmax(v))


def _pava(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares non-decreasing fit of ``y`` (pool adjacent violators)."""
    vals, wts, lens = [], [], []
    for yi, wi in zip(y.tolist(), w.tolist()):
        vals.append(yi)
        wts.append(wi)
        lens.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            wsum = wts[-2] + wts[-1]
            vals[-2] = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / wsum
            wts[-2], lens[-2] = wsum, lens[-2] + lens[-1]
            del vals[-1], wts[-1], lens[-1]
    return np.repeat(np.asarray(vals), lens)


class AnswerLevelModel:
    """Label-free EM over the correct answer of each problem (see the module docstring).

    Args:
        bins: quantile bins of each source's per-answer mean score (default 8; sources with few distinct values keep
            one bin per value, and near-equal values of such a source share a bin: see
            :func:`lightning_ws.weaver.ordinal.bin_scores`).
        smoothing: add-``smoothing`` counts per bin and class (default 1.0).
        beta_max: largest agreement weight of ``"learned"`` / ``"exponent"`` (default 6; Newton steps on the concave
            M-step objective).
        max_iter, tol: EM stopping rule (defaults 100, 1e-6 gain of the mean log-likelihood per problem). The fit
            stops at the first step that gains less, including a loss: the ``"candidates"`` evidence weights an
            answer's candidates (``dependence``) while the M-step counts each once, so the tracked log-likelihood is a
            pseudo-likelihood that an EM step need not increase. On a single judge's repeated draws
            (``judge_draws_prob`` of the suite) the default fit often stops after 2 steps, and running on
            (``tol=-inf``) lost 12.5 points of Select@1 on average over 6 development seeds
            (``benchmarks/diag_weaver_em_steps.py``); elsewhere it changed the result by at most 1.8 points.
        use_agreement: let the answer share enter the model (default True); False = verifiers only.
        agreement: how the prior over a problem's answers uses their candidate counts.
            ``"partition"`` (default): a generative model of how the ``N`` candidates split into answers - the
            problem's correct rate is ``Beta(a, b)`` (so the correct answer's count is beta-binomial) and the wrong
            candidates form a Pitman-Yor partition (concentration ``theta``, discount ``sigma``; ``sigma < 0`` is a
            finite symmetric Dirichlet-multinomial over ``theta / -sigma`` distractors, ``sigma = 0`` a Chinese
            restaurant process). ``P(z_p = a | counts)`` follows from Bayes' rule and depends on ``a``'s count
            alone. EM fits ``(a, b, theta, sigma)`` to the *count data* of the problems it believes solvable, so
            the weight of agreement is anchored by how the answers are distributed, not only by the verifiers
            (with a judge whose error is shared by an answer's candidates, the conditional priors below let EM
            trade agreement for an over-trusted judge). ``"learned"``: ``softmax_a(theta_1 log share_a + theta_2
            log(1 - share_a))`` with both weights fitted by EM to the answer posteriors (each in ``[-beta_max,
            beta_max]``; U shapes allowed). ``"exponent"``: the monotone ``share ** beta`` (the issue-17 first
            version).
        evidence: how the sources' scores of an answer's candidates become evidence: ``"candidates"`` (default:
            per-candidate binned log-likelihood ratios, averaged and scaled by the answer's effective number of
            candidates, see ``dependence``), ``"answer_mean"`` (one binned observation per answer) or
            ``"random_effects"`` (Gaussian with a shared per-answer component).
        size_exponent: ``"candidates"`` evidence with ``dependence="exponent"``: an answer's mean log-likelihood ratio
            is multiplied by ``size ** size_exponent`` (default 0.5; 1 = candidates independent, 0 = fully dependent).
        dependence: ``"icc"`` (default since session 19): per source, the mean log-likelihood ratio times the
            answer's *effective* number of candidates ``n / (1 + (n - 1) rho)``, with ``rho`` the within-answer
            correlation of the source's scores given the class, re-estimated from the EM posterior at every step
            (label-free; reported as ``within_answer_correlation``). A judge fooled the same way by every candidate
            of an answer (``rho`` near 1) then counts about once per answer; independent reward models (``rho``
            near 0) count once per candidate. ``"exponent"``: the fixed ``size ** size_exponent`` (the default
            before session 19; with the partition prior it over-estimated a judge whose error the candidates
            share, BENCHMARKS.md, issue-17 section "Session 19"). Models saved without this key load as
            ``"exponent"``.
        orient: break the label-swap symmetry with the scores' orientation (default True): among the EM solutions
            keep the best likelihood whose sources are not, on average, clearly worse than chance (mean implied
            AUROC >= 0.5 - ``orient_tol``) - the standard weak-supervision assumption that verifiers beat random
            (Weaver spec 12.2). False = the best likelihood whatever it implies.
        orient_tol: tolerance of that test (default 0.05: sources at chance, e.g. pure noise, give fits within a
            few hundredths of 0.5 either way; the inverted fits seen on hard judge sets sit near 0.3).
        cross_source: with ``dependence="icc"``, also model answer-level errors shared *across* sources (default
            True, session 23): the sources' per-answer residuals given the class (probit scale, posterior-weighted,
            as for ``rho``) give their between-answer covariance; when the mean correlation is positive, an answer's
            summed evidence is divided by the design effect ``1 + (K - 1) c`` of ``K`` equicorrelated sources, ``c``
            the mean correlation of their evidence for that answer (within-answer noise included, so a singleton's
            sources are less correlated than a large answer's). Verifiers all drawn to the same wrong answers then
            count about once per answer instead of once each; the counts can outweigh them. Without a shared error
            the mean correlation is at or below 0 and nothing changes. Models saved without this key load with
            ``False``.
        count_check: with the partition prior, label-free, keep the count model consistent with the answer counts
            (default 6.64 nats, session 24: half the 99 % quantile of chi-square with 4 degrees of freedom, a
            likelihood-ratio test of the count model's 4 parameters; ``None`` = off). The partition prior is first
            fitted to the answer counts alone (:func:`_fit_partition_counts_only`: EM over which answer of each problem
            is the correct one, no verifier evidence). After each EM run, if the count model EM ended with makes the
            correct answer far less popular than that fit does (its mean correct rate ``a / (a + b)`` under half the
            counts-only one) and explains the problems' answer partitions worse than it by more than ``count_check``
            nats of total log-likelihood (:func:`_count_log_likelihood`), the run is repeated with the count model held
            at the counts-only fit. The failure it catches: a verifier error shared by the candidates of an answer (one
            judge's draws, or reward models all fooled by the same wrong answer) looks like the label to EM, which then
            makes the highest-scored answer of each problem the correct one and fits a count model in which the correct
            answer is almost never a popular one (Beta ``a`` at its bound) - a model the counts themselves reject. Where
            the counts cannot tell (hard multiple choice with one dominant distractor) the two fits are within a nat or
            two and EM's stays. Not with ``gamma`` or ``known`` given (labels anchor the fit). Models saved without this
            key load with ``None``.
        rho_check: with ``dependence="icc"``, ``"candidates"`` evidence and the partition prior, label-free: the
            floor, as a fraction, of each source's within-answer correlation relative to the one estimated under the
            counts-only posterior (default 0.5, session 26; ``None`` = off). That posterior (the partition prior of
            :func:`_fit_partition_counts_only`, no score) gives ``rho_counts``, the correlation of the source's scores
            among an answer's candidates given the class, with the classes assigned by the counts alone. In every EM
            step where the EM posterior's estimate falls under ``rho_check * rho_counts``, ``rho_counts`` is used for
            that source. Why: EM's posterior sorts answers by the same scores whose residual variance estimates
            ``rho``; a fit that over-trusts a source puts the highest-scored answer of each problem in the correct
            class, which shrinks the residuals (the downward bias of variance estimates under classification), so
            ``rho`` comes out near 0, each candidate of an answer counts as independent evidence and the source is
            trusted more still. With 16 candidates per problem this fixed point was where the label model lost to
            majority vote (one judge's draws: EM's ``rho`` 0-0.07 where the one under the true classes is 0.14-0.17
            and ``rho_counts`` 0.15-0.19). ``rho_counts`` tends to err the other way (answers the counts misassign
            inflate the residuals; 0.31-0.41 against 0.14-0.30 for a strong judge), so it serves only as a floor
            against the collapse, not as the estimate. Reported as ``report_["rho_check"]``. Models saved without this key load with
            ``None`` (it acts at fit time only).
        monotone: binned evidence (``"candidates"``, ``"answer_mean"``): constrain each source's per-bin likelihood ratio ``f1(bin) / f0(bin)``
            to be non-decreasing in the score (``True``), or not (``False``, the behaviour before session 34), or
            ``"auto"`` (default since session 34): only where no two candidates of a problem share an answer - data
            without an agreement signal (pairwise preferences, code, free-form responses without answer extraction),
            where the scores alone must identify the latent class and the count model cannot anchor it. Whether it
            was on is ``report_["monotone"]``. The constraint is "a higher score is never evidence
            against", the orientation assumption applied bin by bin instead of to the mean implied AUROC. The
            M-step is then the likelihood-ratio-ordered maximum likelihood estimate: the posterior-weighted share of
            class 1 in each bin, made non-decreasing by weighted isotonic regression (bin mass as weight), gives both
            class distributions. Without it, an EM that has collapsed (a handful of weak sources, no answer
            agreement) can fit a flat, non-monotone ratio in which the top bin counts less than the one below it,
            and a one-source fit then ranks candidates against its own scores (BENCHMARKS.md, issue-17 section,
            "Session 34"). With agreement the count model anchors the latent, and the constraint was measured only
            where there is none. Not in the paper. Models saved without this key load as ``"auto"`` (it acts at fit
            time only).
    """

    def __init__(self, bins: int = 8, *, smoothing: float = 1.0, beta_max: float = 6.0, max_iter: int = 100,
                 tol: float = 1e-6, use_agreement: bool = True, agreement: str = "partition",
                 evidence: str = "candidates", size_exponent: float = 0.5, dependence: str = "icc", orient: bool = True,
                 orient_tol: float = 0.05, cross_source: bool = True, count_check: float | None = 6.64,
                 rho_check: float | None = 0.5, monotone: bool | str = "auto") -> None:
        if evidence not in EVIDENCE:
            raise ConfigError(f"evidence must be one of {EVIDENCE}, got {evidence!r}.")
        if agreement not in AGREEMENT:
            raise ConfigError(f"agreement must be one of {AGREEMENT}, got {agreement!r}.")
        if not 0.0 <= orient_tol < 0.5:
            raise ConfigError(f"orient_tol must lie in [0, 0.5), got {orient_tol}.")
        if dependence not in ("icc", "exponent"):
            raise ConfigError(f"dependence must be 'icc' or 'exponent', got {dependence!r}.")
        self.agreement, self.orient, self.orient_tol = agreement, bool(orient), float(orient_tol)
        self.dependence = dependence
        self.cross_source = bool(cross_source)
        if monotone not in (True, False, "auto"):
            raise ConfigError(f"monotone must be True, False or 'auto', got {monotone!r}.")
        self.monotone_setting: bool | str = monotone
        self.monotone = monotone is True  # resolved at fit time
        if count_check is not None and not float(count_check) >= 0.0:
            raise ConfigError(f"count_check must be None or >= 0 (nats), got {count_check}.")
        self.count_check = None if count_check is None else float(count_check)
        if rho_check is not None and not 0.0 <= float(rho_check) <= 1.0:
            raise ConfigError(f"rho_check must be None or lie in [0, 1], got {rho_check}.")
        self.rho_check = None if rho_check is None else float(rho_check)
        self.rho_: np.ndarray | None = None
        #: ``(between-answer covariance of the sources given the class (K, K), within-answer variances (K,))`` when
        #: the sources share answer-level errors (mean correlation > 0), else ``None``; see ``cross_source``
        self.xdep_: tuple[np.ndarray, np.ndarray] | None = None
        self._icc_obs: Any = None
        self._icc_cache: tuple[np.ndarray, ...] | None = None
        if not 0.0 <= size_exponent <= 1.0:
            raise ConfigError(f"size_exponent must lie in [0, 1], got {size_exponent}.")
        self.evidence, self.size_exponent = evidence, float(size_exponent)
        if int(bins) < 2 or smoothing <= 0 or beta_max < 0 or int(max_iter) < 1:
            raise ConfigError("need bins >= 2, smoothing > 0, beta_max >= 0 and max_iter >= 1.")
        self.bins, self.smoothing, self.beta_max = int(bins), float(smoothing), float(beta_max)
        self.max_iter, self.tol, self.use_agreement = int(max_iter), float(tol), bool(use_agreement)
        self.edges_: list[np.ndarray] | None = None
        self.llr_: list[np.ndarray] | None = None
        self.log_f_: list[tuple[np.ndarray, np.ndarray]] | None = None
        self.re_: list[tuple[float, float, float, float]] | None = None
        self.share_h_: np.ndarray | None = None  # per share bin log-weight of the answer prior
        self.solutions_: list[dict[str, Any]] = []
        self.num_problems_ = 0
        self.beta_: float | None = None
        self.gamma_: float | None = None
        self.report_: dict[str, Any] = {}

    def _bins(self, x: np.ndarray) -> np.ndarray:
        """``(n, K)`` bin of each score under the fitted edges, ``-1`` where it is missing."""
        out = np.empty(x.shape, dtype=np.int64)
        for k, e in enumerate(self.edges_):
            col = np.ascontiguousarray(x[:, k])
            out[:, k] = np.where(np.isnan(col), -1, np.searchsorted(e, col, side="right"))  # NaN sorts last
        return out

    def _obs(self, groups: AnswerGroups, s: np.ndarray) -> Any:
        """What the evidence is computed from: bins of one row per answer (``answer_mean``) or per candidate, or
        for ``random_effects`` the per-answer means, counts and within-answer variance of probit scores."""
        if self.evidence == "random_effects":
            return _re_stats(groups, s)
        rows = groups.group_mean(s) if self.evidence == "answer_mean" else s.reshape(-1, s.shape[2])
        return self._bins(rows)

    def _evidence(self, groups: AnswerGroups, b: Any) -> np.ndarray:
        if self.evidence == "random_effects":
            m, n, _ = b
            ev = np.zeros(groups.num_groups)
            for k, (mu0, mu1, sa2, sw2) in enumerate(self.re_):
                ok = n[:, k] > 0
                v = sa2 + sw2 / np.maximum(n[ok, k], 1.0)
                ev[ok] += ((m[ok, k] - mu0) ** 2 - (m[ok, k] - mu1) ** 2) / (2.0 * v)
            return ev
        if self.evidence == "candidates" and self.dependence == "icc":
            # per source: mean LLR of the answer's candidates x their effective number
            gather, starts, n = self._icc_layout(groups, b)
            if not starts.size:
                return np.zeros(groups.num_groups)
            # a missing score (bin -1) reads its source's appended 0.0; its candidate is not counted in n
            vals = np.take(np.concatenate([np.append(llr, 0.0) for llr in self.llr_]), gather)  # (K, n)
            # (G, K) summed LLR of each answer's candidates (summed along contiguous rows: faster, the same sums)
            tot = np.ascontiguousarray(np.add.reduceat(vals, starts, axis=1).T)
            ev = (tot / (1.0 + np.maximum(n - 1.0, 0.0) * self.rho_)).sum(axis=1)  # mean LLR x n / (1+(n-1)rho)
            if self.xdep_ is not None:
                ev = ev / _design_effect(self.xdep_, n)
            return ev
        ev = np.zeros(b.shape[0])
        for k, llr in enumerate(self.llr_):  # a missing score (bin -1) reads the appended 0.0: no evidence
            ev += np.append(llr, 0.0)[b[:, k]]
        if self.evidence == "answer_mean":
            return ev
        tot = np.bincount(groups.group.ravel(), weights=ev, minlength=groups.num_groups)
        return tot / groups.size ** (1.0 - self.size_exponent)  # size^e * mean LLR

    def _icc_layout(self, groups: AnswerGroups, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The candidates sorted by answer: ``(K, n)`` indices of their bins into the concatenated ``[llr_k, 0.0]``
        tables of the sources (bin -1, missing, reads source ``k``'s trailing 0.0), each answer's first row and the
        ``(G, K)`` count of scored candidates; memoised for the ``b`` (and bin counts) of the current EM, the same in
        every step."""
        sizes = np.array([llr.size + 1 for llr in self.llr_], dtype=np.int64)
        c = self._icc_cache
        if c is not None and c[0] is b and np.array_equal(c[1], sizes):
            return c[2], c[3], c[4]
        g = groups.group.ravel()
        order = np.argsort(g, kind="stable")
        gs = g[order]
        starts = np.flatnonzero(np.r_[True, gs[1:] != gs[:-1]]) if g.size else np.zeros(0, dtype=np.int64)
        bo = b[order]
        n = np.add.reduceat((bo >= 0).astype(np.float64), starts, axis=0) if g.size else np.zeros((0, b.shape[1]))
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        gather = np.ascontiguousarray((np.where(bo < 0, sizes - 1, bo) + offsets).T)
        self._icc_cache = (b, sizes, gather, starts, n)
        return gather, starts, n

    def _newton_beta(self, groups: AnswerGroups, r: np.ndarray, ls: np.ndarray, beta: float) -> float:
        """Maximise the concave ``sum r * log softmax_p(beta * ls)`` over ``beta`` in ``[0, beta_max]`` (Newton)."""
        rs = np.add.reduceat(r, groups.starts)
        for _ in range(20):
            p = groups.softmax(beta * ls)
            m1 = np.add.reduceat(p * ls, groups.starts)
            m2 = np.add.reduceat(p * ls * ls, groups.starts)
            grad = float((r * ls).sum() - (rs * m1).sum())
            hess = float((rs * (m2 - m1 * m1)).sum())
            if hess <= 1e-12:
                break
            new = float(np.clip(beta + grad / hess, 0.0, self.beta_max))
            if abs(new - beta) < 1e-4:
                beta = new
                break
            beta = new
        return beta

    def _newton_theta(self, groups: AnswerGroups, r: np.ndarray, theta: np.ndarray | None) -> np.ndarray:
        """Maximise the concave ``sum r * log softmax_p(theta_1 log s + theta_2 log(1 - s))`` over the agreement
        weights subject to ``theta_1 >= theta_2`` (of two answers that split the candidates ``s`` vs ``1 - s``, the
        more frequent is never the less likely correct: agreement is at least as good as chance, the counterpart of
        the verifiers' orientation) and ``|theta| <= beta_max``. Newton in ``(a, d) = (theta_2, theta_1 - theta_2)``
        on the features ``(log s(1 - s), log s)``; when the free optimum has ``d < 0`` the constrained one lies on
        ``d = 0`` (concavity), where ``a`` alone is optimised."""
        F = _share_features(groups)
        G = np.stack([F[:, 0] + F[:, 1], F[:, 0]], axis=1)
        x = np.zeros(2) if theta is None else np.array([theta[1], max(theta[0] - theta[1], 0.0)])
        x = self._newton_softmax(groups, r, G, x, free=[0, 1])
        if x[1] < 0.0:
            x[1] = 0.0
            x = self._newton_softmax(groups, r, G, x, free=[0])
        return np.clip(np.array([x[0] + x[1], x[0]]), -self.beta_max, self.beta_max)

    def _newton_softmax(self, groups: AnswerGroups, r: np.ndarray, G: np.ndarray, x: np.ndarray,
                        free: list[int]) -> np.ndarray:
        """Newton steps on ``sum r * log softmax_p(G x)`` over the coordinates ``free`` of ``x`` (1e-6 ridge)."""
        x = x.copy()
        rs = np.add.reduceat(r, groups.starts)
        Gf = G[:, free]
        target = r @ Gf
        for _ in range(30):
            pi = groups.softmax(G @ x)
            m1 = np.add.reduceat(pi[:, None] * Gf, groups.starts)
            m2 = np.add.reduceat(pi[:, None, None] * Gf[:, :, None] * Gf[:, None, :], groups.starts)
            grad = target - rs @ m1 - 1e-6 * x[free]
            hess = np.einsum("p,pij->ij", rs, m2) - (m1 * rs[:, None]).T @ m1 + 1e-6 * np.eye(len(free))
            step = np.linalg.solve(hess, grad)
            step *= min(1.0, 2.0 * self.beta_max / max(float(np.abs(step).max()), 1e-12))  # damp huge steps
            x[free] += step
            if np.abs(step).max() < 1e-5:
                break
        return x

    def source_auroc(self) -> np.ndarray:
        """Per source, the single-candidate AUROC implied by the fitted class-conditional model (label-free)."""
        if (self.re_ if self.evidence == "random_effects" else self.log_f_) is None:
            raise ConfigError("AnswerLevelModel is not fitted; call fit(answer_ids, sources) first.")
        return self._implied_auroc(self.log_f_, self.re_)

    def _implied_auroc(self, log_f: Any, re: Any) -> np.ndarray:
        if self.evidence == "random_effects":
            from scipy.special import ndtr

            return np.array([float(ndtr((mu1 - mu0) / np.sqrt(2.0 * (sa2 + sw2)))) for mu0, mu1, sa2, sw2 in re])
        out = []
        for lf0, lf1 in log_f:
            f0, f1 = np.exp(lf0), np.exp(lf1)
            below = np.concatenate([[0.0], np.cumsum(f0)[:-1]])
            out.append(float(np.sum(f1 * (below + 0.5 * f0))))
        return np.asarray(out)

    @property
    def _learned(self) -> bool:
        return self.use_agreement and self.agreement == "learned"

    @property
    def _partition(self) -> bool:
        return self.use_agreement and self.agreement == "partition"

    def _log_prior(self, groups: AnswerGroups, beta: float) -> np.ndarray:
        """``(G,)`` log P(answer is the problem's correct answer | candidate counts, some answer is correct)."""
        if self._partition:
            h = _partition_log_weight(groups, self.share_h_)
        elif self._learned:
            h = _share_features(groups) @ self.share_h_
        else:
            h = np.log(groups.share) * (beta if self.use_agreement else 0.0)
        return groups.log_softmax(h)  # a padding slot is never the correct answer

    def _posterior(self, groups: AnswerGroups, b: np.ndarray, beta: float, gamma: float
                   ) -> tuple[np.ndarray, float]:
        prior = self._log_prior(groups, beta)
        v = np.log(gamma) + prior + self._evidence(groups, b)
        lz = np.logaddexp(groups.segment_logsumexp(v), np.log1p(-gamma))
        return np.exp(v - lz[groups.problem]), float(lz.mean())

    def fit(self, answer_ids: np.ndarray, sources: np.ndarray, init: np.ndarray | None = None,
            gamma0: float = 0.8, *, gamma: float | None = None, known: np.ndarray | None = None) -> AnswerLevelModel:
        """Fit on ``(P, N)`` answer codes (``-1`` = none) and ``(P, N, K)`` source scores (higher = better).

        Args:
            init: optional ``(P, N)`` score whose per-answer mean, standardised, starts EM (default: the mean of the
                sources).
            gamma0: starting P(some answer is correct) (default 0.8).
            gamma: fix P(some answer is correct) instead of estimating it (e.g. from labels).
            known: optional ``(P, N)`` float correctness with NaN where unknown; problems whose candidates are all
                known keep their true answer posterior in every EM step (semi-supervised EM on labelled dev problems).
        """
        s = np.asarray(sources, dtype=np.float64)
        groups = AnswerGroups(answer_ids, _present(answer_ids, s))
        if s.ndim != 3 or s.shape[:2] != groups.group.shape:
            raise DataError(f"sources must have shape {groups.group.shape + ('K',)}; got {s.shape}.")
        # "auto": the likelihood-ratio order where no two candidates of a problem share an answer (no agreement signal)
        self.monotone = (no_shared_answer(answer_ids) if self.monotone_setting == "auto"
                         else bool(self.monotone_setting))
        if self.evidence == "random_effects":
            b, sizes = _re_stats(groups, s), []
        else:
            rows = groups.group_mean(s) if self.evidence == "answer_mean" else s.reshape(-1, s.shape[2])
            b, self.edges_ = bin_scores(rows, self.bins)
            sizes = [e.size + 1 for e in self.edges_]
            icc = self.evidence == "candidates" and self.dependence == "icc"
            self._icc_obs = _re_stats(groups, s) if icc else None
        start = nan_mean(s, axis=2) if init is None else np.asarray(init, dtype=np.float64)
        g0 = groups.group_mean(start[:, :, None])[:, 0]
        real = g0 if groups.log_mask is None else g0[~groups.absent]  # padding slots carry no score
        g0 = np.nan_to_num((g0 - np.nanmean(real)) / (np.nanstd(real) + 1e-12))
        ls = np.log(groups.share)
        clamp = clamp_val = None
        if known is not None:
            kn = np.asarray(known, dtype=np.float64)
            if kn.shape != groups.group.shape:
                raise DataError(f"known must have shape {groups.group.shape}; got {kn.shape}.")
            full = ~np.isnan(kn).any(axis=1)
            gk = groups.group_mean(kn[:, :, None])[:, 0]
            clamp = full[groups.problem] & ~np.isnan(gk)
            clamp_val = np.nan_to_num(gk)
        if gamma is not None and not 0.0 < float(gamma) < 1.0:
            raise ConfigError(f"gamma must lie in (0, 1), got {gamma}.")
        # EM from several starts (scores and agreement, agreement only, scores only); keep the best likelihood
        starts = [(2.0, 1.0), (0.0, 2.0), (2.0, 0.0)] if self.use_agreement else [(2.0, 0.0)]
        best, sols = None, []
        label_free = self._partition and gamma is None and clamp is None
        check = label_free and self.count_check is not None
        rho_floor = label_free and self.rho_check is not None and self._icc_obs is not None
        counts_fit: tuple[np.ndarray, float] | None = None  # the counts-only partition prior and its log-likelihood
        rho_counts: np.ndarray | None = None  # rho under the counts-only posterior (rho_check)
        if check or rho_floor:  # both checks compare against the one counts-only fit
            co = _fit_partition_counts_only(groups)
            counts_fit = (co, _count_log_likelihood(groups, co))
            if rho_floor:
                rho_counts = _within_answer_icc(self._icc_obs, groups.softmax(_partition_log_weight(groups, co)))
        for w_score, w_share in starts:
            r = gamma0 * groups.softmax(w_score * g0 + w_share * ls)
            if clamp is not None:
                r = np.where(clamp, clamp_val, r)
            self.share_h_ = None  # every start learns its own agreement weights
            self.xdep_ = None
            out = {**self._em(groups, b, sizes, r, ls, gamma, clamp, clamp_val, rho_counts=rho_counts),
                   "start": [w_score, w_share]}
            if check:
                ll_em = _count_log_likelihood(groups, out["share_h"])
                gap = max(counts_fit[1], ll_em) - ll_em
                # the direction a shared verifier error drags it: the correct answer far less popular than the
                # counts alone say (mean correct rate of the Beta under half the counts-only fit's)
                rate_em, rate_co = (float(x[0] / (x[0] + x[1])) for x in (out["share_h"], counts_fit[0]))
                hold = rate_em < 0.5 * rate_co and gap > self.count_check
                out["count_check"] = {"gap_nats": float(gap), "correct_rate_em": rate_em,
                                      "correct_rate_counts_only": rate_co, "held_at_counts_only_fit": bool(hold)}
                if hold:  # EM's count model is one the counts reject: rerun with it held
                    self.share_h_, self.xdep_ = None, None
                    out = {**self._em(groups, b, sizes, r, ls, gamma, clamp, clamp_val, counts=counts_fit[0],
                                      rho_counts=rho_counts),
                           "start": [w_score, w_share], "count_check": out["count_check"]}
            out["auroc"] = self._implied_auroc(out["log_f"], out["re"])
            sols.append(out)
        # Label-swap symmetry: the scores are "higher = better", so a fit in which the sources are on average worse
        # than chance (mean implied AUROC < 0.5 - orient_tol) has the latent inverted - typically "the majority answer is right
        # and the verifiers prefer wrong answers" on hard sets. Such fits are dropped unless every start ends there.
        oriented = [o for o in sols if float(np.mean(o["auroc"])) >= 0.5 - self.orient_tol] if self.orient else sols
        for o in oriented or sols:
            if best is None or o["ll"] > best["ll"] + 1e-9:
                best = o
        #: every admissible EM solution (one per start) with its mean log-likelihood per problem, for plausibility
        #: checks; ``inverted`` solutions (sources worse than chance) are listed in the report, not here
        self.solutions_ = [{"log_f": o["log_f"], "re": o["re"], "beta": o["beta"], "gamma": o["gamma"],
                            "share_h": o["share_h"], "rho": o["rho"], "xdep": o["xdep"], "ll": o["ll"],
                            "start": o["start"]}
                           for o in (oriented or sols)]
        self.num_problems_ = groups.num_problems
        self.llr_, self.log_f_, self.re_ = best["llr"], best["log_f"], best["re"]
        self.beta_, self.gamma_, self.share_h_, self.rho_ = best["beta"], best["gamma"], best["share_h"], best["rho"]
        self.xdep_ = best["xdep"]
        self._icc_obs = self._icc_cache = None
        r = best["r"]
        self.report_ = {"iterations": best["it"], "agreement": self.agreement if self.use_agreement else "none",
                        "beta": self.beta_ if not (self._learned or self._partition) else None,
                        "gamma": self.gamma_, "agreement_weights": self._agreement_report(),
                        "within_answer_correlation": None if self.rho_ is None else self.rho_.tolist(),
                        "cross_source_correlation": None if self.xdep_ is None else _xdep_corr(self.xdep_).tolist(),
                        "log_likelihood_per_problem": best["ll"], "em_start": best["start"],
                        "count_check": best.get("count_check"), "monotone": self.monotone,
                        "rho_check": None if rho_counts is None else {
                            "rho_counts_only": rho_counts.tolist(), "floor_fraction": self.rho_check,
                            "held_at_counts_only": best["rho_held"].tolist()},
                        "inverted_solutions_dropped": [{"start": o["start"], "ll": o["ll"],
                                                        "mean_auroc": float(np.mean(o["auroc"]))}
                                                       for o in sols if oriented and all(o is not k for k in oriented)],
                        "class_balance": float((r * groups.size).sum() / groups.n_present.sum())}
        return self

    def _agreement_report(self) -> dict[str, Any] | None:
        if self._partition:
            a, b, theta, sigma = (float(v) for v in self.share_h_)
            return {"correct_rate_beta": [a, b], "correct_rate_mean": a / (a + b),
                    "wrong_answers_pitman_yor": {"concentration": theta, "discount": sigma}}
        if self._learned:
            return {"log_share": float(self.share_h_[0]), "log_one_minus_share": float(self.share_h_[1])}
        return None

    def _em(self, groups: AnswerGroups, b: np.ndarray, sizes: list[int], r: np.ndarray, ls: np.ndarray,
            gamma: float | None, clamp: np.ndarray | None, clamp_val: np.ndarray | None,
            counts: np.ndarray | None = None, rho_counts: np.ndarray | None = None) -> dict[str, Any]:
        cand = self.evidence == "candidates"
        prev, it, beta, gam = -np.inf, 0, 1.0, 0.5
        rho_held = np.zeros(0, dtype=bool)
        # each source's bins shifted by one (bin -1, missing, counted in slot 0 and dropped), one contiguous row per
        # source: the same for every EM step
        b1 = None if self.evidence == "random_effects" else np.ascontiguousarray((b + 1).T)
        res_layout = _residual_layout(self._icc_obs) if cand and self.dependence == "icc" else None
        for it in range(1, self.max_iter + 1):
            gam = float(np.clip(np.add.reduceat(r, groups.starts).mean() if gamma is None else gamma, 1e-3, 1 - 1e-3))
            w = r[groups.group].ravel() if cand else r
            w0 = 1 - w
            self.llr_, logf = [], []
            if self.evidence == "random_effects":
                self.re_ = _re_m_step(b, r, self.re_ if it > 1 else None)
                self.llr_ = [np.zeros(1)] * b[0].shape[1]  # marks "fitted"; unused by this evidence model
            for k in range(0 if b1 is None else b1.shape[0]):
                c1 = np.bincount(b1[k], weights=w, minlength=sizes[k] + 1)[1:] + self.smoothing
                c0 = np.bincount(b1[k], weights=w0, minlength=sizes[k] + 1)[1:] + self.smoothing
                if self.monotone:  # the likelihood-ratio-ordered MLE: P(class 1 | bin) made non-decreasing
                    n = c1 + c0
                    q = _pava(c1 / n, n)
                    c1, c0 = n * q, n * (1.0 - q)
                self.llr_.append(np.log(c1 / c1.sum()) - np.log(c0 / c0.sum()))
                logf.append((np.log(c0 / c0.sum()), np.log(c1 / c1.sum())))
            if cand and self.dependence == "icc":
                resid = _class_residuals(self._icc_obs, r, res_layout)  # one pass serves both dependence estimates
                self.rho_ = _within_answer_icc(self._icc_obs, r, resid)
                if rho_counts is not None:  # rho_check: EM's rho collapsed under the counts-only one's floor
                    rho_held = self.rho_ < self.rho_check * rho_counts
                    self.rho_ = np.where(rho_held, rho_counts, self.rho_)
                if self.cross_source:
                    self.xdep_ = _cross_source_cov(self._icc_obs, r, resid)
            if self._partition:
                # counts: the partition prior held fixed (count_check), else fitted in every M-step
                self.share_h_ = _fit_partition(groups, r, self.share_h_) if counts is None else counts.copy()
            elif self._learned:
                self.share_h_ = self._newton_theta(groups, r, self.share_h_)
            elif self.use_agreement:
                beta = self._newton_beta(groups, r, ls, beta)
            r, ll = self._posterior(groups, b, beta, gam)
            if clamp is not None:
                r = np.where(clamp, clamp_val, r)
            if ll - prev < self.tol:
                prev = max(prev, ll)
                break
            prev = ll
        return {"llr": self.llr_, "log_f": logf, "re": self.re_, "beta": beta, "gamma": gam, "r": r, "ll": prev,
                "it": it, "share_h": self.share_h_, "rho": self.rho_, "xdep": self.xdep_, "rho_held": rho_held}

    def _new_data(self, answer_ids: np.ndarray, sources: np.ndarray) -> tuple[AnswerGroups, Any]:
        """The answer groups of new data and what its evidence is computed from, under the fitted bin edges (the
        same for every EM solution: :meth:`plausible_probas` computes them once)."""
        if self.llr_ is None:
            raise ConfigError("AnswerLevelModel is not fitted; call fit(answer_ids, sources) first.")
        s = np.asarray(sources, dtype=np.float64)
        groups = AnswerGroups(answer_ids, _present(answer_ids, s))
        if s.ndim != 3 or s.shape[:2] != groups.group.shape or s.shape[2] != len(self.llr_):
            raise DataError(f"sources must have shape {groups.group.shape + (len(self.llr_),)}; got {s.shape}.")
        if self.evidence == "random_effects":  # the within-answer variance stays the fitted one
            m, n, _ = _re_stats(groups, s)
            return groups, (m, n, None)
        return groups, self._obs(groups, s)

    def _new_posterior(self, groups: AnswerGroups, obs: Any, *, release: bool = True) -> np.ndarray:
        r, _ = self._posterior(groups, obs, self.beta_, self.gamma_)
        if release:
            self._icc_cache = None  # memoised for EM only: hold no reference to the caller's data
        return r

    def answer_posterior(self, answer_ids: np.ndarray, sources: np.ndarray) -> tuple[AnswerGroups, np.ndarray]:
        """``(groups, (G,) P(answer correct))`` on new data with the fitted parameters."""
        groups, obs = self._new_data(answer_ids, sources)
        return groups, self._new_posterior(groups, obs)

    def plausible_probas(self, answer_ids: np.ndarray, sources: np.ndarray, *, max_loglik_gap: float = 2.0
                         ) -> list[np.ndarray]:
        """``(P, N)`` P(correct) under every EM solution whose total log-likelihood on the fitting data is within
        ``max_loglik_gap`` nats of the best one (the fits the data cannot tell apart), best first."""
        if self.llr_ is None:
            raise ConfigError("AnswerLevelModel is not fitted; call fit(answer_ids, sources) first.")
        best_ll = max(sol["ll"] for sol in self.solutions_)
        keep = sorted((sol for sol in self.solutions_
                       if (best_ll - sol["ll"]) * self.num_problems_ <= max_loglik_gap), key=lambda x: -x["ll"])
        groups, obs = self._new_data(answer_ids, sources)
        saved = (self.llr_, self.log_f_, self.re_, self.beta_, self.gamma_, self.share_h_, self.rho_, self.xdep_)
        out = []
        try:
            for sol in keep:
                self.log_f_, self.re_ = sol["log_f"], sol["re"]
                if self.evidence != "random_effects":
                    self.llr_ = [b - a for a, b in sol["log_f"]]
                self.beta_, self.gamma_, self.share_h_, self.rho_ = sol["beta"], sol["gamma"], sol["share_h"], sol["rho"]
                self.xdep_ = sol["xdep"]
                out.append(self._new_posterior(groups, obs, release=False)[groups.group])  # one layout for all
        finally:
            self._icc_cache = None
            self.llr_, self.log_f_, self.re_, self.beta_, self.gamma_, self.share_h_, self.rho_, self.xdep_ = saved
        return out

    def predict_proba(self, answer_ids: np.ndarray, sources: np.ndarray) -> np.ndarray:
        """``(P, N)`` P(candidate correct) = posterior that its answer is the problem's correct answer."""
        groups, r = self.answer_posterior(answer_ids, sources)
        return r[groups.group]

    def state_dict(self) -> dict[str, Any]:
        """JSON-able fitted state."""
        if self.llr_ is None:
            raise ConfigError("AnswerLevelModel is not fitted; nothing to save.")
        return {"config": {"bins": self.bins, "smoothing": self.smoothing, "beta_max": self.beta_max,
                           "max_iter": self.max_iter, "tol": self.tol, "use_agreement": self.use_agreement,
                           "agreement": self.agreement, "orient": self.orient, "dependence": self.dependence,
                           "orient_tol": self.orient_tol, "cross_source": self.cross_source,
                           "count_check": self.count_check, "rho_check": self.rho_check,
                           "evidence": self.evidence, "size_exponent": self.size_exponent,
                           "monotone": self.monotone_setting},
                "share_h": None if self.share_h_ is None else self.share_h_.tolist(),
                "rho": None if self.rho_ is None else self.rho_.tolist(),
                "xdep": None if self.xdep_ is None else [self.xdep_[0].tolist(), self.xdep_[1].tolist()],
                "edges": None if self.edges_ is None else [e.tolist() for e in self.edges_],
                "log_f": [[a.tolist(), b.tolist()] for a, b in self.log_f_],
                "re": None if self.re_ is None else [list(map(float, x)) for x in self.re_],
                "beta": self.beta_, "gamma": self.gamma_, "report": self.report_}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> AnswerLevelModel:
        """Rebuild a fitted model from :meth:`state_dict` output."""
        # saved before a key existed: its old behaviour
        m = cls(**{"dependence": "exponent", "cross_source": False, "count_check": None, "rho_check": None,
                   **state["config"]})
        m.edges_ = None if state["edges"] is None else [np.asarray(e, dtype=np.float64) for e in state["edges"]]
        m.log_f_ = [(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)) for a, b in state["log_f"]]
        m.re_ = None if state["re"] is None else [tuple(x) for x in state["re"]]
        m.llr_ = [b - a for a, b in m.log_f_] if m.re_ is None else [np.zeros(1)] * len(m.re_)
        m.beta_, m.gamma_, m.report_ = float(state["beta"]), float(state["gamma"]), dict(state["report"])
        if state.get("rho") is not None:
            m.rho_ = np.asarray(state["rho"], dtype=np.float64)
        if state.get("xdep") is not None:
            m.xdep_ = (np.asarray(state["xdep"][0], dtype=np.float64), np.asarray(state["xdep"][1], dtype=np.float64))
        if state.get("share_h") is not None:
            m.share_h_ = np.asarray(state["share_h"], dtype=np.float64)
        return m


def _present(answer_ids: np.ndarray, sources: np.ndarray) -> np.ndarray | None:
    """:func:`~lightning_ws.weaver.data.present_candidates`, or ``None`` for a malformed ``sources`` (the caller's
    shape check reports it)."""
    ids, s = np.asarray(answer_ids), np.asarray(sources)
    if s.ndim != 3 or ids.shape != s.shape[:2]:
        return None
    return present_candidates(ids, s)


def _share_features(groups: AnswerGroups) -> np.ndarray:
    """``(G, 2)`` agreement features of every answer: ``log share`` and ``log(1 - share)`` (share capped at
    ``1 - 1/(2N)``; a problem with one answer gives it prior 1 whatever the weights)."""
    s = np.minimum(groups.share, 1.0 - 0.5 / groups.n_candidates)
    return np.stack([np.log(s), np.log1p(-s)], axis=1)


def _partition_log_weight(groups: AnswerGroups, params: np.ndarray) -> np.ndarray:
    """``(G,)`` unnormalised log P(answer is correct | the problem's candidate counts) under the partition prior.

    With ``n`` of the problem's ``N`` candidates on answer ``a``: ``P(counts | z = a)`` is the probability that exactly
    these ``n`` candidates are correct (``B(n + a, N - n + b) / B(a, b)``) times the Pitman-Yor probability of the
    partition of the other ``N - n`` candidates; every factor that is the same for all answers of the problem
    cancels, leaving ``betaln(n + a, N - n + b) - gammaln(theta + N - n) - gammaln(n - sigma)``."""
    from scipy.special import betaln, gammaln

    a, b, theta, sigma = (float(v) for v in params)
    if groups.log_mask is not None:  # padded problems: each with its own number of candidates
        n = groups.size
        rest = groups.n_candidates - n  # >= 0: a padding slot sits in a problem with at least one candidate
        return groups.masked(betaln(n + a, rest + b) - gammaln(theta + rest) - gammaln(n - sigma))
    N = groups.num_candidates
    n = np.arange(1, N + 1, dtype=np.float64)  # one value per possible answer size, then looked up
    table = betaln(n + a, N - n + b) - gammaln(theta + N - n) - gammaln(n - sigma)
    return table[groups.size.astype(np.int64) - 1]


def _partition_objectives(groups: AnswerGroups, r: np.ndarray) -> tuple[Any, Any, Any, int] | None:
    """The two objectives of :func:`_fit_partition`, or ``None`` when no problem is believed solvable: ``bb(z)`` for
    the Beta's ``z = log(a, b)`` and ``py(z)`` for the Pitman-Yor ``z`` (mapped to ``(theta, sigma)`` by
    ``theta_sigma``), each returning the negative expected log-likelihood and its gradient in ``z`` (digamma terms).
    Returns ``(bb, py, theta_sigma, span)``."""
    from scipy.special import betaln, digamma, gammaln

    N = int(groups.n_present.max())  # = num_candidates unless every problem was padded
    P = groups.num_problems
    present = ~groups.absent  # padding slots are not answers
    n, rp, gp = groups.size.astype(np.int64)[present], r[present], groups.problem[present]
    K = np.bincount(gp, minlength=P)
    w = np.add.reduceat(r, groups.starts)  # (P,) posterior mass that the problem has a correct answer
    W = float(w.sum())
    if W <= 1e-9:
        return None
    hr = np.bincount(n, weights=rp, minlength=N + 1).astype(np.float64)  # correct mass by answer size
    hw = np.bincount(n, weights=w[gp], minlength=N + 1).astype(np.float64)  # all answers, same weight
    sizes = np.arange(N + 1, dtype=np.float64)
    # the Beta-binomial and the wrong answers' count depend on each problem's number of candidates: the correct mass
    # by (answer size n, number of candidates M) and the solvable mass by M - one M, N, unless problems were padded
    # to different numbers
    if (groups.n_present == N).all():
        t_n, t_m, t_r = sizes[1:], N, hr[1:]
        m_val, m_w = np.array([N]), np.array([W])
    else:
        nc = groups.n_candidates[present].astype(np.int64)
        pair, inv = np.unique(nc * (N + 1) + n, return_inverse=True)
        t_n, t_m = (pair % (N + 1)).astype(np.float64), (pair // (N + 1)).astype(np.float64)
        t_r = np.bincount(inv.ravel(), weights=rp).astype(np.float64)
        keep = t_n > 0
        t_n, t_m, t_r = t_n[keep], t_m[keep], t_r[keep]
        m_val, m_inv = np.unique(groups.n_present, return_inverse=True)
        m_w = np.bincount(m_inv.ravel(), weights=w).astype(np.float64)
    kmax = int(K.max())
    # c_i = solvable mass of problems whose wrong answers number more than i (i = 0 .. kmax - 2)
    kw = np.bincount(np.maximum(K - 1, 0), weights=w, minlength=kmax + 1)
    c = np.cumsum(kw[::-1])[::-1][1:kmax]  # c[i] = mass of problems with K - 2 >= i
    idx = np.arange(c.size, dtype=np.float64)
    span = max(kmax - 1, 0)  # sigma < 0: at least as many distractors (theta / -sigma) as any problem has wrong answers
    wrong = hw - hr

    def bb(z: np.ndarray) -> tuple[float, np.ndarray]:  # value and exact gradient in z = log(a, b)
        a, b = np.exp(z)
        z0 = betaln(a, b)
        raw = np.exp(betaln(a, m_val + b) - z0)
        p0 = np.minimum(raw, 1.0 - 1e-12)  # P(no correct candidate) per M
        val = -float(t_r @ betaln(t_n + a, t_m - t_n + b) - m_w @ (z0 + np.log1p(-p0)))
        dab, dam = digamma(a + b), digamma(a + m_val + b)
        dt = digamma(t_m + a + b)
        g_a = t_r @ (digamma(t_n + a) - dt) - m_w.sum() * (digamma(a) - dab)
        g_b = t_r @ (digamma(t_m - t_n + b) - dt) - m_w.sum() * (digamma(b) - dab)
        # d log(1 - p0) = -p0 / (1 - p0) d log p0 (zero where p0 is clipped)
        q = np.where(raw < 1.0 - 1e-12, p0 / (1.0 - p0), 0.0) * m_w
        g_a += q @ (dab - dam)
        g_b += q @ (digamma(m_val + b) - dam - digamma(b) + dab)
        return val, -np.array([g_a * a, g_b * b])

    def theta_sigma(z: np.ndarray) -> tuple[float, float]:  # the unconstrained z -> (theta, sigma)
        sigma = _SIGMA_MAX - float(np.exp(z[1]))
        return float(np.exp(z[0])) + max(-sigma, 0.0) * span, sigma

    def py(z: np.ndarray) -> tuple[float, np.ndarray]:  # value and exact gradient in z
        theta, sigma = theta_sigma(z)
        inv = 1.0 / (theta + idx * sigma)
        val = (c @ np.log(theta + idx * sigma) + W * gammaln(theta) - t_r @ gammaln(theta + t_m - t_n)
               + wrong[1:] @ (gammaln(sizes[1:] - sigma) - gammaln(1.0 - sigma)))
        g_theta = c @ inv + W * digamma(theta) - t_r @ digamma(theta + t_m - t_n)
        g_sigma = c @ (idx * inv) - wrong[1:] @ (digamma(sizes[1:] - sigma) - digamma(1.0 - sigma))
        e1 = float(np.exp(z[1]))  # sigma = _SIGMA_MAX - e1; theta carries -sigma * span while sigma < 0
        d_theta_z1 = e1 * span if sigma < 0 else 0.0
        return -float(val), -np.array([g_theta * float(np.exp(z[0])), g_theta * d_theta_z1 - g_sigma * e1])

    return bb, py, theta_sigma, span


def _fit_partition(groups: AnswerGroups, r: np.ndarray, params: np.ndarray | None) -> np.ndarray:
    """M-step of the partition prior: ``(a, b, theta, sigma)`` maximising the expected log-likelihood of the
    candidate counts of the problems believed solvable, ``sum_a r_a log P(counts | z = a)``.

    ``P(counts | z = a)``: the correct rate is ``Beta(a, b)`` given that at least one candidate is correct (the
    normaliser ``1 - B(a, N + b) / B(a, b)``), and the wrong candidates form a Pitman-Yor partition,
    ``prod_{i < K'} (theta + i sigma) / (theta)_M * prod_j (1 - sigma)_{n_j - 1}`` for ``K'`` wrong answers over ``M``
    candidates. The objective depends on the data only through histograms over answer sizes and answer counts, so
    each evaluation is ``O(N)`` and comes with its exact gradient (:func:`_partition_objectives`; finite differences,
    before session 46, cost three evaluations per step and lost digits where ``theta`` is large); the Beta and the
    Pitman-Yor parameters are separate L-BFGS-B problems (warm-started from the previous EM step). With
    ``sigma < 0`` (a finite Dirichlet-multinomial over ``theta / -sigma`` distractors) ``theta`` is kept at or above
    ``-sigma`` times the most wrong answers any problem has, so the partition probability is a proper one.

    The counts enter only *which* answer of a problem is correct, never *whether* one is: the "no correct answer"
    state keeps its plain ``1 - gamma`` (the counts are taken as equally likely under it). Modelling the counts
    under that state too let EM explain most multiple-choice problems as evenly spread wrong answers (``gamma``
    near 0.3 where the truth is 0.95; a degenerate fit seen on development data)."""
    from scipy.optimize import minimize

    objectives = _partition_objectives(groups, r)
    if objectives is None:
        return np.array([1.0, 1.0, 2.0, 0.0]) if params is None else np.asarray(params, dtype=np.float64)
    bb, py, theta_sigma, span = objectives
    if params is None:
        z_bb, z_py = np.zeros(2), np.array([np.log(2.0), 0.0])  # a = b = 1, sigma = -0.05
    else:
        a, b, theta, sigma = (float(v) for v in params)
        base = theta - max(-sigma, 0.0) * span
        z_bb = np.log([a, b])
        z_py = np.array([np.log(base) if base > 1e-3 else -6.0, np.log(max(_SIGMA_MAX - sigma, 1e-4))])
    z_bb = np.clip(z_bb, -6.0, 6.0)
    z_py = np.clip(z_py, [-6.0, -8.0], [8.0, 6.0])
    rb = minimize(bb, z_bb, jac=True, method="L-BFGS-B", bounds=[(-6.0, 6.0)] * 2, options={"maxiter": 30})
    rp = minimize(py, z_py, jac=True, method="L-BFGS-B", bounds=[(-6.0, 8.0), (-8.0, 6.0)], options={"maxiter": 30})
    a, b = np.exp(rb.x)
    return np.array([a, b, *theta_sigma(rp.x)])


def _count_log_likelihood(groups: AnswerGroups, params: np.ndarray) -> float:
    """Total log-likelihood of every problem's answer partition under the partition prior ``(a, b, theta, sigma)``,
    given that the problem has a correct answer: ``sum_p log sum_a P(counts | z = a)``, with ``P(counts | z = a)`` the
    probability that exactly ``a``'s candidates are correct (Beta-binomial, given at least one correct candidate)
    times the Pitman-Yor probability of the partition of the other candidates (the model of :func:`_fit_partition`,
    every factor kept). Padding slots are not candidates."""
    from scipy.special import betaln, gammaln

    a, b, theta, sigma = (float(v) for v in params)
    present = (~groups.absent).astype(np.float64)
    n, p, m = groups.size, groups.problem, groups.n_candidates  # m: the problem's number of candidates, per answer
    k = np.bincount(p, weights=present, minlength=groups.num_problems).astype(np.int64)  # answers per problem
    lg = (gammaln(n - sigma) - gammaln(1.0 - sigma)) * present
    others = np.bincount(p, weights=lg, minlength=groups.num_problems)[p] - lg  # the other answers' block terms
    # sum_{i < K - 1} log(theta + i sigma): terms past a problem's own K - 1 are never read (and may be <= 0)
    cum = np.concatenate([[0.0], np.cumsum(np.log(np.maximum(theta + np.arange(k.max()) * sigma, 1e-300)))])
    py = cum[k[p] - 1] + gammaln(theta) - gammaln(theta + m - n) + others
    p0 = np.minimum(np.exp(betaln(a, m + b) - betaln(a, b)), 1.0 - 1e-12)  # P(no correct candidate)
    t = betaln(n + a, m - n + b) - betaln(a, b) - np.log1p(-p0) + py
    return float(groups.segment_logsumexp(groups.masked(t)).sum())  # a padding slot is never the correct answer


#: Results of :func:`_fit_partition_counts_only` by a digest of the answer structure (no scores enter it): a Weaver
#: fit refits the answer-level model on the same answers several times (offsets, guard evaluators); bounded, FIFO.
_COUNTS_ONLY_CACHE: OrderedDict[tuple[bytes, int], np.ndarray] = OrderedDict()
_COUNTS_ONLY_CACHE_SIZE = 64
_COUNTS_ONLY_LOCK = threading.Lock()


def _answer_structure_digest(groups: AnswerGroups) -> bytes:
    """A digest of everything :func:`_fit_partition_counts_only` reads of ``groups``: which candidates share an answer
    in which problem, and the padding slots (no padding: an empty mask, never the shape of a real one)."""
    mask = np.zeros(0) if groups.log_mask is None else groups.log_mask
    return array_digest(groups.group, groups.problem, groups.size, groups.n_present, mask)


def _fit_partition_counts_only(groups: AnswerGroups, max_iter: int = 60) -> np.ndarray:
    """The partition prior ``(a, b, theta, sigma)`` fitted to the answer counts alone: EM over which answer of each
    problem is the correct one (every problem taken as having one), started from answer shares, with the M-step of
    :func:`_fit_partition`; stops when no parameter moves by more than 0.01 % (at most ``max_iter`` steps). No
    verifier score enters, so a verifier error cannot move it (``AnswerLevelModel(count_check=...)``). A
    deterministic function of the answer structure, so a repeated call on the same answers returns the stored result
    (a copy) instead of refitting."""
    key = (_answer_structure_digest(groups), int(max_iter))
    with _COUNTS_ONLY_LOCK:
        hit = _COUNTS_ONLY_CACHE.get(key)
    if hit is not None:
        return hit.copy()
    params = _fit_partition_counts_only_uncached(groups, max_iter)
    if params is None:  # max_iter < 1: nothing fitted
        return params
    with _COUNTS_ONLY_LOCK:
        _COUNTS_ONLY_CACHE[key] = params.copy()
        while len(_COUNTS_ONLY_CACHE) > _COUNTS_ONLY_CACHE_SIZE:
            _COUNTS_ONLY_CACHE.popitem(last=False)
    return params


def _fit_partition_counts_only_uncached(groups: AnswerGroups, max_iter: int) -> np.ndarray:
    params: np.ndarray | None = None
    for _ in range(max_iter):
        r = groups.softmax(np.log(groups.share) if params is None else _partition_log_weight(groups, params))
        new = _fit_partition(groups, r, params)
        done = params is not None and float(np.max(np.abs(np.log(np.abs(new) + 1e-9)
                                                          - np.log(np.abs(params) + 1e-9)))) < 1e-4
        params = new
        if done:
            break
    return params


def _residual_layout(obs: tuple[np.ndarray, np.ndarray, np.ndarray]
                     ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None]:
    """Per source, what :func:`_class_residuals` reads of ``obs`` whatever the posterior: the answers it scores
    (indices), their mean probit scores and counts, and the sampling variances ``sw2 / n``; ``None`` for a source
    that scores none. The same in every EM step, so EM computes it once."""
    m, n, sw2 = obs
    out: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None] = []
    for k in range(m.shape[1]):
        idx = np.flatnonzero(n[:, k] > 0)
        if not idx.size:  # a source with no score here (e.g. in one guard fold): no evidence to correlate
            out.append(None)
            continue
        nk = n[idx, k]
        out.append((idx, m[idx, k], nk, sw2[k] / nk))
    return out


def _class_residuals(obs: tuple[np.ndarray, np.ndarray, np.ndarray], r: np.ndarray,
                     layout: list[tuple[np.ndarray, ...] | None] | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per answer and source, the mean probit score minus the class-1 and the class-0 mean (``(G, K)`` each, 0 where
    the source scores none of the answer's candidates), the class means weighted by the posterior ``r`` and the
    counts; and each source's between-answer variance given the class ``sa2`` (``(K,)``, method of moments: the
    posterior-weighted squared residual minus the sampling variance ``sw2 / n``, at least 0). ``layout``: the
    :func:`_residual_layout` of ``obs`` when already computed."""
    m = obs[0]
    d1, d0 = np.zeros(m.shape), np.zeros(m.shape)
    sa2 = np.zeros(m.shape[1])
    for k, lay in enumerate(_residual_layout(obs) if layout is None else layout):
        if lay is None:
            continue
        idx, mk, nk, var = lay
        rk = r[idx]
        w1, w0 = rk * nk, (1.0 - rk) * nk
        mu1 = float((w1 * mk).sum() / max(w1.sum(), 1e-12))
        mu0 = float((w0 * mk).sum() / max(w0.sum(), 1e-12))
        d1[idx, k], d0[idx, k] = mk - mu1, mk - mu0
        resid = rk * (mk - mu1) ** 2 + (1.0 - rk) * (mk - mu0) ** 2
        sa2[k] = max(float((resid - var).mean()), 0.0)
    return d1, d0, sa2


def _within_answer_icc(obs: tuple[np.ndarray, np.ndarray, np.ndarray], r: np.ndarray,
                       resid: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """``(K,)`` intra-answer correlation of each source given the class: the share of a source's score variance,
    after removing the class means under the answer posteriors ``r``, that candidates of one answer have in common
    (``sa2 / (sa2 + sw2)``, method of moments on probit scores, :func:`_class_residuals`). 0 = an answer's candidates
    are independent evidence; 1 = they are one observation. Label-free (``r`` is the EM posterior). ``resid``: the
    :func:`_class_residuals` of ``(obs, r)`` when already computed."""
    sa2 = (_class_residuals(obs, r) if resid is None else resid)[2]
    return sa2 / (sa2 + obs[2])


def _cross_source_cov(obs: tuple[np.ndarray, np.ndarray, np.ndarray], r: np.ndarray,
                      resid: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
                      ) -> tuple[np.ndarray, np.ndarray] | None:
    """Between-answer covariance of the sources given the class, ``((K, K), within-answer variances (K,))``, or
    ``None`` when their mean correlation is not positive (no shared answer-level error to correct for).

    Per source, an answer's residual is its mean probit score minus the class mean, weighted by the posterior ``r``
    as in :func:`_within_answer_icc` (whose ``sa2`` is the diagonal). Off the diagonal, the posterior-weighted cross
    products are averaged over the answers both sources score; the within-answer noise of two sources is
    independent, so it needs no correction there. Label-free (``r`` is the EM posterior). ``resid``: the
    :func:`_class_residuals` of ``(obs, r)`` when already computed.
    """
    m, n, sw2 = obs
    K = m.shape[1]
    if K < 2:
        return None
    ok = n > 0
    d1, d0, sa2 = _class_residuals(obs, r) if resid is None else resid
    okf = ok.astype(np.float64)
    both = okf.T @ okf  # answers scored by both sources
    cross = (d1 * r[:, None]).T @ d1 + (d0 * (1.0 - r)[:, None]).T @ d0  # zero where a source is missing
    cov = np.where(both > 0, cross / np.maximum(both, 1.0), 0.0)
    np.fill_diagonal(cov, sa2)
    corr = _xdep_corr((cov, sw2))
    if not float(corr[~np.eye(K, dtype=bool)].mean()) > 0.0:
        return None
    return cov, np.asarray(sw2, dtype=np.float64)


def _xdep_corr(xdep: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """``(K, K)`` between-answer correlation of the sources from :func:`_cross_source_cov`'s covariance (0 where a
    source has no between-answer variance)."""
    cov = xdep[0]
    sd = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    with np.errstate(all="ignore"):
        corr = np.where(np.outer(sd, sd) > 0, cov / np.outer(sd, sd), 0.0)
    np.fill_diagonal(corr, 1.0)
    return np.clip(corr, -1.0, 1.0)


def _design_effect(xdep: tuple[np.ndarray, np.ndarray], n: np.ndarray) -> np.ndarray:
    """``(G,)`` design effect ``1 + (K_g - 1) c_g`` of summing an answer's per-source evidence: ``K_g`` sources score
    it, ``c_g`` (clipped to [0, 1]) is the mean correlation of their evidence for an answer with its counts ``n``
    (``(G, K)`` scored candidates): between-answer covariance over ``sqrt((sa2_j + sw2_j / n_j)(sa2_k + sw2_k / n_k))``.
    """
    cov, sw2 = xdep
    sa2 = np.clip(np.diag(cov), 0.0, None)
    off = cov - np.diag(np.diag(cov))
    has = n > 0
    v = sa2[None, :] + sw2[None, :] / np.maximum(n, 1.0)
    u = np.where(has, 1.0 / np.sqrt(np.maximum(v, 1e-12)), 0.0)
    k = has.sum(axis=1).astype(np.float64)
    pairs = k * (k - 1.0)
    with np.errstate(all="ignore"):
        c = np.where(pairs > 0, ((u @ off) * u).sum(axis=1) / np.maximum(pairs, 1.0), 0.0)
    return 1.0 + np.maximum(k - 1.0, 0.0) * np.clip(c, 0.0, 1.0)


def _re_stats(groups: AnswerGroups, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per answer and source: mean and count of the probit-transformed scores, and each source's pooled
    within-answer variance (``(G, K)``, ``(G, K)``, ``(K,)``)."""
    from scipy.special import ndtri

    x = ndtri(np.clip(np.asarray(s, dtype=np.float64), 0.005, 0.995))
    K = x.shape[2]
    flat = x.reshape(-1, K)
    g = groups.group.ravel()
    ok = ~np.isnan(flat)
    n = np.zeros((groups.num_groups, K))
    s1 = np.zeros_like(n)
    s2 = np.zeros_like(n)
    np.add.at(n, g, ok.astype(np.float64))
    np.add.at(s1, g, np.where(ok, flat, 0.0))
    np.add.at(s2, g, np.where(ok, flat * flat, 0.0))
    with np.errstate(all="ignore"):
        m = np.where(n > 0, s1 / n, np.nan)
    ss = np.where(n > 0, s2 - n * np.nan_to_num(m) ** 2, 0.0)
    dof = np.clip(n - 1.0, 0.0, None).sum(axis=0)
    cnt = ok.sum(axis=0)
    mean = np.where(ok, flat, 0.0).sum(axis=0) / np.maximum(cnt, 1)
    tot = np.where(ok, (flat - mean) ** 2, 0.0).sum(axis=0) / np.maximum(cnt, 1)  # 0 for a source without scores
    sw2 = np.where(dof > 0, ss.sum(axis=0) / np.maximum(dof, 1.0), 0.5 * tot)
    return m, n, np.maximum(sw2, 1e-6)


def _re_m_step(obs: tuple[np.ndarray, np.ndarray, np.ndarray], r: np.ndarray,
               prev: list[tuple[float, float, float, float]] | None) -> list[tuple[float, float, float, float]]:
    """Class means and the between-answer (shared) variance of each source given answer posteriors ``r``; the
    within-answer variance is the data's. Answers are weighted by their precision under the previous parameters."""
    m, n, sw2 = obs
    out = []
    for k in range(m.shape[1]):
        ok = n[:, k] > 0
        mk, nk = m[ok, k], n[ok, k]
        sa2 = prev[k][2] if prev is not None else float(np.var(mk)) * 0.5 + 1e-6
        prec = 1.0 / (sa2 + sw2[k] / nk)
        w1, w0 = r[ok] * prec, (1.0 - r[ok]) * prec
        mu1 = float((w1 * mk).sum() / max(w1.sum(), 1e-12))
        mu0 = float((w0 * mk).sum() / max(w0.sum(), 1e-12))
        resid = (r[ok] * (mk - mu1) ** 2 + (1.0 - r[ok]) * (mk - mu0) ** 2)
        sa2 = float(max((resid - sw2[k] / nk).mean(), 0.01 * sw2[k], 1e-6))
        out.append((mu0, mu1, sa2, float(sw2[k])))
    return out

