"""Resume a user can rely on: RNG states in the checkpoint (dropout on), stateful loaders, CLI kill-and-resume."""

from __future__ import annotations

import warnings

import pytest
import torch

from lightning_ws.datamodules import TextClassificationDataModule
from lightning_ws.modules import TextClassifier
from tests.helpers.resume import assert_resume_equivalent
from tests.helpers.tiny import TinyClassifier, TinyDataModule


def _build_dropout():
    torch.manual_seed(0)
    return TinyClassifier(dropout=0.3), TinyDataModule(n=40, batch_size=4), []


@pytest.mark.parametrize("interrupt_step", [3, 5, 10])  # mid-epoch and on an epoch boundary (40/4/2 = 5 steps)
def test_resume_with_dropout_is_exact(tmp_path, interrupt_step):
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*not resumable.*")
        assert_resume_equivalent(_build_dropout, total_steps=12, interrupt_step=interrupt_step, tmp_path=tmp_path)


def test_without_rng_states_dropout_resume_differs(tmp_path):
    """The control: the same resume without the RNG callback does not match (so the test above can fail)."""
    with pytest.raises(AssertionError, match="params"):
        assert_resume_equivalent(_build_dropout, total_steps=12, interrupt_step=3, tmp_path=tmp_path,
                                 rng_states=False)


def test_text_classifier_resumes_exactly_with_dropout(tmp_path, tiny_encoder_overrides):
    """The MiniLM-style classifier as the configs train it: encoder and head dropout on, real tokenised data."""

    def build():
        torch.manual_seed(0)
        model = TextClassifier(pretrained=False, config_overrides=tiny_encoder_overrides, dropout=0.1, lr=1e-3)
        assert model.encoder.config.hidden_dropout_prob > 0
        return model, TextClassificationDataModule("youtube", batch_size=8, train_limit=48, max_length=16), []

    assert_resume_equivalent(build, total_steps=5, interrupt_step=2, tmp_path=tmp_path)
