"""The lightning-ws CLI: every shipped config runs, --print_config round-trips, bad input gives a short error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lightning_ws.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
BASE_CONFIG = REPO / "configs" / "base" / "trainer.yaml"
BASE = ["-c", str(BASE_CONFIG)]  # the shared trainer/logger settings every shipped config composes with


def test_configs_exist():
    assert (REPO / "configs" / "quickstart.yaml") in CONFIGS


# Configs whose header documents a first step (e.g. training a reference model): run it, shortened, before the test.
PREREQUISITES: dict[str, list[str]] = {
    "gradmimic_digits": ["--trainer.callbacks=[]", "--data.init_args.noise_rate=0.0", "--seed_everything=123",
                         "--model.init_args.export_path=artifacts/gradmimic_digits_reference.safetensors",
                         "--trainer.max_epochs=1"],
}


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_config_runs_fast_dev_run(config, capsys):
    """Each shipped YAML parses, and `fit` runs one train/val batch (and the test after fit when configured)."""
    if config.stem in PREREQUISITES:
        assert main(["fit", *BASE, "-c", str(config), *PREREQUISITES[config.stem]]) == 0, \
            capsys.readouterr().err[-3000:]
    rc = main(["fit", *BASE, "-c", str(config), "--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu"])
    out = capsys.readouterr()
    assert rc == 0, out.err[-3000:]
    assert "lightning-ws fit: done" in out.out


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_print_config_round_trips(config, capsys, tmp_path):
    assert main(["fit", *BASE, "-c", str(config), "--print_config"]) == 0
    dumped = capsys.readouterr().out
    first = yaml.safe_load(dumped)
    assert "model" in first and "trainer" in first and "data" in first
    again = tmp_path / "dumped.yaml"
    again.write_text(dumped)
    assert main(["fit", "-c", str(again), "--print_config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == first


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_does_not_copy_the_base(config):
    """A shipped config sets only what differs from configs/base/trainer.yaml (no copied trainer/logger block)."""
    base = _flatten(yaml.safe_load(BASE_CONFIG.read_text()))
    own = _flatten(yaml.safe_load(config.read_text()))
    copied = sorted(k for k, v in own.items() if k in base and base[k] == v and k != "trainer.logger.class_path")
    assert not copied, f"{config.name} repeats {copied} from configs/base/trainer.yaml; drop them"


def test_base_config_is_composed(capsys):
    """With the base first, a method config inherits its trainer/logger settings and overrides its own keys."""
    assert main(["fit", *BASE, "-c", str(REPO / "configs" / "quickstart.yaml"), "--print_config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["trainer"]["log_every_n_steps"] == 10 and cfg["trainer"]["devices"] == 1
    assert cfg["trainer"]["logger"]["init_args"]["name"] == "quickstart"  # the method config's
    assert cfg["trainer"]["logger"]["init_args"]["project"] == "lightning-ws"  # the base's


@pytest.mark.parametrize("explicit", [False, True], ids=["implicit-base", "explicit-base"])
def test_single_config_gets_the_base(capsys, explicit):
    """`lightning-ws fit -c configs/<x>.yaml` alone starts from the base (the parser's default config file), and
    composing the base explicitly gives the same resolved config."""
    args = [*BASE] if explicit else []
    assert main(["fit", *args, "-c", str(REPO / "configs" / "quickstart.yaml"), "--print_config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["trainer"]["log_every_n_steps"] == 10 and cfg["trainer"]["precision"] == "32-true"
    assert cfg["trainer"]["logger"]["class_path"] == "lightning_ws.loggers.WSWandbLogger"
    assert cfg["trainer"]["logger"]["init_args"]["project"] == "lightning-ws"
    assert cfg["trainer"]["logger"]["init_args"]["name"] == "quickstart"


def test_base_config_file_is_the_packaged_one():
    from lightning_ws.cli import BASE_TRAINER_CONFIG

    assert BASE_TRAINER_CONFIG.is_file() and BASE_CONFIG.resolve() == BASE_TRAINER_CONFIG


def _error(capsys, args):
    rc = main(args)
    err = capsys.readouterr().err
    assert rc != 0
    assert "Traceback" not in err
    assert "error:" in err
    paragraph = err[err.index("lightning-ws"):].strip().splitlines() if "lightning-ws" in err else []
    assert 1 <= len(paragraph) <= 4, err  # one paragraph, not a 200-line traceback
    return err


def test_missing_config_file(capsys):
    err = _error(capsys, ["fit", "-c", "does/not/exist.yaml"])
    assert "config file not found: does/not/exist.yaml" in err


def test_unknown_class_path(capsys):
    err = _error(capsys, ["fit", "-c", str(REPO / "configs/quickstart.yaml"),
                          "--model.class_path", "lightning_ws.modules.NoSuchModel"])
    assert "NoSuchModel" in err and "class_path" in err


def test_missing_data_file(capsys, tmp_path):
    err = _error(capsys, ["fit", "-c", str(REPO / "configs/quickstart.yaml"),
                          "--data.init_args.dataset", str(tmp_path / "no_such_dataset")])
    assert "no_such_dataset" in err and "neither a shipped data set" in err


def test_unknown_option_and_command(capsys):
    err = _error(capsys, ["fit", "-c", str(REPO / "configs/quickstart.yaml"), "--trainer.max_epochz", "3"])
    assert "max_epochz" in err
    assert main(["no-such-command"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("fit", "validate", "test", "predict", *COMMANDS):
        assert name in out


def test_console_script_is_installed(tmp_path):
    """The `lightning-ws` entry point exists and reports a missing config as a short error."""
    exe = Path(sys.executable).with_name("lightning-ws")
    assert exe.is_file(), "install the package (pip install -e .) so the console script exists"
    proc = subprocess.run([str(exe), "fit", "-c", "missing.yaml"], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "WANDB_MODE": "disabled"}, timeout=120)
    assert proc.returncode == 2 and "config file not found" in proc.stderr and "Traceback" not in proc.stderr


def test_fit_then_test_writes_summary_and_checkpoint(tmp_path, capsys, tiny_encoder_overrides):
    """A short real fit: test metric printed, checkpoint and metrics file written where the summary says."""
    rc = main([
        "fit", "-c", str(REPO / "configs/quickstart.yaml"),
        "--model.init_args.pretrained", "false",
        "--model.init_args.config_overrides", json.dumps(tiny_encoder_overrides),
        "--trainer.max_epochs", "1", "--data.init_args.train_limit", "96",
        "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2",
        "--trainer.accelerator", "cpu", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
    ])
    out = capsys.readouterr().out
    assert rc == 0
    assert "test/acc" in out and "best checkpoint:" in out
    ckpt = out.split("best checkpoint:")[1].split()[0]
    assert Path(ckpt).is_file()
    metrics_file = Path(out.split("metrics file   :")[1].split()[0])
    metrics = json.loads(metrics_file.read_text())
    assert 0.0 <= metrics["test/acc"] <= 1.0
    config = next((tmp_path / "runs").glob("lightning-ws/*/config.yaml"))
    assert yaml.safe_load(config.read_text())["model"]["class_path"] == "lightning_ws.modules.TextClassifier"
