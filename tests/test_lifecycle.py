"""Resume a user can rely on: RNG states in the checkpoint (dropout on), stateful loaders, CLI kill-and-resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from lightning_ws.datamodules import TextClassificationDataModule
from lightning_ws.modules import TextClassifier
from tests.helpers.resume import assert_resume_equivalent, assert_state_equal
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


# ------------------------------------------------------------------------------------------- the CLI, killed and resumed
REPO = Path(__file__).resolve().parents[1]
TINY = [str(REPO / "configs" / "quickstart.yaml"), str(REPO / "tests" / "configs" / "quickstart_tiny.yaml")]


def _cli(args: list[str], cwd: Path, mode: str = "offline") -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": mode, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lightning_ws.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def _fit_args(save_dir: Path) -> list[str]:
    return ["fit", "-c", TINY[0], "-c", TINY[1], "--trainer.logger.init_args.save_dir", str(save_dir)]


def _run_folder(save_dir: Path) -> Path:
    folders = [p.parent for p in (save_dir / "lightning-ws").glob("*/run.json")]
    assert len(folders) == 1, folders
    return folders[0]


@pytest.mark.slow
def test_cli_kill_mid_epoch_and_resume_with_ckpt_path_last(tmp_path):
    """Done-when: SIGKILL mid-epoch, `fit --ckpt_path last`, and the run ends as the uninterrupted one did."""
    full = _cli(_fit_args(tmp_path / "full"), tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]

    kill = json.dumps({"class_path": "tests.helpers.kill.KillAtStep", "init_args": {"step": 6}})  # epoch 2, batch 3 of 4
    first = _cli([*_fit_args(tmp_path / "resumed"), f"--trainer.callbacks+={kill}"], tmp_path)
    assert first.returncode == -signal.SIGKILL, (first.returncode, first.stderr[-3000:])
    run = _run_folder(tmp_path / "resumed")
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6

    second = _cli([*_fit_args(tmp_path / "resumed"), "--ckpt_path", "last"], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"using run 'quickstart' ({run.name})" in second.stderr
    assert "not resumable" not in second.stderr
    assert _run_folder(tmp_path / "resumed") == run  # same folder: no second run was started

    a = torch.load(_run_folder(tmp_path / "full") / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 8
    assert_state_equal(a["state_dict"], b["state_dict"], path="params")
    assert_state_equal(a["optimizer_states"], b["optimizer_states"], path="optimizer")
    for key in a["callbacks"]:  # RNG states, ModelCheckpoint scores (paths differ by folder)
        if key.startswith(("ModelCheckpoint", "LastCheckpoint")):
            assert a["callbacks"][key].get("best_model_score") == b["callbacks"][key].get("best_model_score")
        else:
            assert_state_equal(a["callbacks"][key], b["callbacks"][key], path=key)
    full_metrics = json.loads((_run_folder(tmp_path / "full") / "metrics-fit.json").read_text())
    resumed_metrics = json.loads((run / "metrics-fit.json").read_text())
    assert full_metrics == resumed_metrics and "val/acc" in full_metrics

    # the same W&B run: two offline segments with the run's id, which `wandb sync` joins
    from lightning_ws.wandb_offline import find_offline_runs

    ids = {p.stem.removeprefix("run-") for p in find_offline_runs(tmp_path / "resumed")}
    assert ids == {run.name}
    assert len(find_offline_runs(tmp_path / "resumed")) == 2


def test_cli_crash_mid_epoch_then_ckpt_path_last_matches_uninterrupted(tmp_path, capsys):
    """In-process variant of the kill test (fast): a crash mid-epoch 2 (step 6 of 8), then `--ckpt_path last`, dropout on."""
    from lightning_ws.cli import main

    assert main(_fit_args(tmp_path / "full")) == 0
    crash = json.dumps({"class_path": "tests.helpers.kill.CrashAtStep", "init_args": {"step": 6}})
    with pytest.raises(RuntimeError, match="simulated crash"):
        main([*_fit_args(tmp_path / "resumed"), f"--trainer.callbacks+={crash}"])
    run = _run_folder(tmp_path / "resumed")
    capsys.readouterr()
    assert main([*_fit_args(tmp_path / "resumed"), "--ckpt_path", "last"]) == 0
    assert f"({run.name})" in capsys.readouterr().err
    a = torch.load(_run_folder(tmp_path / "full") / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 8
    assert_state_equal(a["state_dict"], b["state_dict"], path="params")
    assert_state_equal(a["callbacks"]["RNGStateCallback"], b["callbacks"]["RNGStateCallback"], path="rng")
    assert json.loads((run / "metrics-fit.json").read_text()) == json.loads(
        (_run_folder(tmp_path / "full") / "metrics-fit.json").read_text())
