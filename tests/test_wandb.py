"""W&B: offline by default, WANDB_MODE respected, config and metrics logged and readable from the offline run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_ws.cli import main
from lightning_ws.errors import ConfigError
from lightning_ws.loggers import resolve_wandb_mode
from lightning_ws.wandb_offline import find_offline_runs, read_offline_run

REPO = Path(__file__).resolve().parents[1]


def test_mode_resolution(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert resolve_wandb_mode(None) == "offline"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert resolve_wandb_mode(None) == "online"
    assert resolve_wandb_mode("offline") == "offline"  # the config switch wins over the environment
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert resolve_wandb_mode(None) == "offline"
    with pytest.raises(ConfigError, match="not a W&B mode"):
        resolve_wandb_mode("sometimes")


def test_log_model_needs_online():
    from lightning_ws.loggers import WSWandbLogger

    with pytest.raises(ConfigError, match="needs mode 'online'"):
        WSWandbLogger(mode="offline", log_model=True)


def test_offline_run_holds_config_and_metrics(tmp_path, monkeypatch, capsys, tiny_encoder_overrides):
    """A CLI fit with the default logger (mode from WANDB_MODE -> offline) writes a run we can read back."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    import wandb

    assert wandb.run is None, "a W&B run from another test is still open"
    save_dir = tmp_path / "runs"
    rc = main([
        "fit", "-c", str(REPO / "configs/quickstart.yaml"),
        "--model.init_args.pretrained", "false",
        "--model.init_args.config_overrides", json.dumps(tiny_encoder_overrides),
        "--trainer.max_epochs", "1", "--data.init_args.train_limit", "64", "--trainer.log_every_n_steps", "1",
        "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2", "--trainer.accelerator", "cpu",
        "--trainer.logger.init_args.save_dir", str(save_dir),
    ])
    assert rc == 0, capsys.readouterr().err[-2000:]
    out = capsys.readouterr().out
    assert "W&B run (offline)" in out
    runs = find_offline_runs(save_dir)
    assert len(runs) == 1
    run = read_offline_run(runs[0].parent, wait=60)
    assert run.complete
    # the resolved CLI config, logged once, and the module's hyperparameters
    assert run.config["config"]["model"]["class_path"] == "lightning_ws.modules.TextClassifier"
    assert run.config["config"]["data"]["init_args"]["train_limit"] == 64
    assert run.config["num_classes"] == 2 and run.config["pretrained"] is False
    # metrics: per-step training loss, validation and test metrics
    losses = run.metric("train/loss")
    assert len(losses) == 2 and all(0 < v < 10 for v in losses)
    assert 0.0 <= run.summary["val/acc"] <= 1.0
    assert 0.0 <= run.summary["test/acc"] <= 1.0
    metrics_file = Path(out.split("metrics file   :")[1].split()[0])
    assert json.loads(metrics_file.read_text())["test/acc"] == pytest.approx(run.summary["test/acc"])


def test_read_offline_run_errors(tmp_path):
    from lightning_ws.errors import DataError, DataFileNotFoundError

    with pytest.raises(DataFileNotFoundError):
        read_offline_run(tmp_path)
    bad = tmp_path / "run-x.wandb"
    bad.write_bytes(b"not a log")
    with pytest.raises(DataError, match="not a W&B transaction log"):
        read_offline_run(bad)


def _wait_for_run(root, timeout: float = 60.0) -> Path:
    """The folder of the one offline run under ``root`` (W&B's service may create the file a moment after finish)."""
    import time

    deadline = time.monotonic() + timeout
    while not find_offline_runs(root) and time.monotonic() < deadline:
        time.sleep(0.2)
    runs = find_offline_runs(root)
    assert len(runs) == 1, runs
    return runs[0].parent


