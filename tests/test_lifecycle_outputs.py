"""predict writes a predictions file for every module; export writes safetensors / merged / adapter / HF / PEFT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_ws.cli import main
from lightning_ws.export import export_checkpoint

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
TINY = ["-c", str(REPO / "configs" / "quickstart.yaml"), "-c", str(REPO / "tests" / "configs" / "quickstart_tiny.yaml")]


def _predictions(out: str) -> Path:
    return Path(out.split("predictions    :")[1].split()[0])


# The MiniLM configs load a 90 MB encoder each: slow tier; the digits configs run in the default suite.
_FAST_CONFIGS = ("gradmimic_digits", "loki_digits")
PREDICT_PARAMS = [pytest.param(c, id=c.stem, marks=() if c.stem in _FAST_CONFIGS else pytest.mark.slow) for c in CONFIGS]


@pytest.mark.parametrize("config", PREDICT_PARAMS)
def test_predict_writes_predictions_for_every_config(config, capsys):
    """Every shipped config predicts (untrained on purpose here) and writes ids, probabilities/scores, predictions."""
    args = ["predict", "-c", str(config), "--allow_untrained", "true", "--trainer.limit_predict_batches", "1",
            "--trainer.accelerator", "cpu", "--trainer.callbacks=[]"]
    assert main(args) == 0, capsys.readouterr().err[-3000:]
    path = _predictions(capsys.readouterr().out)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows and all("id" in r for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)
    assert all("pred" in r or "score" in r for r in rows)
    if "probs" in rows[0]:
        assert all(abs(sum(r["probs"]) - 1) < 1e-4 and r["pred"] == max(range(len(r["probs"])),
                                                                          key=r["probs"].__getitem__) for r in rows)
    assert (path.stat().st_mode & 0o777) == 0o644 or (path.stat().st_mode & 0o077) != 0  # not 0600


def test_test_and_predict_need_a_checkpoint(capsys):
    assert main(["test", *TINY]) == 2
    err = capsys.readouterr().err
    assert "needs --ckpt_path" in err and "--allow_untrained" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 2-step quickstart-shaped fit (tiny encoder): its run folder."""
    root = tmp_path_factory.mktemp("run")
    assert main(["fit", *TINY, "--trainer.max_steps", "2", "--trainer.logger.init_args.save_dir", str(root)]) == 0
    return next((root / "lightning-ws").glob("*/run.json")).parent


def test_predict_with_ckpt_path_last_writes_into_the_run(tiny_run, capsys, monkeypatch):
    monkeypatch.chdir(tiny_run.parents[2])
    save_dir = str(tiny_run.parents[1])
    assert main(["predict", *TINY, "--ckpt_path", "last", "--trainer.logger.init_args.save_dir", save_dir]) == 0
    path = _predictions(capsys.readouterr().out)
    assert path.parent == tiny_run  # same run folder as the fit
    from lightning_ws.io import load_tensors

    tensors, meta = load_tensors(path.with_suffix(".safetensors"))
    assert set(tensors) >= {"id", "probs", "pred"} and int(meta["rows"]) == len(tensors["id"]) > 0


