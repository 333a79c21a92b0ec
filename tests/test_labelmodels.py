"""Tests of the Lightning-free label models (lightning_ws.labelmodels)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from lightning_ws.data import load_wrench
from lightning_ws.errors import ConfigError, DataError, DataFileNotFoundError
from lightning_ws.labelmodels import (
    LABEL_MODEL_NAMES,
    DawidSkene,
    LabelModel,
    LFAnalysis,
    MajorityVote,
    MomentMatching,
    Triplet,
    WeightedMajorityVote,
    covered_mask,
    make_label_model,
    make_regime_label_matrix,
    make_synthetic_label_matrix,
    moment_matching_objective,
    off_diagonal_block_mask,
    probs_to_preds,
    validate_label_matrix,
)
from lightning_ws.labelmodels.cli import main as cli_main
from lightning_ws.labelmodels.matrix import overlap_matrix

ACC = np.array([0.62, 0.68, 0.72, 0.78, 0.83, 0.88, 0.92, 0.65])
COV = np.array([0.9, 0.5, 0.7, 0.35, 0.6, 0.8, 0.4, 0.55])


@pytest.fixture(scope="module")
def binary_data():
    """Imbalanced binary data (70/30) with abstains and known LF accuracies."""
    return make_synthetic_label_matrix(40_000, ACC, COV, [0.7, 0.3], seed=11)


@pytest.fixture(scope="module")
def ternary_data():
    return make_synthetic_label_matrix(40_000, ACC, COV, [0.5, 0.3, 0.2], seed=12)


# ---------------------------------------------------------------------------------------------- recovery


@pytest.mark.parametrize("name", ["dawid_skene", "moment_matching", "triplet", "weighted_majority_vote"])
def test_recovers_lf_accuracies_and_beats_mv_binary(binary_data, name):
    d = binary_data
    lm = make_label_model(name, seed=0).fit(d.L)
    mae = np.abs(lm.lf_accuracies - d.accuracies).mean()
    assert mae < 0.02, (name, lm.lf_accuracies, mae)
    assert lm.class_balance_source == "estimated"
    np.testing.assert_allclose(lm.class_balance_, d.class_balance, atol=0.02)
    acc = (lm.predict(d.L) == d.y).mean()
    mv_acc = (MajorityVote().fit(d.L).predict(d.L) == d.y).mean()
    assert acc > mv_acc + 0.01, (acc, mv_acc)


@pytest.mark.parametrize("name", ["dawid_skene", "moment_matching"])
def test_recovers_confusions_multiclass(ternary_data, name):
    d = ternary_data
    lm = make_label_model(name, num_classes=3).fit(d.L)
    assert np.abs(lm.lf_accuracies - d.accuracies).mean() < 0.02
    conf = lm.lf_confusions
    assert conf.shape == (8, 3, 4)
    np.testing.assert_allclose(conf.sum(axis=2), 1.0, atol=1e-6)
    # abstain probability (column 0) equals 1 - coverage for every class
    np.testing.assert_allclose(conf[:, :, 0], (1 - d.coverage)[:, None].repeat(3, 1), atol=0.03)


def test_triplet_multiclass_is_normalised_not_softmaxed(ternary_data):
    d = ternary_data
    lm = Triplet(num_classes=3).fit(d.L, d.class_balance)
    proba = lm.predict_proba(d.L[:500])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    # recompute: per-class one-vs-rest sigmoids divided by their sum
    acc = lm.accuracies_
    L = d.L[:500].astype(np.int64)
    p = lm.class_balance_
    per = np.empty((500, 3))
    for c in range(3):
        v = np.where(L == c, 1.0, np.where(L == -1, 0.0, -1.0))
        z = np.log(p[c] / (1 - p[c])) + v @ np.log(acc[c] / (1 - acc[c]))
        per[:, c] = 1 / (1 + np.exp(-z))
    expect = per / per.sum(axis=1, keepdims=True)
    cov = covered_mask(L)
    np.testing.assert_allclose(proba[cov], expect[cov], rtol=1e-10)
    assert (lm.predict(d.L) == d.y).mean() > (MajorityVote().fit(d.L).predict(d.L) == d.y).mean()


def test_moment_matching_reaches_optimum(binary_data):
    d = binary_data
    lm = MomentMatching().fit(d.L, d.class_balance)
    rep = lm.fit_report_
    assert rep["converged"] and rep["proj_grad_norm"] < 1e-6
    # the objective at our solution is no larger than at the true parameters or at snorkel's 0.7-precision start
    m, k = 8, 2
    O = overlap_matrix(d.L, k)
    mask = off_diagonal_block_mask(m, k)
    true_mu = np.zeros((m * k, k))
    for j in range(m):
        for y in range(k):
            true_mu[j * k + y, y] = COV[j] * ACC[j]
            true_mu[j * k + (1 - y), y] = COV[j] * (1 - ACC[j])
    f_true, _ = moment_matching_objective(true_mu, O, d.class_balance, mask)
    assert rep["objective"] <= f_true + 1e-12
    f_ours, grad = moment_matching_objective(lm.mu_, O, d.class_balance, mask)
    assert f_ours == pytest.approx(rep["objective"])
    # numerical gradient check of the closed-form gradient
    rng = np.random.default_rng(0)
    mu = rng.random((m * k, k))
    _, g = moment_matching_objective(mu, O, d.class_balance, mask)
    e = np.zeros_like(mu)
    e[3, 1] = 1e-6
    num = (moment_matching_objective(mu + e, O, d.class_balance, mask)[0]
           - moment_matching_objective(mu - e, O, d.class_balance, mask)[0]) / 2e-6
    assert num == pytest.approx(g[3, 1], rel=1e-5)
    # from snorkel's init the same optimum is reached
    lm2 = MomentMatching(init="precision").fit(d.L, d.class_balance)
    assert lm2.fit_report_["objective"] == pytest.approx(rep["objective"], rel=1e-4, abs=1e-10)


@pytest.mark.slow
def test_moment_matching_beats_snorkel_objective(binary_data):
    """Optional cross-check: snorkel 0.10's SGD stops above our objective (skipped without snorkel)."""
    snorkel_lm = pytest.importorskip("snorkel.labeling.model").LabelModel
    d = binary_data
    L = d.L[:10_000].astype(np.int64)
    sn = snorkel_lm(cardinality=2, verbose=False)
    state = torch.random.get_rng_state()
    try:
        sn.fit(L, class_balance=d.class_balance, n_epochs=100, lr=0.01, seed=0, progress_bar=False)
    finally:
        torch.random.set_rng_state(state)
    ours = MomentMatching().fit(L, d.class_balance)
    O = overlap_matrix(L, 2)
    mask = off_diagonal_block_mask(8, 2)
    f_sn, g_sn = moment_matching_objective(sn.mu.detach().numpy().astype(np.float64), O, d.class_balance, mask)
    assert ours.fit_report_["objective"] < f_sn
    assert ours.fit_report_["proj_grad_norm"] < 1e-3 * np.abs(g_sn).max()