def test_logger_passes_standard_wandb_options_through():
    from lightning_ws.loggers import WSWandbLogger

    lg = WSWandbLogger(mode="disabled", resume="never", config={"a": 1}, save_code=False, prefix="p",
                       init_kwargs={"reinit": "finish_previous"}, settings=None)
    assert lg._wandb_init["resume"] == "never" and lg._wandb_init["config"] == {"a": 1}
    assert lg._wandb_init["reinit"] == "finish_previous" and lg._prefix == "p"
    assert len(lg.version) == 8 and lg.version == lg._wandb_init["id"]  # the run id is known before W&B starts
    with pytest.raises(ConfigError, match="mode"):
        WSWandbLogger(init_kwargs={"mode": "online"})
    with pytest.raises(ConfigError, match="usable run id"):
        WSWandbLogger(id="../x")


def test_cli_passes_logger_resume_option(capsys):
    assert main(["fit", "-c", str(REPO / "configs/loki_digits.yaml"), "--trainer.logger.init_args.resume", "allow",
                 "--print_config"]) == 0
    assert "resume: allow" in capsys.readouterr().out


def test_run_failing_in_setup_is_marked_failed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    rc = main(["fit", "-c", str(REPO / "configs/gradmimic_digits.yaml"), "--trainer.callbacks=[]",
               "--model.init_args.input_dim", "32", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")])
    assert rc == 2 and "input_dim" in capsys.readouterr().err
    run = read_offline_run(_wait_for_run(tmp_path / "runs"), wait=60)
    assert run.complete and run.exit_code == 1


def test_labelmodel_wandb_logs_results_and_lf_tables(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main(["labelmodel", "youtube", "--models", "mv,mm", "--no-analysis", "--wandb"]) == 0
    run = read_offline_run(_wait_for_run("runs"), wait=60)
    assert run.complete and run.exit_code == 0 and run.config["command"] == "labelmodel"
    logged = {k.split("/_type")[0] for row in run.history for k in row if k.endswith("/_type")}
    assert {"labelmodel/results", "labelmodel/lf_analysis"} <= logged
    assert 0.5 < run.summary["labelmodel/moment_matching/accuracy"] <= 1.0
    assert any(f.endswith("labelmodel.json") for f in run.summary["files"])  # written into the run folder


def test_labelmodel_wandb_logs_a_model_that_refused_the_matrix_as_skipped(tmp_path, monkeypatch):
    # two LFs: moment matching refuses them; the run still completes and logs majority vote
    from tests.helpers.wrench import youtube_with_lfs

    monkeypatch.setenv("WANDB_MODE", "offline")
    folder = youtube_with_lfs(tmp_path / "yt2", [1, 4])
    assert main(["labelmodel", str(folder), "--models", "mv,mm", "--no-analysis", "--wandb"]) == 0
    run = read_offline_run(_wait_for_run("runs"), wait=60)
    assert run.complete and run.exit_code == 0
    assert 0.5 < run.summary["labelmodel/majority_vote/accuracy"] <= 1.0
    assert "labelmodel/moment_matching/accuracy" not in run.summary


def test_accuracy_vs_n_curve():
    import numpy as np

    from lightning_ws.wandb_report import accuracy_vs_n

    scores = np.array([[0.1, 0.9, 0.5], [0.8, 0.2, 0.3]])
    correct = np.array([[False, True, False], [False, False, True]])
    curve = accuracy_vs_n(scores, correct)
    assert [r["weaver_select_at_1"] for r in curve] == [0.0, 0.5, 0.5]
    assert [r["oracle_pass_at_n"] for r in curve] == [0.0, 0.5, 1.0]


def test_pop_wandb_flags():
    from lightning_ws.wandb_report import pop_wandb_flags

    assert pop_wandb_flags(["youtube", "--wandb", "--models", "mv"]) == (["youtube", "--models", "mv"], {})
    assert pop_wandb_flags(["youtube"]) == (["youtube"], None)
    assert pop_wandb_flags(["x", "--wandb_project=p"]) == (["x"], {"wandb_project": "p"})
