"""The shared harness works: resume equals an uninterrupted run; DDP ranks agree."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.ddp import run_fit
from tests.helpers.resume import assert_resume_equivalent, assert_state_equal
from tests.helpers.tiny import TinyClassifier, TinyDataModule


def _build():
    torch.manual_seed(0)
    return TinyClassifier(), TinyDataModule(n=40, batch_size=4), []


@pytest.mark.parametrize("interrupt_step", [3, 5, 10])  # mid-epoch and on an epoch boundary (40/4/2 = 5 steps)
def test_resume_equals_uninterrupted(tmp_path, interrupt_step):
    res = assert_resume_equivalent(_build, total_steps=12, interrupt_step=interrupt_step, tmp_path=tmp_path)
    assert res.checkpoint.is_file()


def test_resume_helper_detects_a_difference(tmp_path):
    """The helper must fail when the runs differ (here: different data seeds)."""
    calls = {"n": 0}

    def build():
        calls["n"] += 1
        torch.manual_seed(0)
        return TinyClassifier(), TinyDataModule(n=40, batch_size=4, seed=calls["n"]), []

    with pytest.raises(AssertionError, match="params"):
        assert_resume_equivalent(build, total_steps=6, interrupt_step=3, tmp_path=tmp_path)


def test_assert_state_equal_names_the_key():
    with pytest.raises(AssertionError, match=r"state\.a\.b"):
        assert_state_equal({"a": {"b": torch.zeros(2)}}, {"a": {"b": torch.ones(2)}})


@pytest.mark.ddp
def test_ddp_two_ranks_agree(tmp_path):
    ranks = run_fit("tests.helpers.tiny:make_tiny_case", tmp_path, devices=2, factory_kwargs={"batch_size": 4})
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["global_step"] == 4 for r in ranks)
    assert_state_equal(ranks[0]["params"], ranks[1]["params"])
    single = run_fit("tests.helpers.tiny:make_tiny_case", tmp_path, devices=1, factory_kwargs={"batch_size": 8})
    # the models trained (moved away from the shared initialisation) in both set-ups
    init, _, _ = __import__("tests.helpers.tiny", fromlist=["x"]).make_tiny_case()
    for res in (ranks[0], single[0]):
        assert not torch.equal(res["params"]["classifier.weight"], init.classifier.weight.detach())
