"""PAJAMA distillation: Bradley-Terry loss, PairwiseAccuracy, RewardModel + PreferenceDataModule, configs through the
CLI (programs and human labels), predictions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lightning_ws.pajama.distill import bradley_terry_loss, encode_query_response, pairwise_accuracy

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "configs" / "pajama_tiny.yaml")


def test_bradley_terry_loss_and_pairwise_accuracy():
    r_a, r_b = torch.tensor([0.0, 2.0, 1.0]), torch.tensor([1.0, 0.0, 1.0])
    hard = torch.tensor([1.0, 0.0, 1.0])
    exp = -torch.nn.functional.logsigmoid(torch.tensor([1.0, 2.0, 0.0])).mean()
    assert torch.allclose(bradley_terry_loss(r_a, r_b, hard), exp)
    soft = torch.tensor([0.5, 0.5, 0.5])
    assert bradley_terry_loss(r_a, r_b, soft) > bradley_terry_loss(r_a, r_b, hard)
    w = torch.tensor([1.0, 0.0, 0.0])
    assert torch.allclose(bradley_terry_loss(r_a, r_b, hard, w), -torch.nn.functional.logsigmoid(torch.tensor(1.0)))
    assert pairwise_accuracy(r_a, r_b, torch.tensor([1, 0, 0])).tolist() == [1.0, 1.0, 0.5]
    x = r_a.clone().requires_grad_(True)
    bradley_terry_loss(x, r_b, hard).backward()
    assert x.grad[0] > 0  # pushes r_A down where B is preferred


def test_pairwise_accuracy_metric_and_encoding():
    from lightning_ws.datamodules.text import load_tokenizer
    from lightning_ws.modules.reward_model import PairwiseAccuracy

    m = PairwiseAccuracy()
    m.update(torch.tensor([0.0, 1.0, 0.0]), torch.tensor([1.0, 0.0, 0.0]), torch.tensor([1, 1, -1]))
    assert m.compute().item() == pytest.approx(0.5)
    tok = load_tokenizer(None)
    ids = encode_query_response(tok, ["word " * 300, "short q"], ["resp " * 300, "short r"], 32)
    assert all(len(x) <= 32 for x in ids) and ids[0][0] == tok.cls_token_id and ids[0][-1] == tok.sep_token_id
    assert len(ids[1]) < 32


def _fit(config: str, tmp_path: Path, *extra: str) -> dict:
    from lightning_ws.cli import main

    rc = main(["fit", "-c", str(ROOT / "configs" / config), "-c", TINY,
               "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
               "--data.init_args.cache_dir", str(tmp_path / "cache"), *extra])
    assert rc == 0
    found = list((tmp_path / "runs").rglob("metrics-fit.json"))
    assert len(found) == 1
    return json.loads(found[0].read_text())


def test_pajama_distill_config_program_labels_through_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    metrics = _fit("pajama_distill.yaml", tmp_path)
    for k in ("test/pair_acc_llmbar", "test/pair_acc_pandalm_test"):
        assert 0.0 <= metrics[k] <= 1.0


@pytest.mark.slow
def test_pajama_distill_human_config_through_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    metrics = _fit("pajama_distill_human.yaml", tmp_path)
    assert 0.0 <= metrics["test/pair_acc_llmbar"] <= 1.0


def test_reward_model_learns_program_labels_and_predicts(tmp_path, tiny_encoder_overrides):
    import lightning.pytorch as pl

    from lightning_ws.datamodules import PreferenceDataModule
    from lightning_ws.modules import RewardModel
    from lightning_ws.predictions import collect_predictions

    dm = PreferenceDataModule(labels="programs", tune_size=60, max_train=40, max_test=16, max_length=24,
                              batch_size=8, test_data=["llmbar"], cache_dir=str(tmp_path / "c"), sandbox_workers=1)
    dm.setup("fit")
    rep = dm.label_report
    assert rep["source"] == "programs" and 0 < rep["train_rows"] <= 40 and rep["selected_programs"]
    t = dm.datasets["train"].target
    assert ((t >= 0) & (t <= 1)).all() and (t != 0.5).all()
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids_a"].shape[0] == 8 and batch["labels"].dtype == torch.long
    model = RewardModel(pretrained=False, config_overrides=tiny_encoder_overrides, lr=1e-3)
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dm)
    out = trainer.predict(model, dm.predict_dataloader())
    cols = collect_predictions([(o, None) for o in out])
    assert cols["probs"].shape == (16, 2) and torch.allclose(cols["probs"].sum(1), torch.ones(16))
    assert cols["pred"].shape == (16,) and cols["idx"].tolist() == list(range(16))
    with pytest.raises(Exception, match="labels"):
        PreferenceDataModule(labels="gold")


def test_reward_model_adamw_eps_reaches_the_optimizer_and_is_validated(tiny_encoder_overrides):
    """``eps`` (AdamW's epsilon; the shared DDP check raises it so that rounding on the directions the
    Bradley-Terry loss cannot see stays small) reaches every parameter group; the default stays PyTorch's 1e-8."""
    import lightning.pytorch as pl

    from lightning_ws.errors import ConfigError
    from lightning_ws.modules import RewardModel

    for eps in (None, 1e-3):
        kwargs = {} if eps is None else {"eps": eps}
        model = RewardModel(pretrained=False, config_overrides=tiny_encoder_overrides, schedule_steps=4, **kwargs)
        model.trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
        opt = model.configure_optimizers()["optimizer"]
        assert {g["eps"] for g in opt.param_groups} == {eps or 1e-8}
    for bad in (0.0, -1e-8, 1.0):
        with pytest.raises(ConfigError, match="eps"):
            RewardModel(pretrained=False, config_overrides=tiny_encoder_overrides, eps=bad)