def test_dawid_skene_abstain_ignore_mode(binary_data):
    d = binary_data
    lm = DawidSkene(abstain="ignore").fit(d.L)
    assert np.abs(lm.lf_accuracies - d.accuracies).mean() < 0.02
    np.testing.assert_allclose(lm.lf_confusions[:, 0, 0], 1 - d.coverage, atol=0.01)
    assert lm.fit_report_["converged"]


# ------------------------------------------------------------------------------------ class balance, coverage


def test_a_class_only_dev_y_names_is_not_added_silently():
    # dev_y with a class no LF votes (a typo, or a class the LFs miss) used to give the model an extra class without
    # a word: with a wrong dev_y, moment matching on YouTube fell to 6.8 % test accuracy
    d = make_synthetic_label_matrix(1000, ACC[:4], COV[:4], [0.6, 0.4], seed=3)
    dev_y = np.array([0, 1, 2, 2])
    with pytest.warns(UserWarning, match=r"dev_y holds class\(es\) \[2\] that no labeling function votes.*"
                                         r"pass num_classes=3"):
        lm = DawidSkene().fit(d.L, dev_y=dev_y)
    assert lm.class_balance_.shape == (3,)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # within the votes' classes, or with num_classes given: no such warning
        DawidSkene().fit(d.L, dev_y=np.array([0, 1, 1]))
    with pytest.warns(UserWarning, match="num_classes=3 but no labeling function ever votes class"):
        DawidSkene(num_classes=3).fit(d.L, dev_y=dev_y)  # the num_classes warning, which names the same problem


def test_class_balance_sources():
    d = make_synthetic_label_matrix(3000, ACC[:4], COV[:4], [0.6, 0.4], seed=3)
    assert MajorityVote().fit(d.L, [0.6, 0.4]).class_balance_source == "given"
    assert MajorityVote().fit(d.L, "uniform").class_balance_.tolist() == [0.5, 0.5]
    dev_y = np.array([0, 0, 0, 1])
    lm = DawidSkene().fit(d.L, dev_y=dev_y)
    assert lm.class_balance_source == "dev"
    np.testing.assert_allclose(lm.class_balance_, [4 / 6, 2 / 6])  # add-one smoothing, sums to 1
    with pytest.raises(ConfigError, match="dev_y"):
        DawidSkene().fit(d.L, "dev")
    with pytest.raises(ConfigError, match="sum to 1"):
        DawidSkene().fit(d.L, [0.6, 0.6])
    with pytest.raises(ConfigError, match="2 finite"):
        DawidSkene().fit(d.L, [0.2, 0.3, 0.5])
    with pytest.raises(ConfigError, match="class_balance must"):
        DawidSkene().fit(d.L, "oracle")
    with pytest.raises(ConfigError, match=r"num_classes=2"):  # fit(L, k), the cardinality slip, names the fix
        DawidSkene().fit(d.L, 2)
    with pytest.raises(ConfigError, match=r"num_classes=3"):
        MajorityVote().fit(d.L, np.int64(3))


def test_uncovered_rows_flagged_and_get_prior():
    L = np.array([[0, 0, -1], [1, -1, 1], [-1, -1, -1], [1, 0, -1], [0, 1, 1]])
    lm = DawidSkene().fit(np.tile(L, (50, 1)), [0.7, 0.3])
    proba = lm.predict_proba(L)
    np.testing.assert_allclose(proba[2], [0.7, 0.3])
    assert covered_mask(L).tolist() == [True, True, False, True, True]
    assert lm.predict(L, abstain_uncovered=True)[2] == -1
    assert lm.predict(L)[2] == 0


