"""TextClassifier: soft/hard labels, weights, MoRe adapter option, resume of the text datamodule."""

from __future__ import annotations

import pytest
import torch

from lightning_ws.datamodules import TextClassificationDataModule
from lightning_ws.errors import ConfigError
from lightning_ws.modules import TextClassifier
from tests.helpers.resume import assert_resume_equivalent


def _batch(k=2, soft=False):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (4, 7), generator=g)
    labels = torch.softmax(torch.randn(4, k, generator=g), -1) if soft else torch.tensor([0, 1, 1, 0])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "idx": torch.arange(4)}


def test_soft_and_hard_labels_and_weights(tiny_encoder_overrides):
    m = TextClassifier(pretrained=False, config_overrides=tiny_encoder_overrides, dropout=0.0)
    m.eval()  # deterministic forward passes, so the three losses are comparable
    hard = m.training_step(_batch(), 0)
    soft = m.training_step(_batch(soft=True), 0)
    assert hard["loss"].requires_grad and soft["per_sample_loss"].shape == (4,)
    b = _batch()
    b["weight"] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    weighted = m.training_step(b, 0)
    torch.testing.assert_close(weighted["loss"], hard["per_sample_loss"][0])


def test_more_adapter_option(tiny_encoder_overrides):
    m = TextClassifier(pretrained=False, config_overrides=tiny_encoder_overrides, adapter="more",
                       adapter_config={"nblocks": 2, "blk_r": 2})
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert {"classifier.weight", "classifier.bias"} <= trainable
    assert any("query" in n for n in trainable) and not any(n.endswith("query.weight") for n in trainable)
    full = TextClassifier(pretrained=False, config_overrides=tiny_encoder_overrides)
    out = m(**{k: v for k, v in _batch().items() if k in ("input_ids", "attention_mask")})
    assert out.shape == (4, 2)
    assert sum(p.numel() for n, p in m.named_parameters() if n in trainable) < sum(p.numel() for p in full.parameters())
    with pytest.raises(ConfigError, match="adapter_config"):
        TextClassifier(pretrained=False, config_overrides=tiny_encoder_overrides, adapter="more",
                       adapter_config={"bogus": 1})
    with pytest.raises(ConfigError, match="adapter must be"):
        TextClassifier(pretrained=False, config_overrides=tiny_encoder_overrides, adapter="lora")  # type: ignore[arg-type]


def test_bad_arguments():
    with pytest.raises(ConfigError, match="num_classes"):
        TextClassifier(num_classes=1, pretrained=False)
    with pytest.raises(ConfigError, match="pretrained=False"):
        TextClassifier(config_overrides={"num_hidden_layers": 1})


def test_text_datamodule_resumes_mid_epoch_exactly(tmp_path, tiny_encoder_overrides):
    """Uninterrupted == interrupted mid-epoch + resumed, on the real tokenised YouTube data (dropout off)."""

    def build():
        torch.manual_seed(0)
        overrides = {**tiny_encoder_overrides, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
        model = TextClassifier(pretrained=False, config_overrides=overrides, dropout=0.0, lr=1e-3)
        return model, TextClassificationDataModule("youtube", batch_size=8, train_limit=48, max_length=16), []

    assert_resume_equivalent(build, total_steps=5, interrupt_step=2, tmp_path=tmp_path)  # bit-exact
