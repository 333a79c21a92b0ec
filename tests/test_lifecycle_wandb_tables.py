"""The configs' training runs log their data reports to W&B: the LF table and label-model report (weak supervision),
Weaver's selection table and accuracy-vs-N curve (distillation). Checked in offline W&B run folders."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from lightning_ws.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model.init_args.pretrained", "false", "--model.init_args.config_overrides",
        "{num_hidden_layers: 1, hidden_size: 32, intermediate_size: 64, num_attention_heads: 2}",
        "--data.init_args.batch_size", "4", "--data.init_args.max_length", "16", "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1", "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false", "--test_after_fit", "false", "--trainer.num_sanity_val_steps", "0"]


@pytest.mark.parametrize("config", ["ws_youtube", pytest.param("programs_youtube", marks=pytest.mark.slow)])
def test_ws_config_run_logs_lf_table_and_label_model_report(config, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    save_dir = tmp_path / "runs"
    code = main(["fit", "-c", str(REPO / "configs" / f"{config}.yaml"), *TINY,
                 "--trainer.logger.init_args.save_dir", str(save_dir)])
    assert code == 0, capsys.readouterr().err[-3000:]
    files = {str(p.relative_to(save_dir)) for p in save_dir.rglob("*.table.json")}
    assert any("labelmodel/report" in f for f in files), files
    assert any("labelmodel/lf_analysis" in f for f in files), files


def test_weaver_tables_from_a_distillation_data_module(tmp_path, monkeypatch):
    from lightning_ws.loggers import WSWandbLogger
    from lightning_ws.wandb_training import DataReportCallback, data_report_tables

    rng = np.random.default_rng(0)
    correct = rng.random((6, 4)) < 0.5
    targets = correct + rng.normal(0, 0.6, correct.shape)
    ds = SimpleNamespace(correct=correct, targets=targets)
    dm = SimpleNamespace(weaver_scores=targets, datasets={"train": ds, "val": ds})
    tables = data_report_tables(dm)
    assert set(tables) == {"weaver/selection", "weaver/accuracy_vs_n"}
    cols, rows = tables["weaver/accuracy_vs_n"]
    assert [r[0] for r in rows] == [1, 2, 3, 4]
    assert rows[-1][cols.index("oracle_pass_at_n")] == pytest.approx(correct.any(1).mean())
    pick = targets.argmax(1)
    assert tables["weaver/selection"][1][0][2] == pytest.approx(correct[np.arange(6), pick].mean())

    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WSWandbLogger(project="p", name="t", save_dir=str(tmp_path))
    cb = DataReportCallback()
    cb.on_train_start(SimpleNamespace(loggers=[logger], datamodule=dm), None)
    assert cb.logged == ["weaver/accuracy_vs_n", "weaver/accuracy_vs_n_plot", "weaver/selection"]
    logger.experiment.finish()
    files = {str(p) for p in tmp_path.rglob("*.table.json")}
    assert any("weaver/selection" in f for f in files) and any("weaver/accuracy_vs_n" in f for f in files), files
