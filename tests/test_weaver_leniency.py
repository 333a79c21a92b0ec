"""Per-problem verifier leniency (issue 17, session 21): the offset estimate, Weaver(problem_offsets=True), the
generator's ``leniency`` and the report's diagnostic."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

from lightning_ws.errors import ConfigError, DataError
from lightning_ws.weaver import Weaver
from lightning_ws.weaver.guard import answer_share
from lightning_ws.weaver.leniency import ProblemOffsets, estimate_problem_offsets
from lightning_ws.weaver.report import suite_report
from lightning_ws.weaver.suite import SUITE, GroupSpec, make_set


def _planted(P: int = 200, N: int = 16, shift_sd: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 4, size=(P, N))
    correct = (ids == 0).astype(float)
    answer_err = rng.standard_normal((P, 4))[np.arange(P)[:, None], ids] * 0.3
    shift = shift_sd * rng.standard_normal(P)
    z = 1.5 * correct + answer_err + rng.standard_normal((P, N)) + shift[:, None]
    return z, correct, ids, shift



def test_offsets_do_not_depend_on_how_answers_are_coded():
    """Dense codes (0..3, a presence table) and sparse ones (the same answers as codes near 1e9, the sort path) and
    a missing score give the same clusters and so exactly the same offsets."""
    from lightning_ws.weaver.leniency import _dense_rank

    z, r, ids, _ = _planted(P=60, N=8, seed=4)
    z[0, 0] = np.nan
    ids = ids.copy()
    ids[1, :3] = -1  # candidates without an answer: clusters of their own
    sparse = np.where(ids >= 0, ids * 250_000_000 + 7, -1)
    o1, st1 = estimate_problem_offsets(z, r, ids)
    o2, st2 = estimate_problem_offsets(z, r, sparse)
    np.testing.assert_array_equal(o1, o2)
    assert st1 == st2 and st1["tau2"] > 0
    for v in (np.array([5, 0, 5, 3, 3, 9]), np.array([10 ** 12, 4, 10 ** 12]), np.zeros(0, dtype=np.int64)):
        np.testing.assert_array_equal(_dense_rank(v), np.unique(v, return_inverse=True)[1].ravel())

def test_offsets_recover_a_planted_problem_shift_and_leave_a_set_without_one_alone():
    z, r, ids, shift = _planted()
    o, st = estimate_problem_offsets(z, r, ids)
    assert np.corrcoef(o, shift)[0, 1] > 0.9
    assert 0.6 < st["tau2"] < 1.5  # the planted shift has variance 1
    z0, r0, ids0, _ = _planted(shift_sd=0.0, seed=1)
    o0, st0 = estimate_problem_offsets(z0, r0, ids0)
    assert st0["tau2"] < 0.05
    assert np.abs(o0).max() < 0.1
    with pytest.raises(DataError, match="share one"):
        estimate_problem_offsets(z, r[:, :3], ids)


def test_offsets_handle_missing_scores_and_unanswered_candidates():
    z, r, ids, _ = _planted(P=50, seed=2)
    z[0] = np.nan
    z[1, :5] = np.nan
    ids[2, :3] = -1
    o, st = estimate_problem_offsets(z, r, ids)
    assert o[0] == 0.0 and np.isfinite(o).all() and st["tau2"] >= 0.0


def test_normal_scale_is_monotone_and_round_trips_through_state():
    x = np.random.default_rng(0).random((10, 8, 2))
    x[0, 0, 0] = np.nan
    po = ProblemOffsets().fit(x)
    z = po.normal_scale(x)
    a, b = x[:, :, 1].ravel(), z[:, :, 1].ravel()
    order = np.argsort(a)
    assert np.all(np.diff(b[order]) >= -1e-12) and np.isnan(z[0, 0, 0])
    po2 = ProblemOffsets.from_state_dict(po.state_dict())
    assert np.allclose(po2.normal_scale(x), z, equal_nan=True)
    with pytest.raises(ConfigError, match="not fitted"):
        ProblemOffsets().normal_scale(x)
    with pytest.raises(ConfigError, match="iterations"):
        ProblemOffsets(iterations=0)


def test_generator_leniency_shifts_whole_problems_and_is_validated():
    spec = SUITE["judge_draws_prob"]
    lenient = dataclasses.replace(spec, groups=(dataclasses.replace(spec.groups[0], leniency=1.5),))
    plain_d, lenient_d = (make_set(s, num_problems=64, num_candidates=32, seed=3) for s in (spec, lenient))
    per_problem = [np.nanmean(d.scores, axis=(1, 2)).std() for d in (plain_d, lenient_d)]
    assert per_problem[1] > 1.5 * per_problem[0]
    with pytest.raises(ConfigError, match="leniency"):
        GroupSpec(1.0, leniency=-0.1)


def _lenient_judge_set(seed: int):
    spec = SUITE["judge_vs_majority"]
    return make_set(dataclasses.replace(spec, groups=(dataclasses.replace(spec.groups[0], leniency=1.0),)),
                    seed=seed)


def test_problem_offsets_rescue_weaver_from_a_judge_lenient_on_some_problems():
    """Without offsets the label model reads the judge as weak and follows the answer counts; with them it is back
    above both baselines (development seeds of the suite's judge_vs_majority with leniency 1)."""
    gains_off, gains_on = [], []
    for seed in (0, 1):
        data = _lenient_judge_set(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r_off = suite_report(data, seed=seed, weaver_kwargs={"problem_offsets": False})
            r_on = suite_report(data, seed=seed)
        sa = r_off["select_at_1"]
        best = max(sa["majority_vote"], sa["mean_verifier"])
        gains_off.append(sa["weaver"] - best)
        gains_on.append(r_on["select_at_1"]["weaver"] - best)
        diag = r_off["weaver"]["problem_offsets"]
        assert diag["enabled"] is False and max(v["tau2"] for v in diag["per_source"].values()) > 0.1
        assert r_on["weaver"]["problem_offsets"]["enabled"] is True
    assert np.mean(gains_on) > 0.02
    assert np.mean(gains_on) > np.mean(gains_off) + 0.02


def test_problem_offsets_persist_and_need_the_answer_level_model(tmp_path):
    data = _lenient_judge_set(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = Weaver(guard=False, seed=0).fit(data, "label_free")
        w.save(tmp_path / "w")
        w2 = Weaver.load(tmp_path / "w")
    assert w2.problem_offsets and w2.offsets_ is not None
    assert np.allclose(w.score(data), w2.score(data))
    assert np.array_equal(w.select(data), w2.select(data))
    with pytest.raises(ConfigError, match="answer-level"):
        Weaver("moment_matching", problem_offsets=True)


def test_problem_offsets_default_is_auto_and_validated():
    assert Weaver().problem_offsets is True
    assert Weaver("moment_matching").problem_offsets is False
    assert Weaver(problem_offsets=False).problem_offsets is False
    with pytest.raises(ConfigError, match="problem_offsets"):
        Weaver(problem_offsets="yes")


def test_offsets_are_zero_where_a_problem_shift_is_not_identified():
    rng = np.random.default_rng(4)
    z, r = rng.standard_normal((20, 1)), rng.random((20, 1))
    o, st = estimate_problem_offsets(z, r, np.zeros((20, 1), dtype=int))  # one candidate per problem
    assert np.all(o == 0.0) and st["tau2"] == 0.0
    z2, r2, ids2, _ = _planted(P=40, seed=5)
    z2[:5, 1:] = np.nan  # five problems with a single scored candidate
    o2, _ = estimate_problem_offsets(z2, r2, ids2)
    assert np.all(o2[:5] == 0.0) and np.any(o2[5:] != 0.0)


def test_score_reuses_the_fit_data_offsets_and_recomputes_for_changed_data():
    data = _lenient_judge_set(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = Weaver(guard=False, seed=0).fit(data, "label_free")
    first = w.score(data)
    first[:] = -1.0  # the caller's copy: writing to it must not reach the next call
    again = w.score(data)
    assert again.min() >= 0.0
    fresh = w.offsets_.transform(w._sources(data)[0], data.answer_ids(), w.label_model_)[0]
    assert np.array_equal(again, w.label_model_.predict_proba(data.answer_ids(), fresh))
    changed = dataclasses.replace(data, scores=data.scores[::-1].copy(), answers=data.answers[::-1],
                                  correct=data.correct[::-1])
    assert np.allclose(w.score(changed), again[::-1])  # problems in another order: the same per-problem offsets
    shifted = dataclasses.replace(data, scores=np.where(np.isnan(data.scores), np.nan, data.scores * 0.5))
    assert not np.array_equal(w.score(shifted), again)


def test_padding_slots_change_no_score_and_are_never_selected():
    """Problems with fewer candidates arrive padded to one N (no answer, no score): the padded fit gives the real
    candidates the scores of the fit without the slots, and a slot is never picked."""
    data = make_set(SUITE["judge_draws"], num_problems=120, seed=3)
    P, N, _ = data.scores.shape
    k = N * 3 // 4
    short = dataclasses.replace(data, scores=data.scores[:, :k].copy(), answers=[r[:k] for r in data.answers],
                                correct=data.correct[:, :k].copy())
    scores = np.full_like(data.scores, np.nan)
    scores[:, :k] = data.scores[:, :k]
    padded = dataclasses.replace(data, scores=scores, answers=[r[:k] + [None] * (N - k) for r in data.answers],
                                 correct=np.where(np.arange(N) < k, data.correct, False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ws, wp = Weaver(seed=0).fit(short), Weaver(seed=0).fit(padded)
    sp = wp.score(padded)
    assert np.abs(ws.score(short) - sp[:, :k]).max() < 1e-4 and np.nanmax(sp[:, k:]) == 0.0
    assert np.array_equal(ws.select(short), wp.select(padded))
    assert not padded.present()[:, k:].any() and padded.present()[:, :k].all()
    assert np.array_equal(answer_share(padded.answer_ids(), padded.present())[:, :k], answer_share(short.answer_ids()))
    # ragged: every problem keeps a different number of its candidates; no slot is picked and the model does
    # not read the slots as wrong answers (the fit before session 22 fell below the mean judge here)
    keep = np.random.default_rng(0).integers(N // 4, N + 1, size=P)
    slot = np.arange(N)[None, :] >= keep[:, None]
    ragged = data.pad_slots(slot)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = suite_report(ragged, seed=0)
        picks = Weaver(seed=0).fit(ragged).select(ragged)
    assert not slot[np.arange(P), picks].any()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wb = Weaver("moment_matching", group_verifiers=False, guard=False, seed=0).fit(ragged)
    assert (wb.score(ragged)[slot] == 0.0).all() and not slot[np.arange(P), wb.select(ragged)].any()
    sa = rep["select_at_1"]
    assert sa["weaver"] > max(sa["majority_vote"], sa["mean_verifier"])
