"""Issue 17: Weaver never worse than its simplest baselines - verifier groups, any correct rate, the label-free guard,
the verifier-data suite (small sizes here; benchmarks/bench_weaver_suite.py runs it at full size)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from lightning_ws.errors import ConfigError, DataError
from lightning_ws.weaver import (
    Binarizer,
    ScoreNormalizer,
    VerifierFilter,
    Weaver,
    majority_vote_scores,
)
from lightning_ws.weaver.answer_model import AnswerGroups, AnswerLevelModel
from lightning_ws.weaver.data import VerificationData
from lightning_ws.weaver.ordinal import BinnedDawidSkene, bin_scores
from lightning_ws.weaver.report import suite_report
from lightning_ws.weaver.structure import centred_correlation, detect_verifier_groups, pool_groups
from lightning_ws.weaver.suite import SUITE, GroupSpec, SetSpec, make_set, make_suite_set


def _baselines(rep: dict) -> float:
    m = rep["select_at_1"]
    return max(m["majority_vote"], m["mean_verifier"])


# -- the suite generator ------------------------------------------------------------------------------------------

def test_suite_sets_have_the_promised_structure():
    d = make_suite_set("judge_draws", num_problems=20, num_candidates=16, seed=0)
    assert d.scores.shape == (20, 16, 32) and set(np.unique(d.scores[~np.isnan(d.scores)])) <= {0.0, 1.0}
    assert 0.002 < np.isnan(d.scores).mean() < 0.03  # about 1% missing
    assert all(k == "judge" for k in d.verifier_kinds)
    for name, lo, hi in (("rate_0.05", 0.01, 0.12), ("rate_0.95", 0.88, 0.99)):
        y = make_suite_set(name, num_problems=150, num_candidates=16, seed=1).correct
        assert lo < y.mean() < hi, (name, y.mean())
    # correctness is a function of the answer: every correct candidate says "c"
    d = make_suite_set("correlated", num_problems=30, num_candidates=8, seed=2)
    assert all((a == "c") == bool(c) for row, cr in zip(d.answers, d.correct) for a, c in zip(row, cr))
    with pytest.raises(ConfigError, match="unknown suite set"):
        make_suite_set("nope")
    with pytest.raises(ConfigError):
        SetSpec(1.2, (GroupSpec(1.0),))
    with pytest.raises(ConfigError):
        GroupSpec(1.0, kind="oracle")


# -- verifier groups ----------------------------------------------------------------------------------------------

def test_groups_pool_repeated_judge_draws_and_near_duplicates_but_not_independent_verifiers():
    d = make_suite_set("judges_and_rms", num_problems=80, num_candidates=16, seed=0)
    norm = ScoreNormalizer().fit_transform(d.scores)
    groups, rep = detect_verifier_groups(norm, d.verifier_names, raw=d.scores,
                                         context=majority_vote_scores(d.answer_ids())[:, :, None])
    named = [sorted(d.verifier_names[j] for j in g) for g in groups]
    assert sorted(f"judgeA_{j}" for j in range(16)) in named
    assert sorted(f"judgeB_{j}" for j in range(16)) in named
    assert sorted(f"rmdup_{j}" for j in range(3)) in named
    assert ["rm0"] in named  # the strong independent reward model stays on its own
    assert rep["n_sources"] == len(groups) and len(rep["groups"]) == 3
    pooled = pool_groups(norm, groups)
    assert pooled.shape == (80, 16, len(groups))
    # pooled = nan-mean of the members
    g = groups[0]
    np.testing.assert_allclose(pooled[:, :, 0], np.nanmean(norm[:, :, g], axis=2))


def test_centred_correlation_handles_missing_and_constant_columns():
    rng = np.random.default_rng(0)
    x = rng.random((10, 6, 3))
    x[:, :, 1] = x[:, :, 0]
    x[:, :, 2] = 0.5  # constant
    x[0, 0, 0] = np.nan
    c = centred_correlation(x)
    assert c.shape == (3, 3) and c[0, 1] > 0.99 and c[0, 2] == 0.0 and np.all(np.diag(c) == 1.0)
    with pytest.raises(ConfigError):
        detect_verifier_groups(x, dup_corr=1.5)


# -- binariser and filter at any correct rate -------------------------------------------------------------------

@pytest.mark.parametrize("name", ["rate_0.05", "rate_0.95"])
def test_youden_binariser_and_filter_work_at_extreme_correct_rates(name):
    d = make_suite_set(name, num_problems=200, num_candidates=16, seed=3)
    w = Weaver("moment_matching", guard=False).fit(d, "label_free")
    kept_real = [n for n in w.report_["kept"] if n != "majority_vote"]
    assert len(kept_real) >= 3, w.report_["kept"]  # the reference band + prior votes kept none of them
    # the thresholds do not force each verifier's vote rate to the correct rate
    rates = [r for n, r in w.report_["positive_rate"].items() if n != "majority_vote"]
    pi = float(d.correct.mean())
    assert max(abs(r - pi) for r in rates) > 0.05


def test_filter_never_drops_every_real_verifier():
    votes = np.zeros((30, 4, 3), dtype=np.int64)
    votes[:, :, 0] = 1  # two constant real verifiers
    votes[:, :2, 2] = 1  # the MV column is the only balanced one
    f = VerifierFilter(band=(0.1, 0.9), min_keep=1).fit(votes, names=["a", "b", "majority_vote"])
    assert "majority_vote" in f.report_["kept"] and any(n in f.report_["kept"] for n in ("a", "b"))
    with pytest.raises(ConfigError, match="min_keep_real"):
        VerifierFilter(min_keep_real=-1)


def test_youden_binariser_needs_a_posterior_and_cuts_at_the_separating_value():
    rng = np.random.default_rng(0)
    y = rng.random((100, 10)) < 0.05
    s = np.where(y, rng.normal(0.8, 0.05, y.shape), rng.normal(0.3, 0.05, y.shape))[:, :, None]
    b = Binarizer("youden").fit(s, posterior=y.astype(float))
    assert 0.4 < b.thresholds_[0] < 0.7  # the prior rule would cut at the 95th percentile instead
    assert b.transform(s)[:, :, 0].mean() == pytest.approx(y.mean(), abs=0.01)
    with pytest.raises(ConfigError, match="posterior"):
        Binarizer("youden").fit(s)
    with pytest.raises(DataError, match="posterior"):
        Binarizer("youden").fit(s, posterior=np.zeros((3, 3)))


def test_binned_dawid_skene_recovers_a_two_class_mixture():
    rng = np.random.default_rng(1)
    y = rng.random(4000) < 0.2
    x = np.stack([np.where(y, rng.normal(1.0, 1, y.size), rng.normal(-0.5, 1, y.size)) for _ in range(3)], 1)
    x[rng.random(x.shape) < 0.02] = np.nan
    m = BinnedDawidSkene().fit(x)
    assert abs(m.pi_ - 0.2) < 0.04
    auc_ok = (m.predict_proba(x)[y].mean() > m.predict_proba(x)[~y].mean() + 0.3)
    assert auc_ok
    th, j = m.youden_thresholds()
    assert np.all(j > 0.3) and np.all(np.isfinite(th))
    b, edges = bin_scores(np.array([[0.0], [1.0], [np.nan]]), 10)
    assert b.ravel().tolist() == [0, 1, -1] and edges[0].tolist() == [0.5]
    x[:5] = np.nan  # items without any score: no numpy "Mean of empty slice" warning, a finite posterior
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        m = BinnedDawidSkene().fit(x)
    assert np.isfinite(m.predict_proba(x)).all()


def test_bin_scores_keeps_near_equal_atoms_in_one_bin():
    """Two verdict judges pooled: a pair where they disagree scores 0.4925 / 0.5075 (their quantile mid-ranks differ
    with their tie rates). Those values, and 0.5, are one level; no edge may split them (session 33: an edge at 0.5
    made label-free EM follow one judge with posterior 0.999 on PandaLM pairs)."""
    levels = [0.225, 0.2325, 0.3625, 0.37, 0.4925, 0.5, 0.5075, 0.63, 0.6375, 0.7675, 0.775]
    col = np.repeat(levels, 10)[:, None]
    b, _ = bin_scores(col, 8)
    bins_of = {v: set(b[col[:, 0] == v, 0].tolist()) for v in levels}
    assert bins_of[0.4925] == bins_of[0.5] == bins_of[0.5075]
    assert bins_of[0.225] == bins_of[0.2325] and bins_of[0.7675] == bins_of[0.775]
    assert len({next(iter(v)) for v in bins_of.values()}) == 5  # five levels, five bins
    # evenly spaced values (pooled draws k / 7) and continuous scores keep the old binning
    even = np.repeat(np.arange(8) / 7, 5)[:, None]
    assert len(set(bin_scores(even, 8)[0][:, 0].tolist())) == 8
    cont = np.random.default_rng(0).normal(size=(500, 1))
    assert len(set(bin_scores(cont, 8)[0][:, 0].tolist())) == 8


def test_weaver_on_real_pairwise_judge_verdicts_is_not_below_the_mean_verifier():
    """Real judge data: PandaLM's 894 human-labelled pairs as 2-candidate problems, with the shipped GPT-3.5 and
    PandaLM-7B verdicts and the response length as verifiers (``benchmarks/bench_weaver_preferences.py``). Before
    session 33 label-free Weaver was 3.24 points below the plain mean of the verifiers here (EM followed one judge
    wherever the two disagreed, through a bin edge between near-equal pooled scores); issue 17's goal is at most 0.5
    below."""
    from lightning_ws.pajama import load_preferences
    from lightning_ws.weaver.report import suite_baselines

    pr = load_preferences("pandalm_test")
    pr = pr.take(np.flatnonzero(pr.y >= 0))
    verdict = {"a": (1.0, 0.0), "b": (0.0, 1.0), "tie": (0.5, 0.5)}
    cols = [np.array([verdict.get(str(e[k]).strip().lower(), (np.nan, np.nan)) for e in pr.extra])
            for k in ("gpt35_verdict", "pandalm7b_verdict")]
    cols.append(np.log1p(np.array([[len(a), len(b)] for a, b in zip(pr.responses_a, pr.responses_b)], float)))
    data = VerificationData(np.stack(cols, axis=2), [["a", "b"]] * len(pr), ["gpt35", "pandalm7b", "length"],
                            ["judge", "judge", "heuristic"], correct=np.stack([pr.y == 0, pr.y == 1], axis=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = Weaver(seed=0).fit(data, "label_free")
    acc = float(data.correct[np.arange(len(pr)), w.select(data)].mean())
    assert acc >= suite_baselines(data)[0]["mean_verifier"] - 0.005


def _pairs_with_programs(pr) -> VerificationData:
    """Labelled preference pairs as 2-candidate problems with the 20 hand-written PAJAMA judge programs and the
    response length as verifiers, as ``benchmarks/bench_weaver_preferences.py`` builds them (no LLM verdict)."""
    from lightning_ws.pajama.scoring import handwritten_judges, score_pairs

    ps = score_pairs(handwritten_judges(), pr.queries, pr.responses_a, pr.responses_b)
    length = np.log1p(np.array([[len(a), len(b)] for a, b in zip(pr.responses_a, pr.responses_b)], float))
    return VerificationData(np.concatenate([ps.scores, length[:, :, None]], axis=2), [["a", "b"]] * len(pr),
                            [*ps.names, "length"], ["heuristic"] * (len(ps.names) + 1),
                            correct=np.stack([pr.y == 0, pr.y == 1], axis=1))


def test_weaver_on_real_pairwise_judge_programs_falls_back_to_the_mean_verifier(tmp_path):
    """Real judge data: PandaLM's 894 human-labelled pairs as 2-candidate problems, the 20 hand-written PAJAMA judge
    programs (run in the sandbox) and the response length as verifiers, no LLM verdict
    (``benchmarks/bench_weaver_preferences.py``). The group detector puts length, the best verifier here, in one
    source with two weak programs, so the pooled mean over groups is 2.3 points below the plain mean of the
    verifiers; before session 34 the guard fell back to majority vote (ties by the pooled mean), 2.35 points below
    the mean verifier. Since then it weighs the mean verifier (each verifier once) as a fallback too."""
    from lightning_ws.pajama import load_preferences
    from lightning_ws.weaver.report import suite_baselines

    pr = load_preferences("pandalm_test")
    pr = pr.take(np.flatnonzero(pr.y >= 0))
    data = _pairs_with_programs(pr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = Weaver(seed=0).fit(data, "label_free")
    acc = lambda k: float(data.correct[np.arange(len(pr)), w.select_with(data, k)].mean())
    assert any(len(g) > 1 for g in w.groups_)
    assert acc("pooled_mean") < acc("mean_verifier") - 0.01  # the grouping hurts the plain average here
    base = suite_baselines(data)[0]
    assert acc("mean_verifier") == base["mean_verifier"]  # the selector is the suite's baseline
    assert w.report_["guard"]["choice"] == "mean_verifier", w.report_["guard"]
    assert w.report_["guard"]["mean_verifier_replaced"] == "majority_vote"
    assert float(data.correct[np.arange(len(pr)), w.select(data)].mean()) >= max(
        base["majority_vote"], base["mean_verifier"]) - 0.005
    np.testing.assert_array_equal(Weaver.load(w.save(tmp_path / "w")).select(data), w.select(data))


def test_monotone_likelihood_ratio_keeps_a_one_source_fit_ranking_as_its_scores_without_answer_agreement():
    """One judge's 32 draws pool into one source; with every candidate its own answer (no agreement signal,
    ``benchmarks/diag_weaver_no_agreement.py``) EM can collapse to a flat, non-monotone per-bin likelihood ratio and
    the label model then ranks below its own pooled score (seeds 101 and 102 here, with ``monotone=False``). With the
    likelihood-ratio order (``monotone="auto"``, the default, turns it on exactly where no answer is shared) every
    source's ratio is non-decreasing and the label model picks as well as the pooled mean."""
    for seed in (100, 101, 102):
        d = make_suite_set("judge_draws", num_problems=120, num_candidates=16, seed=seed)
        d = VerificationData(d.scores, [[f"c{i}" for i in range(16)] for _ in range(120)], d.verifier_names,
                             d.verifier_kinds, correct=d.correct)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = Weaver(seed=0, guard=False).fit(d, "label_free")
        assert len(w.groups_) == 1 and w.label_model_.report_["monotone"] is True
        assert all(np.all(np.diff(llr) >= -1e-12) for llr in w.label_model_.llr_)
        acc = lambda k: float(d.correct[np.arange(120), w.select_with(d, k)].mean())  # noqa: B023
        assert acc("label_model") >= acc("pooled_mean") - 0.01, seed
        m2 = type(w.label_model_).from_state_dict(w.label_model_.state_dict())
        assert m2.monotone_setting == "auto"
    # with answers shared (the suite's own sets) "auto" leaves the model as it was
    d = make_suite_set("judge_draws", num_problems=40, num_candidates=16, seed=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert Weaver(seed=0, guard=False).fit(d, "label_free").label_model_.report_["monotone"] is False
    with pytest.raises(ConfigError, match="monotone"):
        Weaver(label_model_kwargs={"monotone": "yes"})


# -- the answer-level model ----------------------------------------------------------------------------------------

def test_answer_groups_and_answer_level_model_roundtrip():
    ids = np.array([[0, 0, 1, -1], [0, 1, 2, 2]])
    g = AnswerGroups(ids)
    assert g.num_groups == 6 and g.size.tolist() == [2, 1, 1, 1, 1, 2]
    d = make_suite_set("rate_0.20", num_problems=120, num_candidates=16, seed=4)
    s = ScoreNormalizer().fit_transform(d.scores)
    m = AnswerLevelModel().fit(d.answer_ids(), s)
    p = m.predict_proba(d.answer_ids(), s)
    assert p.shape == (120, 16) and np.all((p >= 0) & (p <= 1))
    assert abs(m.report_["class_balance"] - d.correct.mean()) < 0.05
    m2 = AnswerLevelModel.from_state_dict(m.state_dict())
    np.testing.assert_allclose(m2.predict_proba(d.answer_ids(), s), p)
    re = AnswerLevelModel(evidence="random_effects").fit(d.answer_ids(), s)
    assert np.all(re.source_auroc() > 0.5)
    with pytest.raises(ConfigError, match="evidence"):
        AnswerLevelModel(evidence="votes")
    with pytest.raises(ConfigError, match="not fitted"):
        AnswerLevelModel().predict_proba(d.answer_ids(), s)


def test_learned_agreement_is_oriented_and_beats_a_monotone_prior_when_distractors_are_spread():
    # judge_vs_majority: a weak judge, wrong answers spread evenly - the regime where issue 17's Weaver lost to
    # majority vote. A learned U-shaped agreement prior (theta_1 >= theta_2) selects better than share ** beta.
    accs = {"learned": [], "exponent": [], "mv": []}
    for seed in (0, 1):
        d = make_suite_set("judge_vs_majority", seed=seed)
        y = d.correct
        for kind in ("learned", "exponent"):
            # the agreement prior alone: no per-problem offsets (with them, default since session 21, the margin
            # over the exponent prior on these two seeds is 1.6 points instead of 4.7)
            w = Weaver(guard=False, label_model_kwargs={"agreement": kind}, problem_offsets=False,
                       seed=seed).fit(d, "label_free")
            accs[kind].append(float(y[np.arange(64), w.select(d)].mean()))
            if kind == "learned":
                aw = w.report_["answer_model"]["agreement_weights"]
                assert aw["log_share"] >= aw["log_one_minus_share"] - 1e-9, aw
        accs["mv"].append(float(y[np.arange(64), w.select_with(d, "majority_vote")].mean()))
    assert np.mean(accs["learned"]) > np.mean(accs["exponent"]) + 0.03, accs
    assert np.mean(accs["learned"]) > np.mean(accs["mv"]) + 0.03, accs
    with pytest.raises(ConfigError, match="agreement"):
        AnswerLevelModel(agreement="votes")


def test_agreement_weights_never_favour_the_less_frequent_of_two_answers():
    # posteriors that put the correct answer on the *minority* answer: the free optimum has theta_1 < theta_2; the
    # constrained fit stays on theta_1 = theta_2 (agreement no worse than chance)
    ids = np.array([[0, 0, 0, 1]] * 40 + [[0, 1, 1, 1]] * 40)
    g = AnswerGroups(ids)
    r = np.where(g.size == 1, 0.9, 0.05)
    m = AnswerLevelModel()
    theta = m._newton_theta(g, r, None)
    assert theta[0] == pytest.approx(theta[1]), theta
    free = m._newton_softmax(g, r, np.stack([np.log(g.share) + np.log1p(-g.share), np.log(g.share)], 1),
                             np.zeros(2), free=[0, 1])
    assert free[1] < 0  # the unconstrained fit would have preferred the minority answer


def test_inverted_em_solutions_are_dropped():
    # judge_draws_prob seed 3: the best-likelihood EM fit is inverted (the judge "prefers" wrong answers, the majority
    # answer is "right"); it selected 1 of 64 correctly. Orientation drops it. (Pinned to the fixed size ** 0.5
    # evidence, where this seed's best fit is inverted; the default's dependence estimate lands elsewhere on it.)
    d = make_suite_set("judge_draws_prob", seed=3)
    y = d.correct
    acc = {}
    for orient in (True, False):
        w = Weaver(guard=False, label_model_kwargs={"orient": orient, "dependence": "exponent"},
                   seed=3).fit(d, "label_free")
        acc[orient] = float(y[np.arange(64), w.select(d)].mean())
        rep = w.report_["answer_model"]
        if orient:
            assert rep["inverted_solutions_dropped"] and all(s["mean_auroc"] < 0.45
                                                             for s in rep["inverted_solutions_dropped"])
            assert np.all(w.label_model_.source_auroc() > 0.5)
    assert acc[True] > 0.4 and acc[False] < 0.1, acc
    with pytest.raises(ConfigError, match="orient_tol"):
        AnswerLevelModel(orient_tol=0.6)


# -- Weaver against its baselines (small versions of the benchmark sets) -------------------------------------------

@pytest.mark.parametrize("name,P,N", [("rate_0.05", 200, 16), ("rate_0.50", 120, 16), ("rate_0.95", 120, 16),
                                      ("weak_verifiers", 150, 16), ("judge_draws", 64, 64)])
def test_label_free_weaver_is_not_worse_than_its_baselines(name, P, N):
    d = make_suite_set(name, num_problems=P, num_candidates=N, seed=11)
    rep = suite_report(d, seed=0)
    # the issue's 0.5-point goal, loosened to one problem at these test sizes (the benchmark checks it at full size)
    assert rep["select_at_1"]["weaver"] >= _baselines(rep) - max(0.005, 1.0 / P) - 1e-9, rep["select_at_1"]
    assert abs(rep["class_balance_estimate"] - rep["correct_rate"]) < 0.1, (rep["class_balance_estimate"],
                                                                            rep["correct_rate"])


@pytest.mark.parametrize("name", ["correlated", "correlated_hard"])
def test_weaver_is_strictly_above_both_baselines_on_correlated_sets(name):
    d = make_suite_set(name, num_problems=200, num_candidates=16, seed=5)
    rep = suite_report(d, seed=0)
    assert rep["select_at_1"]["weaver"] > _baselines(rep) + 0.02, rep["select_at_1"]
    assert any(len(g) == 6 for g in rep["weaver"]["verifier_groups"]["groups"])


def test_guard_report_states_a_label_free_criterion_and_falls_back_when_verifiers_are_noise():
    spec = SetSpec(0.4, (GroupSpec(0.0, name="noise0"), GroupSpec(0.0, name="noise1"), GroupSpec(0.0, name="noise2")),
                   num_wrong=4, distractor_concentration=5.0)
    d = make_set(spec, num_problems=120, num_candidates=16, seed=0)
    w = Weaver().fit(d, "label_free")
    g = w.report_["guard"]
    assert g["choice"] == "majority_vote", g
    assert "no gold" not in g["criterion"] and "cross-fitted" in g["criterion"]
    assert set(g["estimated_accuracy"]) == {"label_model", "pooled_mean", "majority_vote", "mean_verifier"}
    np.testing.assert_array_equal(w.select(d), w.select_with(d, "majority_vote"))
    # the guard never reads labels: the same fit on unlabeled data gives the same choice
    from dataclasses import replace

    w2 = Weaver().fit(replace(d, correct=None), "label_free")
    assert w2.report_["guard"]["choice"] == g["choice"]


def _shared_error_judge(strength: float, rate: float, num_wrong: int, kind: str, answer: float,
                        concentration: float) -> SetSpec:
    """64 x 64 x 32 draws of one judge whose error is largely shared by every candidate of an answer (the held-out
    judge sets of benchmarks/bench_weaver_suite.py --heldout, where majority vote is strong)."""
    judge = (GroupSpec(strength, copies=32, shared=1.0, answer=answer, kind=kind, name="judge"),)
    return SetSpec(rate, judge, num_wrong=num_wrong, distractor_concentration=concentration, missing=0.01,
                   num_problems=64, num_candidates=64)


def test_guard_dependence_check_prefers_majority_vote_when_the_judge_error_is_shared_by_an_answer(monkeypatch):
    # ho_free_r40_s06_prob, seed 3, with the session-18 guard (first evaluator size ** 0.5, check dependence="icc")
    # and the conditional agreement prior: the first evaluator agrees with the over-confident label model; the
    # check does not. (The mechanism: the check overrides the first evaluator. The default guard: next test.)
    from dataclasses import replace

    import lightning_ws.weaver.select as select_mod

    monkeypatch.setattr(select_mod, "GUARD_EVALUATOR", {"dependence": "exponent"})
    monkeypatch.setattr(select_mod, "GUARD_CHECK_EVALUATOR", {"dependence": "icc"})
    seed = 3
    d = make_set(_shared_error_judge(0.6, 0.40, 20, "judge_prob", 0.5, 0.5), seed=1000 + seed)
    y, P = d.correct, d.num_problems
    def acc(w: Weaver) -> float:
        return float(y[np.arange(P), w.select(d)].mean())

    kw = {"agreement": "learned", "dependence": "exponent"}
    old = Weaver(seed=seed, guard_check=False, label_model_kwargs=kw).fit(d, "label_free")
    new = Weaver(seed=seed, label_model_kwargs=kw).fit(d, "label_free")
    assert old.choice_ == "label_model"
    g = new.report_["guard"]
    assert new.choice_ == "majority_vote" and g["dependence_check"]["choice"] == "majority_vote", g
    assert g["dependence_check"]["evaluator"] == {"dependence": "icc"} and "dependence='icc'" in g["criterion"]
    assert acc(new) > acc(old) + 0.05
    assert acc(new) >= float(y[np.arange(P), new.select_with(d, "majority_vote")].mean())
    # label-free: the same fit without labels makes the same choice
    assert Weaver(seed=seed, label_model_kwargs=kw).fit(replace(d, correct=None), "label_free").choice_ == \
        "majority_vote"


def test_default_guard_evaluator_estimates_the_shared_judge_error_and_keeps_majority_vote(monkeypatch):
    # the same set and seed as above with the shipped guard (its evaluator estimates each source's within-answer
    # error correlation): with the 2-fold guard of sessions 19-26 the first evaluator already chooses majority vote,
    # for either agreement prior. (Since session 27 the guard uses 8 folds at 64 problems; there it keeps today's
    # label model, whose picks are as accurate as majority vote's on this seed: checked below.)
    import lightning_ws.weaver.select as select_mod

    seed = 3
    d = make_set(_shared_error_judge(0.6, 0.40, 20, "judge_prob", 0.5, 0.5), seed=1000 + seed)
    y, P = d.correct, d.num_problems
    def acc(sel: np.ndarray) -> float:
        return float(y[np.arange(P), sel].mean())

    for kw in ({}, {"agreement": "learned"}):
        w = Weaver(seed=seed, label_model_kwargs=kw).fit(d, "label_free")
        mv, pm = acc(w.select_with(d, "majority_vote")), acc(w.select_with(d, "pooled_mean"))
        est = w.report_["guard"]["estimated_accuracy"]
        assert acc(w.select(d)) >= mv > pm + 0.2 and est["pooled_mean"] < est["majority_vote"] - 0.2, est
        assert w.label_model_.report_["within_answer_correlation"][0] > 0.1
    monkeypatch.setattr(select_mod, "guard_fold_count", lambda num_problems: 2)
    for kw in ({}, {"agreement": "learned"}):
        w = Weaver(seed=seed, label_model_kwargs=kw).fit(d, "label_free")
        g = w.report_["guard"]
        assert w.choice_ == "majority_vote" and g["dependence_check"] is None, g
        assert "dependence='icc'" in g["criterion"] and "dependence='exponent'" in g["criterion"]
        assert acc(w.select(d)) == acc(w.select_with(d, "majority_vote")) > acc(w.select_with(d, "pooled_mean"))


def test_partition_prior_guard_keeps_majority_vote_on_a_strong_majority_set_without_the_check(monkeypatch):
    # ho_mc4_r70_s04, seed 4: with the conditional prior the guard needed its dependence check to leave the label
    # model (0.80) for majority vote (0.89); with the partition prior its first evaluator already chooses majority vote.
    # That holds for the 2-fold guard of sessions 19-26, pinned here; the 8-fold guard of session 27 keeps the label
    # model on this seed (0.859 against majority vote's 0.891: one of the held-out seeds below, BENCHMARKS.md)
    import lightning_ws.weaver.select as select_mod

    monkeypatch.setattr(select_mod, "guard_fold_count", lambda num_problems: 2)
    d = make_set(_shared_error_judge(0.4, 0.70, 3, "judge_verdict", 0.3, 5.0), seed=1004)
    y, P = d.correct, d.num_problems
    old = Weaver(seed=4, guard_check=False, label_model_kwargs={"agreement": "learned"}).fit(d, "label_free")
    new = Weaver(seed=4, guard_check=False).fit(d, "label_free")
    mv = float(y[np.arange(P), new.select_with(d, "majority_vote")].mean())
    assert float(y[np.arange(P), old.select_with(d, "label_model")].mean()) < mv - 0.05
    assert new.choice_ == "majority_vote" and float(y[np.arange(P), new.select(d)].mean()) == mv


def test_guard_dependence_check_keeps_the_label_model_where_majority_vote_is_weak():
    d = make_suite_set("judge_draws", seed=10)
    w = Weaver(seed=10).fit(d, "label_free")
    chk = w.report_["guard"]["dependence_check"]
    assert w.choice_ == "label_model" and chk["choice"] == "label_model", chk
    assert chk["estimated_accuracy"]["pooled_mean"] > chk["estimated_accuracy"]["majority_vote"]


def test_dependence_check_falls_back_to_majority_vote_only_when_both_evaluators_rank_it_above_the_pooled_mean(
        monkeypatch):
    # the decision rule alone, on crafted per-problem estimates: one plausible evaluator solution finds no gain of
    # the label model over majority vote; majority vote replaces the label model only if that evaluator ranks it at
    # least as high as the pooled mean
    rng = np.random.default_rng(0)
    P = 40
    lm = 0.6 + 0.01 * rng.standard_normal(P)
    w = Weaver()
    for pooled_mean, expected in ((0.7, "label_model"), (0.3, "majority_vote")):
        sols = [{"label_model": lm, "pooled_mean": np.full(P, pooled_mean), "majority_vote": lm - 0.1},
                {"label_model": lm, "pooled_mean": np.full(P, pooled_mean), "majority_vote": lm + 0.01}]
        monkeypatch.setattr(Weaver, "_guard_estimates", lambda self, *a, s=sols: s)
        choice, check = w._dependence_check(None, None, [], [])
        assert choice == expected == check["choice"], check
        assert check["label_model_gain_vs_majority_vote"][1] < 0.0
        # since session 20 the guard's own evaluator must rank majority vote at least as high as the pooled mean too
        # (its fallback): where it prefers the pooled mean, the check keeps the label model
        choice, check = w._dependence_check(None, None, [], [], "pooled_mean")
        assert choice == "label_model" == check["choice"] and check["guard_fallback"] == "pooled_mean", check


def test_dependence_check_chooses_majority_vote_where_its_evaluator_finds_the_label_model_clearly_worse(monkeypatch):
    # session 49, the decision rule alone on crafted per-problem estimates: the guard's own evaluator preferred the
    # pooled mean to majority vote (fallback "pooled_mean"), which used to keep the label model whatever the second
    # evaluator said; now, where the second evaluator ranks majority vote at least as high as the pooled mean and
    # finds the label model below majority vote by guard_z standard errors under every plausible solution, majority
    # vote is chosen
    rng = np.random.default_rng(47)
    P = 40
    lm = 0.6 + 0.05 * rng.standard_normal(P)
    w = Weaver()

    def check(mv_shift: tuple[float, ...], pooled_mean: float) -> tuple[str, dict]:
        sols = [{"label_model": lm, "pooled_mean": np.full(P, pooled_mean),
                 "majority_vote": lm + d + 0.02 * rng.standard_normal(P)} for d in mv_shift]
        monkeypatch.setattr(Weaver, "_guard_estimates", lambda self, *a, s=sols: s)
        return w._dependence_check(None, None, [], [], "pooled_mean")

    choice, rep = check((0.10, 0.12), 0.5)  # clearly worse under both solutions; MV above the pooled mean here
    assert choice == "majority_vote" == rep["choice"] and rep["label_model_worse_than_majority_vote"], rep
    assert all(g < -se for g, se in zip(rep["label_model_gain_vs_majority_vote"], rep["gain_standard_error"]))
    choice, rep = check((0.10, -0.001), 0.5)  # not worse under one plausible solution: kept, as before
    assert choice == "label_model" and not rep["label_model_worse_than_majority_vote"], rep
    choice, rep = check((0.10, 0.12), 0.9)  # this evaluator ranks the pooled mean above majority vote: kept
    assert choice == "label_model" and rep["label_model_worse_than_majority_vote"], rep
    choice, rep = check((0.004, 0.004), 0.5)  # below majority vote by well under one standard error: kept
    assert choice == "label_model" and not rep["label_model_worse_than_majority_vote"], rep


def test_guard_drops_a_label_model_with_a_collapsed_count_prior_that_its_second_evaluator_rejects():
    # session 49, end to end: 6-option multiple choice, majority vote right on 81 % of 64 problems x 16 candidates,
    # one weak judge x 32 draws (the development set dv_mc6_r60_s045 of benchmarks/dev_weaver_guard.py, data seed
    # 10406). EM's count prior collapsed (Beta mean 0.006: "the correct answer is almost never the popular one") and
    # the label model picked 28 points below majority vote; the guard's evaluator rated the pooled mean above
    # majority vote, so the second evaluator, which rated the label model about 2 standard errors below majority
    # vote, could not act. Now majority vote is chosen.
    judge = GroupSpec(0.45, copies=32, shared=1.0, answer=0.3, kind="judge_verdict", name="judge")
    spec = SetSpec(0.60, (judge,), num_wrong=5, distractor_concentration=3.0, missing=0.01, num_problems=64,
                   num_candidates=64)
    d = make_set(spec, seed=10406, num_candidates=16)
    y = d.require_labels("test")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = Weaver(seed=6).fit(d, "label_free")
    g = w.report_["guard"]
    chk = g["dependence_check"]
    acc = {k: float(y[np.arange(d.num_problems), w.select_with(d, k)].mean()) for k in ("label_model", "majority_vote")}
    assert w.report_["answer_model"]["agreement_weights"]["correct_rate_mean"] < 0.05  # the collapsed prior
    assert chk["guard_fallback"] == "pooled_mean" and chk["label_model_worse_than_majority_vote"], chk
    assert w.choice_ == "majority_vote" == chk["choice"], g
    assert acc["label_model"] < acc["majority_vote"] - 0.2, acc
    assert float(y[np.arange(d.num_problems), w.select(d)].mean()) == acc["majority_vote"]


def test_guard_gives_a_simple_fallback_way_to_the_mean_verifier_only_where_every_evaluator_ranks_it_higher(
        monkeypatch):
    # session 34, the decision rule alone on crafted per-problem estimates (both evaluators): the label model's fate
    # is decided as before; a majority-vote or pooled-mean choice becomes the mean verifier only where every
    # evaluator that was fitted ranks the mean verifier higher
    from lightning_ws.weaver.select import GUARD_CHECK_EVALUATOR

    d = make_suite_set("rate_0.50", num_problems=40, num_candidates=8, seed=0)
    w = Weaver(seed=0).fit(d, "label_free")
    d = w._aligned(d)  # the verifiers the fit kept (an answer-blind one is left out)
    pooled, pm = w._sources(d)
    P = d.num_problems
    full = lambda v: np.full(P, v)

    def run(main: dict[str, float], check: dict[str, float]) -> dict:
        sols = {False: [{k: full(v) for k, v in main.items()}], True: [{k: full(v) for k, v in check.items()}]}
        monkeypatch.setattr(Weaver, "_guard_estimates",
                            lambda self, ids, pooled, folds, picks, ev: sols[ev == GUARD_CHECK_EVALUATOR])
        return w._run_guard(d, pooled, pm, "label_free", None)

    lm_loses = {"label_model": 0.4, "majority_vote": 0.5, "pooled_mean": 0.45}
    g = run({**lm_loses, "mean_verifier": 0.6}, {})
    assert g["choice"] == "mean_verifier" and g["mean_verifier_replaced"] == "majority_vote", g
    assert run({**lm_loses, "mean_verifier": 0.5}, {})["choice"] == "majority_vote"  # a tie keeps majority vote
    # the label model passes the guard's evaluator but not the check: majority vote, then the mean verifier only
    # where both evaluators rank it higher
    main = {"label_model": 0.7, "majority_vote": 0.5, "pooled_mean": 0.45}
    check = {"label_model": 0.5, "majority_vote": 0.55, "pooled_mean": 0.45}
    assert run({**main, "mean_verifier": 0.6}, {**check, "mean_verifier": 0.6})["choice"] == "mean_verifier"
    assert run({**main, "mean_verifier": 0.6}, {**check, "mean_verifier": 0.5})["choice"] == "majority_vote"
    assert run({**main, "mean_verifier": 0.4}, {**check, "mean_verifier": 0.6})["choice"] == "majority_vote"
    # a label model kept by both evaluators is never displaced by the mean verifier
    g = run({**main, "mean_verifier": 0.69}, {**check, "label_model": 0.9, "mean_verifier": 0.8})
    assert g["choice"] == "label_model" and g["mean_verifier_replaced"] is None, g


def test_weaver_default_persistence_modes_and_errors(tmp_path):
    d = make_suite_set("judges_and_rms", num_problems=40, num_candidates=8, seed=0)
    w = Weaver().fit(d, "label_free")
    w.save(tmp_path / "w")
    w2 = Weaver.load(tmp_path / "w")
    np.testing.assert_array_equal(w2.select(d), w.select(d))
    np.testing.assert_allclose(w2.score(d), w.score(d))
    assert w2.report_["guard"]["choice"] == w.choice_ and w2.guard_check
    Weaver(guard_check=False).fit(d, "label_free").save(tmp_path / "nc")
    assert not Weaver.load(tmp_path / "nc").guard_check
    wf = Weaver().fit(d, "few_labels", dev_fraction=0.25)
    assert wf.report_["n_dev_problems"] == 10 and wf.report_["mode"] == "few_labels"
    with pytest.raises(DataError, match="answer_level"):
        Weaver("moment_matching").fit(make_suite_set("judge_draws", num_problems=64, num_candidates=16), "label_free")
    with pytest.raises(DataError, match="verifiers"):
        w.score(d.select_verifiers(d.verifier_names[:-1]))
    with pytest.raises(ConfigError, match="guard_z"):
        Weaver(guard_z=-1.0)
    with pytest.raises(ConfigError, match="selector"):
        w.select_with(d, "oracle")


def test_suite_registry_covers_the_issue():
    rates = sorted(s.correct_rate for s in SUITE.values())
    assert rates[0] <= 0.05 and rates[-1] >= 0.95
    assert any("correlated" in s.tags for s in SUITE.values())
    assert any(g.copies >= 32 and g.kind.startswith("judge") and s.missing > 0 for s in SUITE.values()
               for g in s.groups)


def test_weaver_core_imports_neither_lightning_nor_torchmetrics():
    import subprocess
    import sys

    code = ("import sys, lightning_ws.weaver, lightning_ws.weaver.report, lightning_ws.weaver.distill, "
            "lightning_ws.weaver.cli, lightning_ws.weaver.scoring, lightning_ws.weaver.suite; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'torchmetrics')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    # the distillation metric lives with the other Weaver metrics
    from lightning_ws.metrics.weaver import FlatSelectionAccuracy
    from lightning_ws.modules import weaver as modules_weaver

    assert modules_weaver.FlatSelectionAccuracy is FlatSelectionAccuracy
    assert FlatSelectionAccuracy.__module__ == "lightning_ws.metrics.weaver"


def test_icc_dependence_option_estimates_within_answer_correlation_and_roundtrips():
    d = make_suite_set("judge_draws", num_problems=48, num_candidates=32, seed=2)
    s = ScoreNormalizer().fit_transform(d.scores).mean(axis=2, keepdims=True)
    m = AnswerLevelModel(dependence="icc").fit(d.answer_ids(), s)
    rho = m.report_["within_answer_correlation"]
    assert len(rho) == 1 and 0.0 < rho[0] < 1.0  # the suite's judges share an answer-level error component
    p = m.predict_proba(d.answer_ids(), s)
    np.testing.assert_allclose(AnswerLevelModel.from_state_dict(m.state_dict()).predict_proba(d.answer_ids(), s), p)
    assert AnswerLevelModel().dependence == "icc"  # the default since session 19
    fixed = AnswerLevelModel(dependence="exponent").fit(d.answer_ids(), s)
    assert fixed.report_["within_answer_correlation"] is None
    # a model saved before the key existed loads with the specification it was fitted with (then the default)
    state = fixed.state_dict()
    del state["config"]["dependence"]
    old = AnswerLevelModel.from_state_dict(state)
    assert old.dependence == "exponent"
    np.testing.assert_allclose(old.predict_proba(d.answer_ids(), s), fixed.predict_proba(d.answer_ids(), s))
    with pytest.raises(ConfigError, match="dependence"):
        AnswerLevelModel(dependence="full")


def _partition_counts(rng, P, N, a, b, num_wrong, conc):
    """Answer codes (0 = correct) of P problems x N candidates: correct rate ~ Beta(a, b), wrong answers from a
    symmetric Dirichlet-multinomial over num_wrong distractors."""
    rate = rng.beta(a, b, size=P)
    y = rng.random((P, N)) < rate[:, None]
    pop = rng.dirichlet(np.full(num_wrong, conc), size=P)
    wrong = np.stack([rng.choice(num_wrong, size=N, p=pop[p]) for p in range(P)])
    return np.where(y, 0, wrong + 1), y


def test_partition_prior_m_step_recovers_the_count_model_from_known_answers():
    from lightning_ws.weaver.answer_model import _fit_partition

    rng = np.random.default_rng(0)
    ids, y = _partition_counts(rng, 3000, 32, 2.0, 3.0, num_wrong=5, conc=1.0)
    ids = ids[y.any(axis=1)]  # the model's "solvable" problems: at least one candidate is correct
    g = AnswerGroups(ids)
    code = np.empty(g.num_groups, dtype=np.int64)
    code[g.group.ravel()] = ids.ravel()  # each answer group's answer code
    a, b, theta, sigma = _fit_partition(g, (code == 0).astype(np.float64), None)
    assert a / (a + b) == pytest.approx(0.4, abs=0.03) and a == pytest.approx(2.0, rel=0.3)
    # a finite Dirichlet-multinomial: sigma = -concentration, theta / -sigma = the number of distractors
    assert sigma == pytest.approx(-1.0, rel=0.3) and theta / -sigma == pytest.approx(5.0, rel=0.2)


def test_partition_prior_is_well_defined_on_degenerate_count_data():
    from lightning_ws.weaver.answer_model import _fit_partition

    rng = np.random.default_rng(1)
    cases = {"one answer per problem": np.zeros((20, 8), dtype=np.int64),
             "all singletons": np.tile(np.arange(8), (20, 1)),
             "one candidate": rng.integers(0, 3, size=(20, 1)),
             "no answers": np.full((20, 6), -1)}
    for name, ids in cases.items():
        g = AnswerGroups(ids)
        for r in (np.full(g.num_groups, 0.5), np.zeros(g.num_groups)):
            params = _fit_partition(g, r, None)
            assert np.isfinite(params).all() and params[0] > 0 and params[1] > 0 and params[2] > 0, (name, params)
        scores = rng.random(ids.shape + (2,))
        m = AnswerLevelModel().fit(ids, scores)
        p = m.predict_proba(ids, scores)
        assert np.isfinite(p).all() and (p >= 0).all() and (p.sum(axis=1) <= ids.shape[1] + 1e-9).all(), name


def test_partition_prior_objectives_give_their_exact_gradient():
    # session 46: the M-step's two L-BFGS-B problems take the analytic gradient (finite differences cost 3 evaluations
    # per step and lost digits where theta is large); checked against central differences, padded problems included
    from lightning_ws.weaver.answer_model import _partition_objectives

    rng = np.random.default_rng(46)
    ids, _ = _partition_counts(rng, 200, 12, 2.0, 3.0, num_wrong=4, conc=1.0)
    ragged = ids.copy()
    ragged[:70, 9:] = -1  # 70 problems with 9 candidates
    present = np.ones(ids.shape, dtype=bool)
    present[:70, 9:] = False
    for g in (AnswerGroups(ids), AnswerGroups(ragged, present)):
        r = rng.random(g.num_groups)
        bb, py, _, span = _partition_objectives(g, r)
        assert span > 0
        checked = 0
        for z in rng.uniform([-3.0, -3.0], [3.0, 3.0], size=(40, 2)):
            for f in (bb, py):
                if f is py and abs(0.95 - np.exp(z[1])) < 1e-3:
                    continue  # sigma = 0: the kink where theta's floor -sigma * span starts
                value, grad = f(z)
                h = 1e-5
                fd = np.array([(f(z + h * e)[0] - f(z - h * e)[0]) / (2 * h) for e in np.eye(2)])
                assert np.isfinite(value) and np.allclose(grad, fd, rtol=1e-4, atol=1e-5 * (1 + abs(value))), (f, z)
                checked += 1
        assert checked >= 79
    assert _partition_objectives(AnswerGroups(ids), np.zeros(AnswerGroups(ids).num_groups)) is None


def test_counts_only_partition_fit_is_reused_for_the_same_answers_only():
    # session 47: the counts-only partition prior reads no score, and a Weaver fit refits it on the same answers several
    # times (offsets, guard evaluators); a repeat is served from a digest-keyed store. It must equal a fresh fit, come
    # back as a copy, and never be served for other answers or other padding
    import lightning_ws.weaver.answer_model as am

    rng = np.random.default_rng(47)
    ids, _ = _partition_counts(rng, 120, 10, 2.0, 3.0, num_wrong=4, conc=1.0)
    ragged = ids.copy()
    ragged[:40, 8:] = -1
    present = np.ones(ids.shape, dtype=bool)
    present[:40, 8:] = False
    inputs = [(ids, None), (ragged, None), (ragged, present), (ids[1:], None)]
    digests = [am._answer_structure_digest(AnswerGroups(*x)) for x in inputs]
    assert len(set(digests)) == 4  # other answers, or the same answers with padding slots, are other keys
    for x, digest in zip(inputs, digests):
        g = AnswerGroups(*x)
        fresh = am._fit_partition_counts_only_uncached(g, 60)
        first = am._fit_partition_counts_only(g)
        np.testing.assert_array_equal(first, fresh)
        first[:] = -1.0  # the caller's copy: the stored result is not touched
        rebuilt = AnswerGroups(*x)  # a new object on the same answers: the same key, the stored result
        assert am._answer_structure_digest(rebuilt) == digest
        served = am._fit_partition_counts_only(rebuilt)
        np.testing.assert_array_equal(served, fresh)
        served[:] = -1.0  # a served result is a copy too
        np.testing.assert_array_equal(am._fit_partition_counts_only(g), fresh)
    assert len(am._COUNTS_ONLY_CACHE) <= am._COUNTS_ONLY_CACHE_SIZE


def _gains_on_shared_error_dev_set(variants: dict[str, dict]) -> tuple[dict[str, list[float]], dict[str, list]]:
    """Label model alone (guard off), per variant of ``label_model_kwargs``: ``selected - max(majority vote, pooled
    mean)`` on the free-form shared-error development set (the generator of dv_free_r45_s05_prob in
    benchmarks/dev_weaver_guard.py, data seeds 7000-7003), and the fitted Weavers."""
    spec = _shared_error_judge(0.5, 0.45, 15, "judge_prob", 0.6, 0.5)
    gain: dict[str, list[float]] = {k: [] for k in variants}
    fits: dict[str, list] = {k: [] for k in variants}
    for seed in range(4):
        d = make_set(spec, seed=7000 + seed)
        y, P = d.correct, d.num_problems
        for name, kw in variants.items():
            w = Weaver(guard=False, label_model_kwargs=kw, seed=seed).fit(d, "label_free")
            ref = max(float(y[np.arange(P), w.select_with(d, s)].mean()) for s in ("majority_vote", "pooled_mean"))
            gain[name].append(float(y[np.arange(P), w.select(d)].mean()) - ref)
            fits[name].append(w)
    return gain, fits


def test_partition_prior_beats_the_conditional_prior_when_a_shared_judge_error_meets_a_strong_majority():
    # free-form answers, 20 distractors, a weak judge whose error is largely shared by an answer's candidates: the
    # conditional prior lets EM trust the judge over agreement; the partition prior is anchored by the counts.
    # Pinned to the fixed size ** 0.5 evidence under which the comparison was made (session 18); the default
    # evidence since session 19: next test.
    gain, fits = _gains_on_shared_error_dev_set({k: {"agreement": k, "dependence": "exponent"}
                                                 for k in ("partition", "learned")})
    for w in fits["partition"]:
        aw = w.report_["answer_model"]["agreement_weights"]
        assert set(aw) == {"correct_rate_beta", "correct_rate_mean", "wrong_answers_pitman_yor"}, aw
    assert np.mean(gain["partition"]) > np.mean(gain["learned"]) + 0.05, gain
    assert np.mean(gain["partition"]) > -0.1, gain


def test_estimated_within_answer_correlation_beats_the_fixed_size_exponent_on_a_shared_judge_error():
    # the same development set: counting an answer's candidates by their estimated effective number (the default)
    # instead of size ** 0.5 stops EM from over-trusting the judge; the label model alone (guard off) moves from
    # about 9 points below max(majority vote, pooled mean) to about that level (seeds 7000-7003: -9.0 -> +0.8)
    gain, _ = _gains_on_shared_error_dev_set({k: {"dependence": k} for k in ("icc", "exponent")})
    assert np.mean(gain["icc"]) > np.mean(gain["exponent"]) + 0.05, gain
    assert np.mean(gain["icc"]) > -0.02, gain


def test_a_verifier_scored_once_gives_no_runtime_warning_and_finite_scores():
    # with the estimated dependence (the default) a source without any score in one guard fold used to give NaN
    # within-answer statistics ("Mean of empty slice", "Degrees of freedom <= 0"); it now carries no evidence there
    import warnings

    from lightning_ws.weaver import VerificationData

    d = make_suite_set("rate_0.20", num_problems=40, num_candidates=6, seed=1)
    s = d.scores.copy()
    s[:, :, 0] = np.nan
    s[0, 0, 0] = 0.3  # scored once
    s[:, :, 1] = 2.0  # constant
    dd = VerificationData(scores=s, answers=d.answers, verifier_names=d.verifier_names,
                          verifier_kinds=d.verifier_kinds, correct=d.correct)
    # drop_flat=False: by default (session 41) the constant column is left out before the fit (the one scored once is
    # not flat: it scores one candidate of its problem)
    assert Weaver().fit(dd, "label_free").report_["flat_verifiers"] == d.verifier_names[1:2]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        w = Weaver(drop_flat=False).fit(dd, "label_free")
        assert np.isfinite(w.score(dd)).all()
    est = w.report_["guard"]["estimated_accuracy"]
    assert all(np.isfinite(v) for v in est.values()), est


def _shared_answer_error(d, w: float, seed: int):
    """``d`` with standardised scores plus one per-(problem, answer) error common to every verifier."""
    from lightning_ws.weaver import VerificationData

    rng = np.random.default_rng(seed)
    s = (d.scores - np.nanmean(d.scores, axis=(0, 1))) / np.nanstd(d.scores, axis=(0, 1))
    ids = d.answer_ids()
    per_answer = rng.standard_normal((ids.shape[0], ids.shape[1] + 1))
    s = s + w * np.take_along_axis(per_answer, np.where(ids >= 0, ids, ids.shape[1]), axis=1)[:, :, None]
    return VerificationData(scores=s, answers=d.answers, verifier_names=d.verifier_names, correct=d.correct)


def test_cross_source_dependence_discounts_an_answer_error_shared_by_every_verifier():
    # Development data (session 23, benchmarks/diag_weaver_shared_errors.py): every verifier drawn alike to some
    # answers, as strongly as they see the label. Counting the sources as independent evidence, EM followed the
    # shared error and the label model fell far below majority vote; the design effect of the cross-source
    # correlation lets the answer counts decide.
    d = _shared_answer_error(make_suite_set("rate_0.50", num_problems=200, num_candidates=32, seed=9300), 1.0, 1)
    y, P = d.correct, d.num_problems
    acc = {}
    for cross in (True, False):  # the count check (session 24) off: this test isolates the design effect
        w = Weaver(label_model_kwargs={"cross_source": cross, "count_check": None}).fit(d)
        acc[cross] = float(y[np.arange(P), w.select_with(d, "label_model")].mean())
        if cross:
            corr = np.asarray(w.report_["answer_model"]["cross_source_correlation"])
            assert corr.shape[0] >= 2 and corr[~np.eye(len(corr), dtype=bool)].mean() > 0.5
            mv = float(y[np.arange(P), w.select_with(d, "majority_vote")].mean())
    assert acc[True] >= mv - 0.005 and acc[True] > acc[False] + 0.1, (acc, mv)
    # without a shared error the sources are about uncorrelated given the class at convergence (early EM steps,
    # whose posterior has not yet found the label, may discount a little): the same picks
    clean = make_suite_set("judges_and_rms", num_problems=200, num_candidates=32, seed=9300)
    on = Weaver().fit(clean)
    off = Weaver(label_model_kwargs={"cross_source": False}).fit(clean)
    corr = on.report_["answer_model"]["cross_source_correlation"]
    assert corr is None or np.asarray(corr)[~np.eye(len(corr), dtype=bool)].mean() < 0.2
    np.testing.assert_array_equal(on.select(clean), off.select(clean))
    # persistence, and models saved before the option load without it
    s = ScoreNormalizer().fit_transform(d.scores)
    m = AnswerLevelModel().fit(d.answer_ids(), s)
    assert m.xdep_ is not None
    p = m.predict_proba(d.answer_ids(), s)
    np.testing.assert_allclose(AnswerLevelModel.from_state_dict(m.state_dict()).predict_proba(d.answer_ids(), s), p)
    state = m.state_dict()
    del state["config"]["cross_source"], state["xdep"]
    old = AnswerLevelModel.from_state_dict(state)
    assert old.cross_source is False and old.xdep_ is None


def _count_log_likelihood_direct(ids: np.ndarray, present: np.ndarray, params) -> float:
    """The partition prior's log P(answer partition | some answer correct), one problem and one answer at a time."""
    from scipy.special import betaln, gammaln, logsumexp

    a, b, theta, sigma = params
    total = 0.0
    for p in range(ids.shape[0]):
        row = ids[p][present[p]]
        n_cand = len(row)
        codes = [x if x >= 0 else 10_000 + i for i, x in enumerate(row)]  # no answer: a singleton
        _, sizes = np.unique(codes, return_counts=True)
        p0 = np.exp(betaln(a, n_cand + b) - betaln(a, b))
        terms = []
        for i, n in enumerate(sizes):
            rest = np.delete(sizes, i)
            log_py = 0.0
            if rest.size:
                log_py = (sum(np.log(theta + j * sigma) for j in range(rest.size)) + gammaln(theta)
                          - gammaln(theta + n_cand - n) + np.sum(gammaln(rest - sigma) - gammaln(1 - sigma)))
            terms.append(betaln(n + a, n_cand - n + b) - betaln(a, b) - np.log1p(-p0) + log_py)
        total += logsumexp(terms)
    return float(total)


def test_count_log_likelihood_matches_a_direct_sum_and_the_counts_only_fit_finds_the_correct_rate():
    from lightning_ws.weaver.answer_model import _count_log_likelihood, _fit_partition_counts_only

    spec = SetSpec(0.5, (GroupSpec(1.0),), num_wrong=20)  # free-form answers, half the candidates correct
    d = make_set(spec, num_problems=300, num_candidates=16, seed=11)
    ids = d.answer_ids()
    ids[0, 3] = -1  # a candidate without an answer
    present = np.ones(ids.shape, dtype=bool)
    present[1, 10:] = False  # a problem with fewer candidates (padded)
    ids[1, 10:] = -1
    g = AnswerGroups(ids, present)
    # sigma < 0 (a finite Dirichlet): theta >= -sigma x (answers - 1)
    for params in ([1.0, 1.0, 2.0, 0.0], [0.3, 2.0, 5.0, 0.4], [2.0, 1.5, 30.0, -1.5]):
        assert _count_log_likelihood(g, np.array(params)) == pytest.approx(
            _count_log_likelihood_direct(ids, present, params), rel=1e-9)
    fit = _fit_partition_counts_only(g)
    solvable = d.correct.any(axis=1)
    true_rate = float(d.correct[solvable].mean())
    assert abs(fit[0] / (fit[0] + fit[1]) - true_rate) < 0.1, (fit, true_rate)
    assert _count_log_likelihood(g, fit) > _count_log_likelihood(g, np.array([0.01, 1.0, 2.0, 0.0]))


def test_count_check_holds_the_count_model_a_shared_verifier_error_dragged_off_the_counts():
    # Development data (session 24): four nearly useless reward models that share a per-answer error as large as
    # their signal pool into one source. EM takes the shared error for the label, makes the highest-scored answer of
    # each problem the correct one and fits a count model whose correct answer is almost never popular (Beta a at
    # its bound) - one the answer counts reject by 13 nats. The check reruns EM with the counts-only fit.
    d = _shared_answer_error(make_suite_set("weak_verifiers", num_problems=150, num_candidates=32, seed=9401), 1.0, 1)
    y, P = d.correct, d.num_problems
    fits = {cc: Weaver(guard=False, label_model_kwargs={"count_check": cc}).fit(d) for cc in (6.64, None)}
    acc = {cc: float(y[np.arange(P), w.select_with(d, "label_model")].mean()) for cc, w in fits.items()}
    mv = float(y[np.arange(P), fits[None].select_with(d, "majority_vote")].mean())
    rep_on, rep_off = (fits[cc].report_["answer_model"] for cc in (6.64, None))
    assert rep_on["count_check"]["held_at_counts_only_fit"] and rep_on["count_check"]["gap_nats"] > 6.64
    assert rep_on["count_check"]["correct_rate_em"] < 0.5 * rep_on["count_check"]["correct_rate_counts_only"]
    assert rep_off["count_check"] is None
    a_on, a_off = (r["agreement_weights"]["correct_rate_beta"][0] for r in (rep_on, rep_off))
    assert a_off < 0.05 < a_on, (a_on, a_off)
    assert acc[6.64] >= mv - 0.03 and acc[6.64] > acc[None] + 0.05, (acc, mv)


def test_count_check_leaves_fits_the_counts_support_alone():
    for name, size in (("rate_0.20", 200), ("judge_draws", 64), ("judges_and_rms", 200)):
        d = make_suite_set(name, num_problems=size, num_candidates=32, seed=9400)
        on = Weaver(guard=False).fit(d)
        off = Weaver(guard=False, label_model_kwargs={"count_check": None}).fit(d)
        check = on.report_["answer_model"]["count_check"]
        assert not check["held_at_counts_only_fit"], (name, check)
        np.testing.assert_array_equal(on.select(d), off.select(d))
    # a hard set fits the same degenerate bound legitimately, and there the counts do not reject it
    d = make_suite_set("rate_0.05", num_problems=200, num_candidates=32, seed=9400)
    check = Weaver(guard=False).fit(d).report_["answer_model"]["count_check"]
    assert not check["held_at_counts_only_fit"], check
    # labels anchor the fit: no check in few-label or transductive mode
    d = make_suite_set("rate_0.20", num_problems=100, num_candidates=16, seed=9401)
    assert Weaver(guard=False).fit(d, "transductive").report_["answer_model"]["count_check"] is None


def test_count_check_option_is_validated_and_persisted():
    with pytest.raises(ConfigError, match="count_check"):
        AnswerLevelModel(count_check=-1.0)
    d = make_suite_set("rate_0.20", num_problems=60, num_candidates=16, seed=3)
    s = ScoreNormalizer().fit_transform(d.scores)
    m = AnswerLevelModel(count_check=3.0).fit(d.answer_ids(), s)
    assert AnswerLevelModel.from_state_dict(m.state_dict()).count_check == 3.0
    state = m.state_dict()
    del state["config"]["count_check"]
    assert AnswerLevelModel.from_state_dict(state).count_check is None  # saved before the option: its old behaviour



def test_rho_check_stops_the_within_answer_correlation_collapsing_to_zero():
    # Development data (session 26): one weak judge's 32 draws, 64 problems x 16 candidates. EM's posterior sorts the
    # answers by the judge's own scores, the residual variance given the class shrinks and the within-answer
    # correlation comes out (near) 0: every candidate of an answer counts as independent evidence, the judge is
    # over-trusted and the label model falls below majority vote and the mean judge. The check floors rho at the
    # estimate under the counts-only posterior (no score in it). Two seeds: 9601 shows the loss the check prevents;
    # on 9600 the fit with the check ties with the baseline and the collapsed fit without it is one problem (of 64)
    # above it since session 46 (exact M-step gradients; before, since session 38, both tied): the check is asked to
    # keep the label model at or above the baseline on both, not to win every problem.
    at_or_above, below = [], []
    for seed in (9600, 9601):
        d = make_suite_set("judge_vs_majority", num_problems=64, num_candidates=16, seed=seed)
        y, P = d.correct, d.num_problems
        fits = {rc: Weaver(guard=False, label_model_kwargs={"rho_check": rc}).fit(d) for rc in (0.5, None)}
        acc = {rc: float(y[np.arange(P), w.select_with(d, "label_model")].mean()) for rc, w in fits.items()}
        base = max(float(y[np.arange(P), fits[None].select_with(d, k)].mean()) for k in ("pooled_mean",
                                                                                          "majority_vote"))
        on, off = (fits[rc].report_["answer_model"] for rc in (0.5, None))
        rho_counts = on["rho_check"]["rho_counts_only"][0]
        assert off["rho_check"] is None and off["within_answer_correlation"][0] < 0.5 * rho_counts, (off, rho_counts)
        assert on["rho_check"]["held_at_counts_only"] == [True]
        assert on["within_answer_correlation"][0] == pytest.approx(rho_counts)
        at_or_above.append(acc[0.5] >= base)
        below.append(acc[None] < base <= acc[0.5])
    assert all(at_or_above) and any(below), (at_or_above, below)


def test_rho_check_leaves_fits_without_a_collapse_alone_and_is_validated_and_persisted():
    for name, size, n in (("rate_0.20", 200, 32), ("judges_and_rms", 200, 32), ("judge_draws", 64, 64)):
        d = make_suite_set(name, num_problems=size, num_candidates=n, seed=9600)
        on = Weaver(guard=False).fit(d)
        off = Weaver(guard=False, label_model_kwargs={"rho_check": None}).fit(d)
        assert not any(on.report_["answer_model"]["rho_check"]["held_at_counts_only"]), name
        np.testing.assert_array_equal(on.select(d), off.select(d))
    d = make_suite_set("rate_0.20", num_problems=100, num_candidates=16, seed=9601)
    assert Weaver(guard=False).fit(d, "transductive").report_["answer_model"]["rho_check"] is None  # labels anchor
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="rho_check"):
            AnswerLevelModel(rho_check=bad)
    s = ScoreNormalizer().fit_transform(d.scores)
    m = AnswerLevelModel(rho_check=0.3).fit(d.answer_ids(), s)
    assert AnswerLevelModel.from_state_dict(m.state_dict()).rho_check == 0.3
    state = m.state_dict()
    del state["config"]["rho_check"]
    assert AnswerLevelModel.from_state_dict(state).rho_check is None  # saved before the option

def _without_answers(d, share: float, seed: int, *, top_scores: bool = True):
    """``d`` with the extracted answer of a random ``share`` of candidates removed (a grader scores them wrong); with
    ``top_scores`` their verifier scores are set to each verifier's highest, as a judge may rate a truncated response."""
    drop = np.random.default_rng(seed).random(d.correct.shape) < share
    answers = [[None if drop[p, n] else a for n, a in enumerate(row)] for p, row in enumerate(d.answers)]
    scores = np.where(drop[:, :, None], np.nanmax(d.scores, axis=(0, 1)), d.scores) if top_scores else d.scores
    return VerificationData(scores, answers, d.verifier_names, d.verifier_kinds, d.correct & ~drop), drop


def test_unanswered_candidates_are_never_selected_by_default_but_were_with_keep(tmp_path):
    d, drop = _without_answers(make_suite_set("judge_draws", num_problems=48, num_candidates=16, seed=2), 0.1, 0)
    # one problem without any extracted answer keeps its candidates (data without answer extraction)
    answers = [list(r) for r in d.answers]
    answers[0] = [None] * d.num_candidates
    d = VerificationData(d.scores, answers, d.verifier_names, d.verifier_kinds, d.correct)
    out = drop.copy()
    out[0] = False
    w = Weaver().fit(d, "label_free")
    assert w.report_["unanswered"] == {"policy": "exclude", "excluded_candidates": int(out.sum()),
                                       "problems": int(out.any(axis=1).sum())}
    P = d.num_problems
    for selector in ("label_model", "pooled_mean", "majority_vote"):
        assert not out[np.arange(P), w.select_with(d, selector)].any(), selector
    s = w.score(d)
    assert (s[out] == 0.0).all() and (s[0] > 0.0).any()
    keep = Weaver(unanswered="keep").fit(d, "label_free")
    assert keep.report_["unanswered"]["excluded_candidates"] == 0
    picked = keep.select(d)
    # top-scored unanswered candidates win the pooled mean when they count (the 2-fold guard chose that selector
    # here; the 8-fold guard of session 27 falls back to majority vote, still below the default's picks)
    assert out[np.arange(P), keep.select_with(d, "pooled_mean")].sum() >= 5
    y = d.correct
    assert y[np.arange(P), w.select(d)].mean() > y[np.arange(P), picked].mean() + 0.1
    # binary path: an excluded candidate scores 0 as a padding slot does
    wb = Weaver("moment_matching", guard=False, problem_offsets=False, group_verifiers=False).fit(d, "label_free")
    assert (wb.score(d)[out] == 0.0).all()
    # persisted; models saved before the option load its old behaviour
    w.save(tmp_path / "w")
    w2 = Weaver.load(tmp_path / "w")
    assert w2.unanswered == "exclude"
    np.testing.assert_array_equal(w2.select(d), w.select(d))
    state = json.loads((tmp_path / "w" / "weaver.json").read_text())
    del state["unanswered"]
    (tmp_path / "w" / "weaver.json").write_text(json.dumps(state))
    assert Weaver.load(tmp_path / "w").unanswered == "keep"
    with pytest.raises(ConfigError, match="unanswered"):
        Weaver(unanswered="drop")
    # labels that score an unanswered candidate correct contradict the default: said where labels are read
    labelled = VerificationData(d.scores, d.answers, d.verifier_names, d.verifier_kinds, d.correct | out)
    with pytest.warns(UserWarning, match="unanswered='keep'"):
        Weaver(guard=False).fit(labelled, "transductive")


def test_guard_fold_count_grows_when_problems_are_few_and_partitions_the_problems(monkeypatch):
    import lightning_ws.weaver.select as select_mod
    from lightning_ws.weaver.select import guard_fold_count

    assert [guard_fold_count(p) for p in (8, 64, 100, 128, 170, 171, 500, 100_000)] == [8, 8, 5, 4, 3, 2, 2, 2]
    # judge_draws_prob seed 10 (64 problems): the 2-fold guard of sessions before 27 fell back to majority vote there,
    # 10.9 points below the mean judge; with 8 folds the evaluator is fitted on 56 problems and keeps the label model
    d = make_suite_set("judge_draws_prob", seed=10)
    y, P = d.correct, d.num_problems
    rep = suite_report(d, seed=10)
    g = rep["weaver"]["guard"]
    assert g["fold_sizes"] == [8] * 8 and g["criterion"].startswith("8-fold"), g["fold_sizes"]
    assert g["choice"] == "label_model"
    assert rep["select_at_1"]["weaver"] > _baselines(rep) + 0.05, rep["select_at_1"]
    monkeypatch.setattr(select_mod, "guard_fold_count", lambda num_problems: 2)
    w2 = Weaver(seed=10).fit(d, "label_free")
    assert w2.report_["guard"]["fold_sizes"] == [32, 32] and w2.choice_ == "majority_vote"
    assert float(y[np.arange(P), w2.select(d)].mean()) < _baselines(rep) - 0.05
    # from 171 problems on the guard keeps its two halves
    big = make_suite_set("rate_0.20", num_problems=200, num_candidates=8, seed=0)
    assert Weaver(seed=0).fit(big, "label_free").report_["guard"]["fold_sizes"] == [100, 100]


def _own_answers(d: VerificationData) -> VerificationData:
    """``d`` with every candidate its own answer (no agreement signal), as ``diag_weaver_no_agreement.py`` draws it."""
    return VerificationData(d.scores, [[f"c{i}" for i in range(d.num_candidates)] for _ in range(d.num_problems)],
                            d.verifier_names, d.verifier_kinds, correct=d.correct)


def _assert_split_test_falls_back(d: VerificationData, half: int) -> None:
    """Without the split test the guard keeps a label model more than 1.5 points below max(MV, mean verifier) on
    ``d``; with it (the default) the test runs on two halves of ``half`` problems, fails, and Weaver is no worse than
    the simple baselines."""
    from lightning_ws.weaver.report import suite_baselines

    rows = np.arange(d.num_problems)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        off = Weaver(seed=0, guard_split=False).fit(d, "label_free")
        w = Weaver(seed=0).fit(d, "label_free")
    base = suite_baselines(d)[0]
    floor = max(base["majority_vote"], base["mean_verifier"])
    assert off.choice_ == "label_model"
    assert off.report_["guard"]["split_check"] == {"applied": False, "reason": "guard_split=False"}
    assert float(d.correct[rows, off.select(d)].mean()) < floor - 0.015  # the failure the test removes
    split = w.report_["guard"]["split_check"]
    assert split["applied"] and not split["passed"] and split["half_sizes"] == [half, half], split
    assert split["gain_vs_mean_verifier"] <= w.guard_z * split["standard_error"]
    assert w.choice_ != "label_model"
    assert float(d.correct[rows, w.select(d)].mean()) >= floor - 0.005


def test_guard_split_test_drops_a_label_model_that_wins_only_through_noisy_weights_without_answer_agreement():
    """Four nearly useless independent verifiers, every candidate its own answer (``weak_verifiers`` of
    ``diag_weaver_no_agreement.py``, data seeds 100 and 102): the label model learns its weights from the scores
    alone, the guard's evaluators share that noise and keep it, 2.0-3.3 points below the mean verifier
    (``guard_split=False``). Refitted on one half of the problems it no longer beats the mean verifier on the other
    half, so the split test sends the guard to its fallback, which here picks as the mean verifier does."""
    for seed in (100, 102):
        _assert_split_test_falls_back(
            _own_answers(make_suite_set("weak_verifiers", num_problems=300, num_candidates=16, seed=seed)), 150)


def test_guard_split_runs_only_where_no_answer_is_shared_unless_asked_and_is_saved(tmp_path):
    """``guard_split="auto"`` runs the split test only where no two candidates of a problem share an answer; ``True``
    runs it on any label-free fit of at least 32 problems (with agreement and 64 problems its half refits rarely pass:
    one reason ``"auto"`` leaves such fits alone); the setting is validated and saved."""
    shared = make_suite_set("rate_0.20", num_problems=64, num_candidates=8, seed=300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auto = Weaver(seed=0).fit(shared, "label_free")
        forced = Weaver(seed=0, guard_split=True, guard_check=False).fit(shared, "label_free")
        small = Weaver(seed=0).fit(_own_answers(shared.subset(np.arange(20))), "label_free")
    assert auto.choice_ == "label_model"
    assert "share an answer" in auto.report_["guard"]["split_check"]["reason"]
    split = forced.report_["guard"]["split_check"]  # 32-problem halves: the refits are too noisy to pass here
    assert split["applied"] and split["half_sizes"] == [32, 32] and not split["passed"], split
    assert forced.choice_ != "label_model"
    assert small.choice_ == "label_model"  # too few problems for the guard's split test: not run
    assert small.report_["guard"]["split_check"] == {"applied": False,
                                                     "reason": "20 problems: the split test needs at least 32"}
    with pytest.raises(ConfigError, match="guard_split"):
        Weaver(guard_split="sometimes")
    assert Weaver.load(forced.save(tmp_path / "w")).guard_split is True
    assert Weaver.load(auto.save(tmp_path / "a")).guard_split == "auto"


def test_split_test_on_real_llmbar_mt_bench_pairs_falls_back_from_a_noisy_label_model():
    """Real judge data: LLMBar's 200 MT-Bench pairs (expert-checked gold) as 2-candidate problems, the 20 PAJAMA
    judge programs and the response length as verifiers (``benchmarks/bench_weaver_preferences.py``). Without the
    split test (session 34) the guard kept a label model 2.00 points below the mean verifier; refitted on half the
    pairs it does not beat the mean verifier on the other half, and Weaver is no worse than the simple baselines."""
    from lightning_ws.pajama import load_preferences

    pr = load_preferences("llmbar")
    pr = pr.take(np.flatnonzero((pr.y >= 0) & (np.asarray(pr.subsets) == "Processed/MT-Bench")))
    assert len(pr) == 200
    _assert_split_test_falls_back(_pairs_with_programs(pr), 100)


def test_guard_split_takes_the_fallback_when_the_half_refit_fails(monkeypatch):
    """A label model that cannot be refitted on half of the problems (here a refit that raises, as a binary label
    model does with too few sources on a half) fails the split test with the error in the report, and the fit goes on
    with the guard's fallback instead of raising."""
    d = _own_answers(make_suite_set("rate_0.20", num_problems=200, num_candidates=8, seed=301))

    class Broken(Weaver):
        def fit(self, data, mode="label_free", **kw):
            raise ConfigError("binary label models need 3 sources after pooling")

    monkeypatch.setattr(Weaver, "_clone", lambda self: Broken(seed=self.seed, guard=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kept = Weaver(seed=0, guard_split=True, guard_z=0.0, guard_check=False).fit(d, "label_free")
    split = kept.report_["guard"]["split_check"]
    assert split is not None, kept.report_["guard"]  # the guard kept the label model, so the test ran
    assert split["applied"] and not split["passed"] and "could not be refitted" in split["error"]
    assert kept.choice_ != "label_model"
