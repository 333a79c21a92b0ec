"""Every shipped config: ``fit`` (a few steps) -> ``predict --ckpt_path last`` -> ``export``, through the CLI.

Configs are discovered by glob (``configs/*.yaml``), so a new config is covered the day it lands. The default tier runs
each config with tiny overrides (a 1-layer random 32-wide encoder for the MiniLM text models, a 1-layer pretrained one
for the PEFT classifier, small batches, two training batches, one validation batch); the ``slow`` tier runs the
configs' own models and batch sizes (only the number of batches is limited). Each run must leave
``checkpoints/last.ckpt`` in its run folder (so ``--ckpt_path last`` continues it), a predictions file with one row per
example (ids, probabilities/scores, predictions), and exports that load back to the checkpoint's weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from lightning_ws.cli import main
from lightning_ws.export import export_checkpoint

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
TINY_ENCODER = "{num_hidden_layers: 1, hidden_size: 32, intermediate_size: 64, num_attention_heads: 2}"

# few batches of everything; validation once at the end of the (only) epoch
TRAINER = ["--trainer.max_epochs", "1", "--trainer.max_steps", "-1", "--trainer.limit_train_batches", "2",
           "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1", "--trainer.limit_predict_batches",
           "2", "--trainer.num_sanity_val_steps", "0", "--trainer.val_check_interval", "1.0",
           "--trainer.check_val_every_n_epoch", "1", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
           "--trainer.precision", "32-true", "--trainer.enable_progress_bar", "false", "--test_after_fit", "false"]


# Configs that need a first step (their header says so): the arguments of that step, run in the test's folder.
PREPARE = {
    "gradmimic_digits": ["--trainer.callbacks=[]", "--data.init_args.noise_rate=0.0", "--seed_everything=123",
                         "--model.init_args.export_path=artifacts/gradmimic_digits_reference.safetensors"],
}


def _model_class(config: Path) -> str:
    cfg = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    model = cfg.get("model") or {}
    return str(model.get("class_path", "")) if isinstance(model, dict) else ""


def _data_args(config: Path) -> dict[str, Any]:
    """The config's data ``init_args``, plus the data class's other parameters (value ``None``) that it accepts."""
    import importlib
    import inspect

    cfg = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    data = cfg.get("data") or {}
    if not isinstance(data, dict):
        return {}
    args = dict(data.get("init_args") or {})
    module, _, name = str(data.get("class_path", "")).rpartition(".")
    try:
        params = inspect.signature(getattr(importlib.import_module(module), name).__init__).parameters
    except (ImportError, AttributeError, ValueError):
        return args
    return {**{p: None for p in params if p != "self"}, **args}


def _tiny(config: Path) -> list[str]:
    """Overrides that make ``config`` cheap without changing what it exercises."""
    model, data = _model_class(config).rsplit(".", 1)[-1], _data_args(config)
    out: list[str] = []
    if model in ("TextClassifier", "WeaverCrossEncoder"):
        out += ["--model.init_args.pretrained", "false", "--model.init_args.config_overrides", TINY_ENCODER]
    elif model == "PeftSequenceClassifier":  # MoRe needs the real hidden size for its blocks: 1 pretrained layer
        out += ["--model.init_args.config_overrides", "{num_hidden_layers: 1}"]
    for key, value in (("batch_size", "4"), ("max_length", "16"), ("batch_problems", "2"),
                       ("eval_batch_problems", "2"), ("max_problems", "12"), ("val_batch_size", "16"),
                       ("train_limit", "200")):
        if key in data:
            out += [f"--data.init_args.{key}", value]
    return out


def _cli(args: list[str], capsys) -> str:
    code = main(args)
    captured = capsys.readouterr()
    assert code == 0, (captured.out[-3000:], captured.err[-6000:])
    return captured.out


def _check_predictions(path: Path) -> None:
    from lightning_ws.io import load_tensors

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert rows and all("id" in r for r in rows)
    assert len({json.dumps(r["id"]) for r in rows}) == len(rows), "duplicate ids"
    assert all("pred" in r or "score" in r for r in rows)
    if "probs" in rows[0]:
        for r in rows:
            assert abs(sum(r["probs"]) - 1) < 1e-4
            assert r["pred"] == max(range(len(r["probs"])), key=r["probs"].__getitem__)
    tensors, meta = load_tensors(path.with_suffix(".safetensors"))
    assert int(meta["rows"]) == len(rows) and "id" in tensors


def _check_exports(ckpt: Path, out: Path) -> list[str]:
    from lightning_ws.io import load_tensors

    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    folder = export_checkpoint(ckpt, out / "safetensors")
    tensors, _ = load_tensors(folder / "model.safetensors")
    assert set(state) <= set(tensors)  # adapter modules checkpoint only trained tensors; the export is complete
    assert all(torch.equal(tensors[k], state[k]) for k in state)
    info = json.loads((folder / "export.json").read_text(encoding="utf-8"))
    assert info["format"] == "safetensors" and info["model_class"]
    done = ["safetensors"]
    model = info["model_class"].rsplit(".", 1)[-1]
    if model in ("TextClassifier", "WeaverCrossEncoder", "PeftSequenceClassifier"):
        hf = export_checkpoint(ckpt, out / "hf", "hf")
        assert (hf / "config.json").is_file() and (hf / "model.safetensors").is_file()
        done.append("hf")
    if info["hyper_parameters"].get("adapter", "none") not in ("none", None):
        adapter = export_checkpoint(ckpt, out / "adapter", "adapter")
        small, _ = load_tensors(adapter / "adapter.safetensors")
        assert small and len(small) < len(tensors)
        merged = export_checkpoint(ckpt, out / "merged", "merged")
        full, _ = load_tensors(merged / "model.safetensors")
        assert not any("more_" in k or "lora_" in k for k in full)
        done += ["adapter", "merged"]
    return done


def _fit_predict_export(config: Path, tmp_path: Path, capsys, extra: list[str]) -> list[str]:
    if config.stem in PREPARE:
        _cli(["fit", "-c", str(config), *TRAINER, *extra, *PREPARE[config.stem],
              "--trainer.logger.init_args.save_dir", str(tmp_path / "prepare")], capsys)
    save_dir = tmp_path / "runs"
    common = ["-c", str(config), *TRAINER, *extra, "--trainer.logger.init_args.save_dir", str(save_dir)]
    _cli(["fit", *common], capsys)
    runs = [p.parent for p in save_dir.glob("*/*/run.json")]
    assert len(runs) == 1, runs
    run = runs[0]
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file(), f"no last.ckpt in {run}: {sorted(p.name for p in run.rglob('*.ckpt'))}"
    loops = torch.load(last, map_location="cpu", weights_only=False)["loops"]["fit_loop"]["state_dict"]
    # Lightning stores a state only for loaders it can resume mid-epoch (state_dict/load_state_dict): one per loader
    assert loops.get("combined_loader"), "the training loader is not resumable (Lightning would warn on resume)"
    out = _cli(["predict", *common, "--ckpt_path", "last"], capsys)
    path = Path(out.split("predictions    :")[1].split()[0])
    assert path.parent == run, "predictions outside the run folder"
    _check_predictions(path)
    return _check_exports(last, tmp_path / "export")


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_fit_predict_export_tiny(config, tmp_path, capsys):
    formats = _fit_predict_export(config, tmp_path, capsys, _tiny(config))
    assert "safetensors" in formats


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_fit_predict_export_full_models(config, tmp_path, capsys):
    formats = _fit_predict_export(config, tmp_path, capsys, [])
    assert "safetensors" in formats