def test_export_formats_of_a_text_classifier(tiny_run, tmp_path):
    from transformers import AutoModel

    from lightning_ws.io import load_tensors
    from lightning_ws.modules import TextClassifier

    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    model = TextClassifier.load_from_checkpoint(str(ckpt), map_location="cpu").eval()
    full = export_checkpoint(ckpt, tmp_path / "st")
    tensors, _ = load_tensors(full / "model.safetensors")
    assert all(torch.equal(tensors[k], v) for k, v in model.state_dict().items())
    assert json.loads((full / "export.json").read_text())["model_class"].endswith("TextClassifier")

    hf = export_checkpoint(ckpt, tmp_path / "hf", "hf")
    encoder = AutoModel.from_pretrained(str(hf), local_files_only=True).eval()
    head, _ = load_tensors(hf / "head.safetensors")
    ids = torch.tensor([[101, 2023, 2003, 102]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        pooled = (encoder(input_ids=ids, attention_mask=mask).last_hidden_state * mask[..., None]).sum(1) / mask.sum()
        logits = pooled @ head["classifier.weight"].T + head["classifier.bias"]
        assert torch.allclose(logits, model(ids, mask), atol=1e-5)
    with pytest.raises(Exception, match="no adapter"):
        export_checkpoint(ckpt, tmp_path / "ad", "adapter")
    with pytest.raises(Exception, match="not an empty folder"):
        export_checkpoint(ckpt, full)


def test_export_cli_and_lora_peft_folder_loads_with_plain_peft(tmp_path, capsys):
    """A LoRA PeftSequenceClassifier: --format peft loads with peft.PeftModel.from_pretrained, same logits."""
    import lightning.pytorch as pl
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from lightning_ws.checkpoints import CheckpointInfoCallback
    from lightning_ws.datamodules import TextClassificationDataModule
    from lightning_ws.modules.more import PeftSequenceClassifier

    over = {"num_hidden_layers": 1}
    model = PeftSequenceClassifier(adapter="lora", lora_r=4, config_overrides=over, lr=1e-2)
    trainer = pl.Trainer(max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, callbacks=[CheckpointInfoCallback()], limit_val_batches=0)
    trainer.fit(model, TextClassificationDataModule("youtube", batch_size=4, train_limit=8, max_length=16))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    assert main(["export", "--ckpt_path", str(tmp_path / "m.ckpt"), "--format", "peft", "--out",
                 str(tmp_path / "peft")]) == 0
    base = AutoModelForSequenceClassification.from_pretrained(
        json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["base_model_name_or_path"],
        num_labels=2, local_files_only=True, **over)
    loaded = PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    ids = torch.tensor([[101, 2023, 2003, 102]])
    model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, model(ids), atol=1e-5)
    assert main(["export", "--ckpt_path", str(tmp_path / "m.ckpt"), "--format", "merged", "--out",
                 str(tmp_path / "merged")]) == 0
    from lightning_ws.io import load_tensors

    merged, _ = load_tensors(tmp_path / "merged" / "model.safetensors")
    assert not any("lora" in k for k in merged)


def test_gradmimic_cli_writes_per_epoch_outputs_and_reports_unseen_samples(tmp_path, capsys):
    """Grad-Mimic from the CLI keeps its main output: per-sample scores, weights, keep mask, quality (seen only)."""
    from lightning_ws.io import load_tensors

    gm = str(REPO / "configs" / "gradmimic_digits.yaml")
    ref = str(tmp_path / "ref.safetensors")
    assert main(["fit", "-c", gm, "--trainer.callbacks=[]", "--data.init_args.noise_rate=0.0", "--seed_everything=123",
                 f"--model.init_args.export_path={ref}", "--trainer.max_epochs=1"]) == 0
    save_dir = tmp_path / "runs"
    assert main(["fit", "-c", gm, "--trainer.callbacks.init_args.reference", ref, "--trainer.max_epochs", "2",
                 "--trainer.limit_train_batches", "5", "--trainer.logger.init_args.save_dir", str(save_dir)]) == 0
    folder = next(save_dir.glob("lightning-ws/*/gradmimic"))
    summary = json.loads((folder / "latest.json").read_text())
    assert summary["epoch"] == 1 and (folder / "epoch-0.json").is_file()
    tensors, _ = load_tensors(folder / summary["tensors"])
    seen = tensors["seen"]
    assert summary["samples"] == len(seen) and summary["samples_unseen"] == int((~seen).sum()) > 0
    assert torch.all(tensors["keep"][~seen] == -1) and torch.isnan(tensors["mean_relative_weight"][~seen]).all()
    kept = int((tensors["keep"][seen] == 1).sum())
    assert summary["quality_seen"] == pytest.approx(kept / int(seen.sum()))
    assert len(tensors["log_idx"]) == 2 * 5 * 32  # every (sample, epoch) the callback scored


@pytest.mark.parametrize("extra", [["--trainer.logger", "false"], ["--trainer.fast_dev_run", "true"]],
                         ids=["logger-false", "fast-dev-run"])
def test_runs_without_logger_do_not_write_into_the_working_folder(extra, tmp_path, monkeypatch, capsys):
    import os

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    args = ["fit", "-c", str(REPO / "configs" / "loki_digits.yaml"), "--trainer.max_epochs", "1", *extra]
    assert main(args) == 0, capsys.readouterr().err[-2000:]
    assert sorted(os.listdir(work)) in ([], ["runs"])
    files = [p for p in work.rglob("*") if p.is_file()]
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~_umask() for p in files if "wandb" not in p.parts)
    if extra[0] == "--trainer.logger":
        assert (work / "runs" / "no-logger" / "checkpoints" / "last.ckpt").is_file()
        assert (work / "runs" / "no-logger" / "config.yaml").is_file()


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_teacher_metric_logged_beside_the_student():
    """Weaver distillation: val/test teacher select@1 (the Weaver scores' own) is logged next to the student's."""
    from tests.test_weaver_distill import _trainer, make_dm, tiny_model

    from lightning_ws.callbacks.teacher import TeacherBaselineCallback
    from lightning_ws.weaver import load_gsm8k_verification

    vdata = load_gsm8k_verification(verifiers="heuristic").subset(np.arange(36))
    dm = make_dm(vdata)
    trainer = _trainer(max_epochs=1, limit_train_batches=2, callbacks=[TeacherBaselineCallback()])
    model = tiny_model()
    trainer.fit(model, dm)
    assert trainer.callback_metrics["val/teacher_select_acc"] == pytest.approx(dm.weaver_selection_accuracy("val"))
    res = trainer.test(model, dm, verbose=False)[0]
    assert res["test/teacher_select_acc"] == pytest.approx(dm.weaver_selection_accuracy("test"))
    assert "test/select_acc" in res