def test_tie_policies_and_determinism():
    rng = np.random.default_rng(0)
    L = rng.choice([-1, 0, 1], size=(400, 4))
    mv = MajorityVote(seed=5).fit(L, [0.4, 0.6])
    pred, ties = mv.predict(L, "random", return_ties=True)
    assert 0.1 < ties.mean() < 0.9
    counts = np.stack([(L == 0).sum(1), (L == 1).sum(1)], 1)
    exp_ties = (counts[:, 0] == counts[:, 1]) & (counts.sum(1) > 0)
    assert np.array_equal(ties & covered_mask(L), exp_ties)
    np.testing.assert_array_equal(pred, MajorityVote(seed=5).fit(L, [0.4, 0.6]).predict(L))
    other = MajorityVote(seed=6).fit(L, [0.4, 0.6]).predict(L)
    assert not np.array_equal(pred[ties], other[ties])
    assert np.array_equal(pred[~ties], other[~ties])
    assert (mv.predict(L, "abstain")[ties] == -1).all()
    assert (mv.predict(L, "prior")[ties] == 1).all()
    assert (mv.predict(L, "first")[ties] == 0).all()
    with pytest.raises(ConfigError, match="tie_break"):
        mv.predict(L, "coin")
    with pytest.raises(ConfigError, match="prior"):
        probs_to_preds(np.full((2, 2), 0.5), "prior")


@pytest.mark.parametrize("name", LABEL_MODEL_NAMES)
def test_no_global_rng_use_and_seeded_determinism(name):
    d = make_synthetic_label_matrix(3000, ACC, COV, [0.6, 0.4], seed=4)
    np.random.seed(123)
    torch.manual_seed(123)
    np_state, torch_state = np.random.get_state(), torch.random.get_rng_state()
    a = make_label_model(name, seed=3).fit(d.L)
    pa = a.predict(d.L)
    assert np.array_equal(torch.random.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    b = make_label_model(name, seed=3).fit(d.L)
    np.testing.assert_array_equal(a.predict_proba(d.L), b.predict_proba(d.L))
    np.testing.assert_array_equal(pa, b.predict(d.L))


# ------------------------------------------------------------------------------------------------- persistence


@pytest.mark.parametrize("name", LABEL_MODEL_NAMES)
def test_save_load_exact_round_trip(tmp_path, name):
    d = make_synthetic_label_matrix(2000, ACC, COV, [0.5, 0.3, 0.2], seed=5)
    lm = make_label_model(name, num_classes=3, seed=9).fit(d.L, lf_names=[f"f{j}" for j in range(8)])
    folder = lm.save(tmp_path / "lm")
    assert sorted(p.name for p in folder.iterdir()) == ["label_model.json", "label_model.safetensors"]
    back = LabelModel.load(folder)
    assert type(back) is type(lm) and back.get_config() == lm.get_config()
    assert back.class_balance_source == lm.class_balance_source and back.lf_names_ == lm.lf_names_
    np.testing.assert_array_equal(back.predict_proba(d.L), lm.predict_proba(d.L))
    np.testing.assert_array_equal(back.predict(d.L), lm.predict(d.L))
    np.testing.assert_array_equal(back.lf_confusions, lm.lf_confusions)
    np.testing.assert_array_equal(back.class_balance_, lm.class_balance_)
    json.loads((folder / "label_model.json").read_text())
    assert not list(folder.glob("*.pkl"))
    if name != "majority_vote":
        with pytest.raises(DataError, match="not a MajorityVote"):
            MajorityVote.load(folder)


def test_load_missing_folder(tmp_path):
    with pytest.raises(DataFileNotFoundError):
        LabelModel.load(tmp_path / "nope")


def test_predict_before_fit_and_wrong_width():
    with pytest.raises(ConfigError, match="not fitted"):
        MajorityVote().predict_proba(np.zeros((2, 3), dtype=int))
    lm = MajorityVote().fit(np.array([[0, 1, 1], [1, 1, -1]]))
    with pytest.raises(DataError, match="fitted on 3"):
        lm.predict(np.array([[0, 1]]))


# ------------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("L", "match"),
    [
        (np.array([[0, 1], [1, 0.5]]), r"L\[1, 1\].*0.5.*not an integer"),
        (np.array([[True, False], [False, True]]), "bool"),
        (torch.tensor([[True, False]]), "bool tensor"),
        (np.array([[0, "a"]], dtype=object), "dtype object"),
        (np.array([[0, 1], [3, 1]]), r"L\[1, 0\].*= 3 is outside -1..1"),
        (np.array([[0, -2], [1, 1]]), r"L\[0, 1\].*= -2 is outside"),
        (np.array([[0.0, np.nan]]), r"L\[0, 1\].*NaN"),
        (np.array([[0.0, -np.inf]]), r"L\[0, 1\].*-inf \(not a class id\)"),
        (np.array([[0, None], [1, 1]], dtype=object), r"L\[0, 1\].*None.*-1 \(abstain\)"),
        (torch.tensor([[1, 2], [2, 1]]).to_sparse(), r"sparse torch tensor.*class 0.*to_dense\(\) - 1"),
        (np.zeros((0, 3), dtype=int), "empty"),
        (np.array([0, 1, 1]), "2-D"),
        (np.array([[0, -1], [1, -1]]), r"column 1.*abstains on every row"),
    ],
)
def test_bad_label_matrices(L, match):
    with pytest.raises(DataError, match=match):
        MajorityVote(num_classes=2).fit(L)


def test_too_few_lfs_and_names_in_messages():
    L = np.array([[0, 1], [1, 1], [0, 0]])
    for cls in (Triplet, MomentMatching):
        with pytest.raises(DataError, match="at least 3"):
            cls().fit(L)
    with pytest.raises(DataError, match="LF 'spam_kw'"):
        validate_label_matrix(np.array([[0, 5]]), 2, lf_names=["ham_kw", "spam_kw"])


