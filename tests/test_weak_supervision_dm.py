"""PseudoLabelDataModule: label-model pseudolabels into Lightning; labeling functions applied and cached."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_ws.data import load_wrench
from lightning_ws.datamodules import PseudoLabelDataModule
from lightning_ws.errors import ConfigError, DataError
from lightning_ws.labelmodels.lf_apply import apply_lfs, lf_fingerprint
from lightning_ws.losses import soft_cross_entropy


def lf_subscribe(text: str) -> int:
    return 1 if "subscribe" in text.lower() else -1


def lf_check_out(text: str) -> int:
    return 1 if "check out" in text.lower() else -1


def lf_short(text: str) -> int:
    return 0 if len(text.split()) < 5 else -1


_CALLS = {"n": 0}


def lf_counting(text: str) -> int:
    _CALLS["n"] += 1
    return -1


def test_soft_targets_drop_uncovered_and_report():
    dm = PseudoLabelDataModule("youtube", label_model="majority_vote", batch_size=16)
    dm.setup("fit")
    train = load_wrench("youtube", "train")
    covered = (train.weak_labels != -1).any(1)
    ds = dm.datasets["train"]
    assert len(ds) == covered.sum() < train.n
    assert ds.labels.dtype == np.float32 and ds.labels.shape == (len(ds), 2)
    np.testing.assert_allclose(ds.labels.sum(1), 1.0, atol=1e-5)
    rep = dm.label_model_report
    assert rep["rows_kept"] == len(ds) and rep["class_balance_source"] in ("estimated", "uniform", "given", "dev")
    assert 0.7 < rep["pseudolabel_accuracy_vs_gold"] <= 1.0
    assert rep["label_model_pick"] is None and rep["unvoted_argmax_rows"] is None  # not AutoLabelModel
    batch = next(iter(dm.train_dataloader()))
    assert batch["labels"].dtype == torch.float32 and batch["labels"].shape[1] == 2
    # validation keeps gold labels
    dm.setup("validate")
    assert dm.datasets["valid"].labels.dtype == np.int64


def test_hard_labels_keep_uncovered_and_dev_balance():
    dm = PseudoLabelDataModule("youtube", label_model="dawid_skene", soft_labels=False, drop_uncovered=False,
                               class_balance="dev", batch_size=16)
    dm.setup("fit")
    ds = dm.datasets["train"]
    assert ds.labels.dtype == np.int64 and len(ds) == 1586
    assert dm.label_model.class_balance_source == "dev"


def test_label_model_save_and_reuse(tmp_path):
    path = tmp_path / "lm"
    a = PseudoLabelDataModule("youtube", label_model="moment_matching", save_label_model=str(path))
    a.setup("fit")
    b = PseudoLabelDataModule("youtube", label_model_path=str(path))
    b.setup("fit")
    np.testing.assert_array_equal(a.datasets["train"].labels, b.datasets["train"].labels)
    with pytest.raises(ConfigError, match="already exists"):
        PseudoLabelDataModule("youtube", save_label_model=str(path)).setup("fit")
    with pytest.raises(ConfigError, match="does not exist"):
        PseudoLabelDataModule("youtube", label_model_path=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="unknown label model"):
        PseudoLabelDataModule("youtube", label_model="nonsense")


def test_default_datamodule_accepts_an_lf_that_never_votes_on_train(tmp_path):
    # A WRENCH-format folder (youtube plus an 11th rule that fires on valid/test only): the default label model
    # ignores the silent rule with a warning naming it, and the pseudolabels equal those of the shipped set.
    from tests.helpers.wrench import youtube_with_silent_lf

    dm = PseudoLabelDataModule(str(youtube_with_silent_lf(tmp_path, every=5)), batch_size=16)
    with pytest.warns(UserWarning, match=r"1 of 11 labeling functions never vote.*'lf_10'"):
        dm.setup("fit")
    ref = PseudoLabelDataModule("youtube", batch_size=16)
    ref.setup("fit")
    assert dm.label_model.fit_report_["silent_lfs"] == [10]
    np.testing.assert_allclose(dm.datasets["train"].labels, ref.datasets["train"].labels)
    assert dm.label_model_report["rows_kept"] == ref.label_model_report["rows_kept"]


def test_default_datamodule_ignores_an_lf_that_votes_one_class_on_every_row(tmp_path):
    # youtube plus a rule that votes spam everywhere: it used to make every row "covered", so the rows no real rule
    # votes on were kept and trained on the class balance; auto ignores the rule and the rows it alone covers
    from tests.helpers.wrench import youtube_with_constant_lf

    dm = PseudoLabelDataModule(str(youtube_with_constant_lf(tmp_path)), batch_size=16)
    with pytest.warns(UserWarning, match=r"1 of 11 labeling functions vote the same class on every one"):
        dm.setup("fit")
    ref = PseudoLabelDataModule("youtube", batch_size=16)
    ref.setup("fit")
    assert dm.label_model.fit_report_["constant_lfs"] == {10: 1}
    assert dm.label_model_report["rows_kept"] == ref.label_model_report["rows_kept"] < 1586
    np.testing.assert_allclose(dm.datasets["train"].labels, ref.datasets["train"].labels)


def test_pseudolabels_from_an_unlabelled_train_split(tmp_path):
    # Weak supervision's use case: the train split has no gold labels (WRENCH's -1, null or none). The pseudolabel
    # datamodule trains on it exactly as on the labelled copy; the gold-label datamodule refuses it, naming the fix.
    from lightning_ws.datamodules import TextClassificationDataModule
    from tests.helpers.wrench import youtube_without_train_labels

    folder = str(youtube_without_train_labels(tmp_path))
    dm = PseudoLabelDataModule(folder, batch_size=16)
    dm.setup("fit")
    ref = PseudoLabelDataModule("youtube", batch_size=16)
    ref.setup("fit")
    np.testing.assert_allclose(dm.datasets["train"].labels, ref.datasets["train"].labels)
    assert dm.label_model_report["pseudolabel_accuracy_vs_gold"] is None
    assert dm.label_model_report["gold_train_rows"] == 0 and ref.label_model_report["gold_train_rows"] == 1586
    assert ref.label_model_report["pseudolabel_accuracy_vs_gold"] > 0.8
    assert "emp_acc" not in dm.lf_analysis[0] and "emp_acc" in ref.lf_analysis[0]
    with pytest.raises(DataError, match="have no gold label.*allow_unlabeled=True"):
        TextClassificationDataModule(folder, batch_size=16).setup("fit")


def test_labeling_functions_applied_in_parallel_and_cached(tmp_path):
    texts = load_wrench("youtube", "train").texts[:200]
    lfs = [lf_subscribe, lf_check_out, lf_short]
    serial = apply_lfs(lfs, texts, workers=1, progress=False)
    assert serial.shape == (200, 3) and set(np.unique(serial)) <= {-1, 0, 1}
    assert serial[:, 0].tolist() == [lf_subscribe(t) for t in texts]
    parallel = apply_lfs(lfs, texts, workers=2, cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(serial, parallel)
    assert len(list(tmp_path.glob("*.safetensors"))) == 3
    _CALLS["n"] = 0
    apply_lfs([lf_subscribe, lf_counting], texts, cache_dir=tmp_path, progress=False)
    assert _CALLS["n"] == 200  # the new LF ran; lf_subscribe came from the cache
    apply_lfs([lf_counting], texts, cache_dir=tmp_path, progress=False)
    assert _CALLS["n"] == 200  # cached now
    assert lf_fingerprint(lf_subscribe) != lf_fingerprint(lf_check_out)


@pytest.mark.parametrize(("ret", "match"), [
    (False, "a boolean is not a vote"),        # int(False) == 0: "does not apply" became a class-0 vote
    (0.7, "not a whole number"),               # int(0.7) == 0: a score became a class-0 vote
    (None, "None is not a vote; return -1"),
    ("spam", "not a class id"),
])
def test_labeling_function_return_values_are_read_strictly(ret, match):
    with pytest.raises(DataError, match=f"returned {ret!r} for example 0: {match}"):
        apply_lfs([lambda text: ret], ["a", "b"], progress=False)
    ok = apply_lfs([lambda text: 1.0, lambda text: np.int64(0), lambda text: -1], ["a", "b"], progress=False)
    assert ok.tolist() == [[1, 0, -1], [1, 0, -1]]


def test_datamodule_with_labeling_functions():
    dm = PseudoLabelDataModule("youtube", label_model="majority_vote",
                               labeling_functions=[lf_subscribe, lf_check_out, lf_short], batch_size=8)
    dm.setup("fit")
    assert dm.label_model_report["coverage"] < 1.0 and len(dm.datasets["train"]) > 0


def test_soft_cross_entropy_matches_hard_on_one_hot():
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 2, 1, 1, 0])
    onehot = torch.nn.functional.one_hot(y, 3).float()
    torch.testing.assert_close(soft_cross_entropy(logits, onehot), torch.nn.functional.cross_entropy(logits, y))
    with pytest.raises(ValueError, match="shape"):
        soft_cross_entropy(logits, onehot[:, :2])


def test_default_auto_reports_its_pick_and_the_rows_it_keeps_to_voted_classes():
    dm = PseudoLabelDataModule("youtube", batch_size=16)  # label_model="auto", the default
    dm.setup("fit")
    rep = dm.label_model_report
    assert rep["label_model"] == "AutoLabelModel"
    assert rep["label_model_pick"] == dm.label_model.selected == "majority_vote/raw"  # label-free on WRENCH YouTube
    assert rep["unvoted_argmax_rows"] == 0  # majority vote only names voted classes
    assert rep["support_used"] == "voted"
