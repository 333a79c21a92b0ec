"""The DataComp / CLIP configs and commands through the ``lightning-ws`` CLI, end to end on a tiny pool."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

import pytest

from lightning_ws.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_pool_fit_predict_filter_through_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    pool = tmp_path / "pool"
    assert main(["datacomp", "build-pool", "--out", str(pool), "--limit", "60", "--samples-per-shard", "32"]) == 0
    assert len(list(pool.glob("*.tar"))) == 3

    # CLIP training from configs/clip_datacomp.yaml (W&B offline, example images with captions at step 0)
    rc = main(["fit", "-c", str(REPO / "configs/clip_datacomp.yaml"), "--data.init_args.train_shards", str(pool),
               "--data.init_args.batch_size", "16", "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
               "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false",
               "--model.init_args.log_images_every_n_steps", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "val/zeroshot_acc" in out and "val/t2i_R@5" in out
    ckpts = sorted((tmp_path / "runs").rglob("last.ckpt"))
    assert ckpts, "no checkpoint written"
    media = list((tmp_path / "runs").rglob("*.png"))
    assert media, "no W&B example images logged"

    # filter signals with Lightning predict from configs/predict/clip_signals.yaml
    cfg = yaml.safe_load((REPO / "configs/predict/clip_signals.yaml").read_text())
    cache = tmp_path / "signals"
    cfg["model"]["init_args"]["clip"] = str(ckpts[0])
    cfg["data"]["init_args"].update(shards=str(pool), cache_dir=str(cache), batch_size=32)
    cfg["trainer"]["callbacks"][0]["init_args"]["cache_dir"] = str(cache)
    cfg["trainer"]["enable_progress_bar"] = False
    (tmp_path / "signals.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["predict", "-c", str(tmp_path / "signals.yaml")]) == 0
    assert len(list(cache.glob("*.signals.safetensors"))) == 3

    # ensemble -> uids, report with truth metrics, filtered shards
    rc = main(["datacomp", "filter", "--cache", str(cache), "--out", str(tmp_path / "keep.npy"), "--shards", str(pool),
               "--filtered-out", str(tmp_path / "filtered"), "--report", str(tmp_path / "report.json")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| ensemble (dawid_skene) |" in out and "| single: clip_score" in out
    uids = np.load(tmp_path / "keep.npy")
    assert uids.dtype == np.dtype("u8,u8") and 0 < len(uids) <= 69
    assert (tmp_path / "report.json").is_file() and list((tmp_path / "filtered").glob("*.tar"))


def test_datacomp_filter_without_cache_is_a_clear_error(tmp_path, capsys):
    assert main(["datacomp", "filter", "--cache", str(tmp_path), "--out", str(tmp_path / "u.npy")]) != 0
    assert "run `lightning-ws datacomp signals` first" in capsys.readouterr().err


def test_clip_config_fits_through_the_cli(tmp_path, capsys):
    pool = tmp_path / "pool"
    assert main(["datacomp", "build-pool", "--out", str(pool), "--limit", "30", "--samples-per-shard", "16"]) == 0
    rc = main(["fit", "-c", str(REPO / "configs/clip_datacomp.yaml"), "--data.init_args.train_shards", str(pool),
               "--data.init_args.batch_size", "8", "--data.init_args.retrieval", "null", "--trainer.max_steps", "1",
               "--trainer.val_check_interval", "1", "--trainer.limit_val_batches", "1", "--trainer.logger", "false",
               "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false",
               "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"])
    assert rc == 0
    assert "val/zeroshot_acc" in capsys.readouterr().out


def test_clip_rnb_config_fits_through_the_cli(tmp_path):
    """configs/clip_rnb.yaml: two domain folders, RnBCallback moves the mixture, the data module follows it."""
    import torch

    for name, noise in (("clean", ["--mismatch", "0", "--junk", "0", "--blank", "0", "--near-duplicate", "0"]),
                        ("noisy", ["--mismatch", "0.5", "--junk", "0.3"])):
        assert main(["datacomp", "build-pool", "--out", str(tmp_path / name), "--limit", "24",
                     "--samples-per-shard", "8", "--seed", "1" if name == "clean" else "2", *noise]) == 0
    cfg = yaml.safe_load((REPO / "configs/clip_rnb.yaml").read_text())
    cfg["data"]["init_args"].update(train_shards={"clean": str(tmp_path / "clean"), "noisy": str(tmp_path / "noisy")},
                                    batch_size=8, zeroshot=None, retrieval=None)
    cfg["trainer"]["callbacks"][0]["init_args"]["steps_per_round"] = 2
    cfg["trainer"].update(max_steps=4, logger=False, default_root_dir=str(tmp_path), enable_progress_bar=False,
                          limit_val_batches=0)
    (tmp_path / "rnb.yaml").write_text(yaml.safe_dump(cfg))
    rc = main(["fit", "-c", str(tmp_path / "rnb.yaml")])
    assert rc == 0
    ckpt = torch.load(next(tmp_path.rglob("last.ckpt")), map_location="cpu", weights_only=False)
    rnb = next(v for k, v in ckpt["callbacks"].items() if k.startswith("RnBCallback"))
    p = torch.as_tensor(rnb["p"]).double()
    assert p.shape == (2,) and (p - 0.5).abs().max() > 1e-3  # R&B changed the mixture
    dm_state = ckpt["WebDatasetDataModule"]
    assert torch.allclose(torch.tensor(dm_state["mixture_schedule"]["rows"][-1][2:]).double(), p, atol=1e-6)


def test_signal_predict_config_runs_through_the_cli(tmp_path):
    """configs/predict/clip_signals.yaml through `lightning-ws predict` (rules only: no CLIP checkpoint needed)."""
    pool = tmp_path / "pool"
    assert main(["datacomp", "build-pool", "--out", str(pool), "--limit", "20", "--samples-per-shard", "8"]) == 0
    cache = tmp_path / "signals"
    rc = main(["predict", "-c", str(REPO / "configs/predict/clip_signals.yaml"), "--data.init_args.shards", str(pool),
               "--data.init_args.cache_dir", str(cache), "--data.init_args.clip_image_size", "null",
               "--trainer.callbacks.init_args.cache_dir", str(cache), "--trainer.enable_progress_bar", "false"])
    assert rc == 0
    assert len(list(cache.glob("*.signals.safetensors"))) == len(list(pool.glob("*.tar"))) == 3