def test_sparse_and_pandas_inputs():
    """A scipy sparse matrix is refused (its implicit zeros would be class-0 votes); pandas frames work, a missing
    value in one is named, and nullable integer columns without missing values are accepted."""
    sparse = pytest.importorskip("scipy.sparse")
    pd = pytest.importorskip("pandas")
    L = np.array([[0, 1, 1], [1, 1, -1], [0, 0, 0], [-1, 1, 0]])
    with pytest.raises(DataError, match=r"scipy sparse matrix \(csr_matrix\).*toarray\(\)"):
        MajorityVote().fit(sparse.csr_matrix(L + 1))
    want = MajorityVote().fit(L).predict_proba(L)
    frame = pd.DataFrame(L).astype("Int64")
    np.testing.assert_array_equal(MajorityVote().fit(frame).predict_proba(frame), want)
    np.testing.assert_array_equal(MajorityVote().fit(L.astype(object)).predict_proba(L), want)
    frame.iloc[2, 1] = pd.NA
    with pytest.raises(DataError, match=r"missing value at row 2, column 1.*fillna\(-1\)"):
        MajorityVote().fit(frame)


def test_predict_on_no_rows_and_zero_class_balance():
    """An empty batch predicts to empty arrays; a class_balance entry of 0 is allowed (no log(0) warnings) and that
    class is never predicted unless the votes say it."""
    d = make_synthetic_label_matrix(2_000, ACC[:5], COV[:5], [0.5, 0.3, 0.2], seed=3)
    for name in ("majority_vote", "dawid_skene", "moment_matching", "triplet", "auto"):
        lm = make_label_model(name, seed=0).fit(d.L)
        assert lm.predict_proba(d.L[:0]).shape == (0, 3)
        pred, ties = lm.predict(d.L[:0], abstain_uncovered=True, return_ties=True)
        assert pred.shape == ties.shape == (0,)
        with pytest.raises(DataError, match="empty"):
            make_label_model(name, seed=0).fit(d.L[:0])
    for name in ("dawid_skene", "moment_matching", "triplet"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            lm = make_label_model(name, seed=0).fit(d.L, class_balance=[0.0, 0.6, 0.4])
            proba = lm.predict_proba(d.L)
        assert np.isfinite(proba).all() and lm.class_balance_[0] <= 1e-11
        assert (lm.predict(d.L) == 0).mean() < (d.y == 0).mean() / 2, name


def test_accepts_torch_and_integral_floats():
    L = np.array([[0, 1, 1], [1, 1, -1], [0, 0, 0], [-1, 1, 0]])
    a = MajorityVote().fit(torch.from_numpy(L), "uniform").predict_proba(torch.from_numpy(L))
    b = MajorityVote().fit(L.astype(np.float32), "uniform").predict_proba(L)
    np.testing.assert_array_equal(a, b)
    assert validate_label_matrix(L.astype(np.int8)).dtype == np.int8


# ------------------------------------------------------------------------------------------- WMV, MV, analysis


def test_weighted_majority_vote_given_and_dev_accuracies():
    d = make_synthetic_label_matrix(4000, ACC, COV, [0.6, 0.4], seed=6)
    given = WeightedMajorityVote(accuracies=ACC).fit(d.L, d.class_balance)
    assert given.accuracy_source == "given"
    proba = given.predict_proba(d.L)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    # hand-computed log-odds posterior for one row
    row = d.L[7].astype(int)
    w = np.log(ACC / (1 - ACC))
    s = np.log(d.class_balance) + np.array([w[row == c].sum() for c in range(2)])
    if (row != -1).any():
        np.testing.assert_allclose(proba[7], np.exp(s) / np.exp(s).sum())
    dev = WeightedMajorityVote().fit(d.L, dev_L=d.L[:2000], dev_y=d.y[:2000])
    assert dev.accuracy_source == "dev" and dev.class_balance_source == "dev"
    assert np.abs(dev.lf_accuracies - ACC).mean() < 0.03
    with pytest.raises(ConfigError, match="between 0 and 1"):
        WeightedMajorityVote(accuracies=[0.5, 1.0])
    with pytest.raises(DataError, match="dev_y"):
        WeightedMajorityVote().fit(d.L, dev_L=d.L[:10])



def test_weighted_majority_vote_warns_when_one_coin_weights_count_a_rare_class_rule_against_it():
    # Binary, 8 % positives, single-class LFs better than chance for their class (spouse-like): a positive rule's
    # precision is well above the 0.08 prior but below 1/2, so its one-coin weight is negative.
    R = make_regime_label_matrix(20000, k=2, m=9, lf_type="single", coverage=(0.01, 0.08), accuracy=(0.2, 0.8),
                                 imbalance=11.5, accuracy_scale="above_chance", seed=900)
    with pytest.warns(UserWarning, match="count their votes against the class they name"):
        wmv = WeightedMajorityVote(seed=0).fit(R.L)
    bad = wmv.fit_report_["votes_against_own_class"]
    assert bad
    pos_rules = [j for j in range(R.L.shape[1]) if (R.L[:, j] == 1).any()]
    assert set(bad) <= set(pos_rules)
    prior = wmv.class_balance_[1]
    assert all(prior < wmv.lf_accuracies[j] < 0.5 for j in bad)
    # balanced classes with the same kind of LFs: no rule is below 1/k and above its prior, no warning
    B = make_regime_label_matrix(20000, k=2, m=9, lf_type="single", coverage=(0.01, 0.08), accuracy=(0.2, 0.8),
                                 imbalance=1.0, accuracy_scale="above_chance", seed=900)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        balanced = WeightedMajorityVote(seed=0).fit(B.L)
    assert balanced.fit_report_["votes_against_own_class"] == []

def test_lf_analysis_hand_computed():
    L = np.array([[0, -1, 0], [1, 0, -1], [-1, -1, -1], [1, 1, 1]])
    y = np.array([0, 1, 1, 1])
    a = LFAnalysis(L, y, lf_names=["a", "b", "c"])
    np.testing.assert_allclose(a.coverage, [0.75, 0.5, 0.5])
    np.testing.assert_allclose(a.overlaps, [0.75, 0.5, 0.5])
    np.testing.assert_allclose(a.conflicts, [0.25, 0.25, 0.0])
    assert a.polarity == [[0, 1], [0, 1], [0, 1]]
    np.testing.assert_allclose(a.emp_acc, [1.0, 0.5, 1.0])
    table = a.to_table()
    assert table.splitlines()[0].split() == ["lf", "polarity", "coverage", "overlaps", "conflicts", "cluster",
                                             "correct", "incorrect", "emp_acc"]
    assert "rows with at least one vote: 0.7500" in table
    rows = a.summary()
    assert rows[1]["incorrect"] == 1 and rows[0]["lf"] == "a"
    wandb = pytest.importorskip("wandb")
    t = a.to_wandb_table()
    assert isinstance(t, wandb.Table) and t.columns[0] == "lf" and len(t.data) == 3


def test_lf_analysis_rows_without_gold_labels():
    # y = -1 (an unlabelled row, as load_wrench(..., allow_unlabeled=True) gives) counted every vote on it as
    # incorrect; float and out-of-range labels were accepted without a word (session 38)
    L = np.array([[0, -1, 0], [1, 0, -1], [-1, -1, -1], [1, 1, 1], [0, 0, 1]])
    y = np.array([0, 1, 1, 1, -1])
    a = LFAnalysis(L, y, lf_names=["a", "b", "c"])
    np.testing.assert_allclose(a.emp_acc, [1.0, 0.5, 1.0])  # row 4's votes count neither way
    assert a.correct.tolist() == [3, 1, 2] and a.incorrect.tolist() == [0, 1, 0] and a.labelled_rows == 4
    assert "rows with a gold label (emp_acc): 4" in a.to_table()
    np.testing.assert_allclose(LFAnalysis(L, y.astype(float)).emp_acc, a.emp_acc)
    with pytest.raises(DataError, match="integer class ids"):
        LFAnalysis(L, y + 0.5)
    with pytest.raises(DataError, match=r"y holds labels -1..2; gold labels are class ids 0..1"):
        LFAnalysis(L, np.array([0, 1, 2, 1, -1]), num_classes=2)


@pytest.mark.parametrize("name", ["majority_vote", "dawid_skene", "moment_matching", "triplet", "auto"])
def test_fits_do_not_depend_on_row_column_or_class_order(name):
    # the same matrix with its rows shuffled, its LF columns shuffled or its class ids relabelled is the same data
    # (metamorphic check of session 38, on a real matrix)
    L = load_wrench("youtube", "train").weak_labels
    rng = np.random.default_rng(38)
    ref = make_label_model(name, seed=0).fit(L).predict_proba(L)
    rows, cols = rng.permutation(L.shape[0]), rng.permutation(L.shape[1])
    np.testing.assert_allclose(make_label_model(name, seed=0).fit(L[rows]).predict_proba(L), ref, atol=1e-9)
    np.testing.assert_allclose(make_label_model(name, seed=0).fit(L[:, cols]).predict_proba(L[:, cols]), ref,
                               atol=1e-9)
    flipped = np.where(L >= 0, 1 - L, -1)
    np.testing.assert_allclose(make_label_model(name, seed=0).fit(flipped).predict_proba(flipped)[:, ::-1], ref,
                               atol=1e-9)


def test_youtube_majority_vote_matches_direct_computation():
    tr, te = load_wrench("youtube", "train"), load_wrench("youtube", "test")
    mv = MajorityVote().fit(tr.weak_labels, "uniform")
    pred = mv.predict(te.weak_labels, "first")
    L = te.weak_labels
    direct = np.array([np.argmax([(row == 0).sum(), (row == 1).sum()]) for row in L])
    np.testing.assert_array_equal(pred, direct)
    acc = (pred == te.labels).mean()
    assert acc == pytest.approx((direct == te.labels).mean())
    assert 0.7 < acc < 0.9
    # the EM-style models do at least as well as majority vote on this set
    ds = DawidSkene().fit(tr.weak_labels)
    assert (ds.predict(L) == te.labels).mean() >= acc


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_youtube_writes_json(tmp_path, capsys):
    out = tmp_path / "res.json"
    assert cli_main(["youtube", "--models", "mv,ds,mm", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "keyword_subscribe" in printed and "moment_matching" in printed
    res = json.loads(out.read_text())
    assert res["metric"] == "accuracy" and [r["model"] for r in res["results"]] == [
        "majority_vote", "dawid_skene", "moment_matching"]
    assert all(0.5 < r["metric_all"] <= 1 for r in res["results"])
    assert all(r["class_balance_source"] == "estimated" for r in res["results"])


def test_cli_drops_lfs_that_never_vote_on_train(tmp_path, capsys):
    # A WRENCH-format folder with an LF that fires on test but never on train: every model used to refuse it.
    from tests.helpers.wrench import youtube_with_silent_lf

    youtube_with_silent_lf(tmp_path)
    args = ["--models", "mv,ds,auto", "--no-analysis"]
    assert cli_main([str(tmp_path), *args, "--output", str(tmp_path / "res.json")]) == 0
    assert cli_main(["youtube", *args, "--output", str(tmp_path / "ref.json")]) == 0
    assert "1 LF(s) never vote on the train split and are dropped for every model" in capsys.readouterr().out
    res, ref = (json.loads((tmp_path / f).read_text()) for f in ("res.json", "ref.json"))
    assert res["lfs_dropped_never_vote_on_train"] == ["lf_10"] and ref["lfs_dropped_never_vote_on_train"] == []
    assert [r["metric_all"] for r in res["results"]] == [r["metric_all"] for r in ref["results"]]


def test_cli_skips_models_that_refuse_the_matrix_and_runs_the_rest(tmp_path, capsys):
    # Two LFs: moment matching and triplet need three. With several models asked for, the command used to stop at
    # the first refusal; now the others are scored and the table says which were skipped and why.
    from tests.helpers.wrench import youtube_with_lfs

    youtube_with_lfs(tmp_path, [1, 4])
    out = tmp_path / "res.json"
    assert cli_main([str(tmp_path), "--models", "mv,mm,triplet,auto", "--no-analysis", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "moment_matching skipped: L has 2 labeling function(s) but this label model needs at least 3" in printed
    res = {r["model"]: r for r in json.loads(out.read_text())["results"]}
    assert list(res) == ["majority_vote", "moment_matching", "triplet", "auto"]
    assert "skipped" in res["triplet"] and "skipped" not in res["auto"]
    assert 0.5 < res["majority_vote"]["metric_all"] <= 1
    with pytest.raises(DataError, match="needs at least 3"):  # one model asked for: its refusal is the error
        cli_main([str(tmp_path), "--models", "mm", "--no-analysis"])
    with pytest.raises(DataError, match="no label model could be fitted.*moment_matching: .*triplet: "):
        cli_main([str(tmp_path), "--models", "mm,triplet", "--no-analysis"])


def test_cli_lf_analysis_on_a_partly_labelled_train_split(tmp_path, capsys):
    # with some train rows unlabelled the table had no emp_acc at all; it now counts the labelled rows only
    from tests.helpers.wrench import youtube_without_train_labels

    youtube_without_train_labels(tmp_path / "yt")
    rows = json.loads((tmp_path / "yt" / "train.json").read_text())
    gold = load_wrench("youtube", "train")
    for i, row in enumerate(rows.values()):
        if i % 2:
            row["label"] = int(gold.labels[i])
    (tmp_path / "yt" / "train.json").write_text(json.dumps(rows))
    assert cli_main([str(tmp_path / "yt"), "--models", "mv", "--output", str(tmp_path / "res.json")]) == 0
    assert "(emp_acc uses the gold labels of 793 of 1586 rows)" in capsys.readouterr().out
    got = [r["emp_acc"] for r in json.loads((tmp_path / "res.json").read_text())["lf_analysis"]]
    np.testing.assert_allclose(got, LFAnalysis(gold.weak_labels[1::2], gold.labels[1::2]).emp_acc)


def test_cli_fits_an_unlabelled_train_split(tmp_path, capsys):
    # WRENCH marks an unlabelled split with label -1 (users' own data has no label at all): the label models never
    # read train gold labels, so the results equal the labelled set's; unlabelled test rows are not scored.
    from tests.helpers.wrench import youtube_without_train_labels

    youtube_without_train_labels(tmp_path / "yt")
    args = ["--models", "mv,ds,auto"]
    assert cli_main([str(tmp_path / "yt"), *args, "--output", str(tmp_path / "res.json")]) == 0
    assert "no gold train labels: no emp_acc" in capsys.readouterr().out
    assert cli_main(["youtube", *args, "--no-analysis", "--output", str(tmp_path / "ref.json")]) == 0
    res, ref = (json.loads((tmp_path / f).read_text()) for f in ("res.json", "ref.json"))
    assert res["train_rows_with_gold"] == 0 and ref["train_rows_with_gold"] == 1586
    assert "emp_acc" not in res["lf_analysis"][0] and "emp_acc" in ref["lf_analysis"][0]
    assert [r["metric_all"] for r in res["results"]] == [r["metric_all"] for r in ref["results"]]
    with pytest.raises(ConfigError, match="oracle needs gold labels on every train row"):
        cli_main([str(tmp_path / "yt"), "--models", "mv", "--class-balance", "oracle"])
    youtube_without_train_labels(tmp_path / "yt5", test_unlabelled_every=5)
    assert cli_main([str(tmp_path / "yt5"), "--models", "mv", "--no-analysis", "--tie-break", "first",
                     "--output", str(tmp_path / "res5.json")]) == 0
    assert "50 rows without a gold label not scored" in capsys.readouterr().out
    res5 = json.loads((tmp_path / "res5.json").read_text())
    test = load_wrench("youtube", "test")
    keep = np.arange(test.n) % 5 != 0
    pred = MajorityVote(2).fit(load_wrench("youtube", "train").weak_labels).predict(test.weak_labels, "first")
    assert res5["eval_rows_scored"] == 200
    assert res5["results"][0]["metric_all"] == pytest.approx((pred[keep] == test.labels[keep]).mean())


def test_cli_needs_the_valid_split_only_for_the_dev_prior(tmp_path):
    from lightning_ws.data.wrench_loader import DATA_DIR

    for name in ("train.json", "test.json", "label.json"):
        (tmp_path / name).write_text((DATA_DIR / "wrench" / "youtube" / name).read_text())
    assert cli_main([str(tmp_path), "--models", "mv,auto", "--no-analysis"]) == 0
    with pytest.raises(DataFileNotFoundError, match="valid split not found"):
        cli_main([str(tmp_path), "--models", "mv", "--class-balance", "dev"])


def test_cli_bad_input(tmp_path):
    with pytest.raises(DataFileNotFoundError, match="neither a shipped"):
        cli_main([str(tmp_path / "missing")])
    from lightning_ws.data.wrench_loader import DATA_DIR

    for name in ("train.json", "test.json"):  # test rows carry one more LF column than train rows
        rows = json.loads((DATA_DIR / "wrench" / "youtube" / name).read_text())
        if name == "test.json":
            for row in rows.values():
                row["weak_labels"] = list(row["weak_labels"]) + [-1]
        (tmp_path / name).write_text(json.dumps(rows))
    with pytest.raises(DataError, match="train split of .* has 10 labeling-function columns but the test split has 11"):
        cli_main([str(tmp_path), "--models", "mv", "--no-analysis"])
    with pytest.raises(ConfigError, match="unknown label model"):
        cli_main(["youtube", "--models", "mv,bogus"])


def test_factory_aliases():
    assert isinstance(make_label_model("MV"), MajorityVote)
    assert isinstance(make_label_model("snorkel"), MomentMatching)
    assert isinstance(make_label_model("flyingsquid", solve="median"), Triplet)
    with pytest.raises(ConfigError, match="bad arguments"):
        make_label_model("mv", lr=0.1)


# ---- fast paths: pattern collapsing, vote-list / SQUAREM EM, projected Newton --------------------------------------

def test_unique_rows_round_trip():
    from lightning_ws.labelmodels.matrix import collapse_rows, unique_rows

    L = np.random.default_rng(3).integers(-1, 3, size=(3000, 4))
    U, inv, counts = unique_rows(L)
    assert np.array_equal(U[inv], L)
    assert counts.sum() == L.shape[0] and U.shape[0] == len(np.unique(L, axis=0))
    assert np.array_equal(np.bincount(inv, minlength=U.shape[0]), counts)
    assert collapse_rows(np.random.default_rng(4).integers(-1, 2, size=(50, 40))) is None  # all rows distinct


@pytest.mark.parametrize("abstain", ["category", "ignore"])
def test_collapsed_vote_list_em_equals_rowwise_em(binary_data, abstain, monkeypatch):
    """EM on the unique patterns (weighted, vote-list kernel) = the chunked row-wise EM, iterate for iterate."""
    import lightning_ws.labelmodels.dawid_skene as ds_mod
    import lightning_ws.labelmodels.matrix as mx

    L = binary_data.L[:8000]
    fast = DawidSkene(abstain=abstain, max_iter=60).fit(L)
    assert fast.fit_report_["em_rows"] < L.shape[0] // 2
    monkeypatch.setattr(mx, "_COLLAPSE_MAX_RATIO", 0.0)
    monkeypatch.setattr(ds_mod, "_VOTES_MAX_ELEMS", 0)
    slow = DawidSkene(abstain=abstain, max_iter=60).fit(L)
    assert slow.fit_report_["em_rows"] == L.shape[0]
    assert fast.fit_report_["n_iter"] == slow.fit_report_["n_iter"]
    np.testing.assert_allclose(fast.log_theta_, slow.log_theta_, rtol=0, atol=1e-10)
    np.testing.assert_allclose(fast.class_balance_, slow.class_balance_, rtol=0, atol=1e-10)
    assert fast.fit_report_["log_likelihood"] == pytest.approx(slow.fit_report_["log_likelihood"], rel=1e-12)
    np.testing.assert_allclose(fast.predict_proba(L), slow.predict_proba(L), rtol=0, atol=1e-10)


def test_squarem_em_reaches_the_same_fixed_point(binary_data):
    L = binary_data.L[:20_000]
    plain = DawidSkene().fit(L)
    acc = DawidSkene(accelerate=True).fit(L)
    tight = DawidSkene(tol=1e-11, max_iter=20_000).fit(L)
    assert acc.fit_report_["converged"] and acc.fit_report_["accelerated"]
    assert acc.fit_report_["n_iter"] < plain.fit_report_["n_iter"]
    err_acc = np.abs(acc.class_balance_ - tight.class_balance_).max()
    err_plain = np.abs(plain.class_balance_ - tight.class_balance_).max()
    assert err_acc <= max(err_plain, 1e-6)
    assert acc.fit_report_["log_likelihood"] >= plain.fit_report_["log_likelihood"] - 1e-6
    with pytest.raises(ConfigError, match="accelerate"):
        DawidSkene(accelerate="yes")


def test_moment_matching_hessian_matches_finite_differences():
    from lightning_ws.labelmodels.moment_matching import _hessian_diagonal, moment_matching_hessian, moment_matching_hvp

    rng = np.random.default_rng(5)
    for m, k, l2 in ((4, 2, 0.0), (3, 3, 0.3)):
        N = m * k
        mu = rng.uniform(0.1, 0.9, (N, k))
        A = rng.uniform(0, 1, (N, N))
        O, p, mask = (A + A.T) / 2, rng.dirichlet(np.ones(k)), off_diagonal_block_mask(m, k)
        H = moment_matching_hessian(mu, O, p, mask, l2)
        num = np.zeros_like(H)
        for i in range(N * k):
            e = np.zeros(N * k)
            e[i] = 1e-6
            gp = moment_matching_objective(mu + e.reshape(N, k), O, p, mask, mu, l2)[1].ravel()
            gm = moment_matching_objective(mu - e.reshape(N, k), O, p, mask, mu, l2)[1].ravel()
            num[:, i] = (gp - gm) / 2e-6
        np.testing.assert_allclose(H, num, rtol=0, atol=1e-7)
        V = rng.normal(size=(N, k))  # the matrix-free product and the diagonal used by Newton-CG agree with H
        np.testing.assert_allclose(moment_matching_hvp(mu, V, O, p, mask, l2).ravel(), H @ V.ravel(), rtol=0,
                                   atol=1e-10)
        np.testing.assert_allclose(_hessian_diagonal(mu, p, mask, l2).ravel(), np.diag(H), rtol=0, atol=1e-12)


@pytest.mark.parametrize("init", ["auto", "mv", "precision"])
def test_newton_equals_newton_cg_and_lbfgs_and_rowwise_statistics(binary_data, init, monkeypatch):
    """Projected Newton on collapsed statistics reaches the optimum that Newton-CG (matrix-free) and L-BFGS-B
    compute from the full rows."""
    import lightning_ws.labelmodels.matrix as mx

    L = binary_data.L[:20_000]
    fast = MomentMatching(init=init).fit(L)
    rep = fast.fit_report_
    assert rep["solver"] == "newton" and rep["converged"] and rep["proj_grad_norm"] < 1e-9
    assert rep["init"] == ("em" if init == "auto" else init)
    monkeypatch.setattr(mx, "_COLLAPSE_MAX_RATIO", 0.0)
    cg = MomentMatching(init="mv", solver="newton-cg").fit(L, fast.class_balance_)
    assert cg.fit_report_["solver"] == "newton-cg" and cg.fit_report_["converged"]
    assert cg.fit_report_["proj_grad_norm"] < 1e-9 and cg.fit_report_["cg_iter"] > 0
    slow = MomentMatching(init="mv", solver="l-bfgs-b").fit(L, fast.class_balance_)
    assert slow.fit_report_["solver"] == "l-bfgs-b" and slow.fit_report_["stat_rows"] == L.shape[0]
    for other in (cg, slow):
        assert rep["objective"] <= other.fit_report_["objective"] + 1e-12
        np.testing.assert_allclose(fast.mu_, other.mu_, rtol=0, atol=1e-4)
        np.testing.assert_allclose(fast.predict_proba(L), other.predict_proba(L), rtol=0, atol=1e-4)


def test_newton_cg_takes_over_where_lbfgs_crawls(monkeypatch):
    """20 LFs voting 4 of 5 classes (no LF ever votes the last one): an ill-conditioned problem on which L-BFGS-B alone
    needs over a thousand iterations. The hybrid hands over to Newton-CG after 300, converges to the tolerance and
    lands at least as low; above the dense-Newton limit it is what ``"auto"`` runs; a bad solver name is refused."""
    import lightning_ws.labelmodels.moment_matching as mm_mod

    R = make_regime_label_matrix(800, k=5, m=20, lf_type="multi", coverage=(0.01, 0.1), seed=3)
    L = R.L.copy()
    L[L == 4] = -1
    L = L[:, (L != -1).any(axis=0)]
    hybrid = MomentMatching(5, solver="l-bfgs-b+newton-cg").fit(L)
    rep = hybrid.fit_report_
    assert rep["solver"] == "l-bfgs-b+newton-cg" and rep["converged"] and rep["proj_grad_norm"] < 1e-9
    assert rep["n_iter"] > 300 and rep["cg_iter"] > 0
    slow = MomentMatching(5, solver="l-bfgs-b").fit(L)
    assert slow.fit_report_["solver"] == "l-bfgs-b" and slow.fit_report_["n_iter"] > 1000
    assert rep["objective"] <= slow.fit_report_["objective"] + 1e-12
    agree = (hybrid.predict(L) == slow.predict(L)).mean()
    assert agree >= 0.98, agree
    monkeypatch.setattr(mm_mod, "_NEWTON_MAX_VARS", 100)  # this problem has 400 unknowns
    assert MomentMatching(5).fit(L).fit_report_["solver"] == "l-bfgs-b+newton-cg"
    with pytest.raises(ConfigError, match="solver must be one of"):
        MomentMatching(solver="sgd")


def test_single_thread_blas_limits_and_restores():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from lightning_ws.labelmodels.base import single_thread_blas

    def blas_threads():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    if not before:
        pytest.skip("no BLAS library found by threadpoolctl")
    with single_thread_blas():
        assert blas_threads() == [1] * len(before)
    assert blas_threads() == before


def test_score_like_snorkel_with_abstains_counted_and_unlabelled_rows_left_out():
    from sklearn.metrics import f1_score

    d = load_wrench("youtube", "train")
    L, y = d.weak_labels, d.labels
    mv = make_label_model("mv", seed=0).fit(L)
    pred = mv.predict(L)
    s = mv.score(L, y, metrics=("accuracy", "f1", "coverage"))
    assert s["accuracy"] == pytest.approx((pred == y).mean()) and s["coverage"] == 1.0
    assert s["f1"] == pytest.approx(f1_score(y, pred))
    y2 = y.copy()
    y2[:100] = -1  # rows without a gold label are left out, not counted wrong
    assert mv.score(L, y2)["accuracy"] == pytest.approx((pred[100:] == y[100:]).mean())
    p_ab = mv.predict(L, abstain_uncovered=True)
    s_ab = mv.score(L, y, ("accuracy", "coverage"), abstain_uncovered=True)
    assert s_ab["coverage"] == pytest.approx(covered_mask(L).mean()) and s_ab["coverage"] < 1.0
    assert s_ab["accuracy"] == pytest.approx((p_ab == y).mean())  # an abstained row counts as wrong
    assert mv.score(L, np.full(len(y), -1))["accuracy"] != mv.score(L, np.full(len(y), -1))["accuracy"]  # NaN
    assert mv.score(L, y.astype(float), "accuracy") == {"accuracy": s["accuracy"]}
    with pytest.raises(ConfigError, match="metrics must name"):
        mv.score(L, y, ("auc",))
    with pytest.raises(DataError, match="y holds labels"):
        mv.score(L, np.where(y == 1, 2, y))
    with pytest.raises(DataError, match="labels but L has"):
        mv.score(L, y[:-1])
    with pytest.raises(ConfigError, match="pos_label"):
        mv.score(L, y, ("f1",), pos_label=2)
