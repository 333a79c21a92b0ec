"""Under DDP each rank's random-generator states are saved and each rank restores its own (2-process gloo).

The model draws a rank-dependent number of random values per step (as per-rank augmentation would) and has dropout,
so rank 1's generator stream differs from rank 0's. A 2-process run interrupted mid-epoch and resumed from its
checkpoint must end with the same parameters and, on every rank, the same generator states as the uninterrupted run.
With rank 0's states restored on every rank (the previous behaviour) rank 1's stream would continue from rank 0's.

Run directly as ``python -m tests.test_resume_rng_ddp SPEC.json`` (the worker; Lightning relaunches it per rank).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _worker(spec_file: str) -> None:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from safetensors.torch import save_file

    from lightning_ws.resume import RNGStateCallback
    from tests.helpers.tiny import TinyClassifier, TinyDataModule

    class RankNoisy(TinyClassifier):
        def training_step(self, batch, batch_idx):
            torch.rand(1 + 2 * self.global_rank)  # rank-dependent draws: the ranks' streams diverge
            np.random.rand(1 + self.global_rank)
            random.random()
            return super().training_step(batch, batch_idx)

    class StopAt(pl.Callback):
        def __init__(self, step: int) -> None:
            self.step = step

        def on_train_batch_end(self, trainer, *args: Any) -> None:
            if trainer.global_step >= self.step:
                trainer.should_stop = True

    spec = json.loads(Path(spec_file).read_text())
    out = Path(spec["out"])
    pl.seed_everything(0)
    model, dm = RankNoisy(dropout=0.3), TinyDataModule(n=64, batch_size=4)
    callbacks: list[pl.Callback] = [RNGStateCallback()]
    if spec.get("stop_at"):
        callbacks += [ModelCheckpoint(dirpath=out, filename="interrupt", every_n_train_steps=spec["stop_at"],
                                      save_top_k=-1, save_last=False), StopAt(spec["stop_at"])]
    trainer = pl.Trainer(max_steps=spec["max_steps"], max_epochs=-1, accelerator="cpu", devices=2, strategy="ddp",
                         deterministic=True, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=bool(spec.get("stop_at")), num_sanity_val_steps=0, limit_val_batches=0,
                         callbacks=callbacks, default_root_dir=str(out))
    trainer.fit(model, dm, ckpt_path=spec.get("ckpt"))
    rank = trainer.global_rank
    tensors = {f"param.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(np.random.get_state()[1], dtype=np.int64))
    tensors["rng.python"] = torch.tensor(random.getstate()[1], dtype=torch.int64)
    save_file(tensors, str(out / f"rank{rank}.safetensors"))


def _run(tmp: Path, name: str, **spec: Any) -> list[dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    out = tmp / name
    out.mkdir(parents=True)
    spec_file = out / "spec.json"
    spec_file.write_text(json.dumps({"out": str(out), **spec}))
    env = {k: v for k, v in os.environ.items()
           if k not in ("MASTER_PORT", "MASTER_ADDR", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["WANDB_MODE"] = "disabled"
    proc = subprocess.run([sys.executable, "-m", "tests.test_resume_rng_ddp", str(spec_file)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return [load_file(str(out / f"rank{r}.safetensors")) for r in range(2)]


@pytest.mark.ddp
@pytest.mark.slow  # three 2-process fits (~40-60 s on the shared 2-core box)
def test_each_rank_restores_its_own_rng_states(tmp_path):
    full = _run(tmp_path, "full", max_steps=6)
    _run(tmp_path, "part", max_steps=6, stop_at=3)
    ckpt = tmp_path / "part" / "interrupt.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["callbacks"]["RNGStateCallback"]
    assert len(saved["ranks"]) == 2
    assert not torch.equal(saved["ranks"][0]["global"]["torch"], saved["ranks"][1]["global"]["torch"])
    resumed = _run(tmp_path, "resumed", max_steps=6, ckpt=str(ckpt))
    assert not torch.equal(full[0]["rng.torch"], full[1]["rng.torch"])  # the ranks' streams did diverge
    for rank in range(2):
        for key, value in full[rank].items():
            assert torch.equal(value, resumed[rank][key]), f"rank {rank}: {key} differs after resume"


def test_state_dict_format_and_single_process_round_trip():
    """Outside DDP the state holds one rank; a format-1 checkpoint (one state at the top level) still restores."""
    from lightning_ws.resume import RNGStateCallback, collect_rng_states

    class FakeTrainer:
        global_rank, world_size, lightning_module, datamodule, callbacks = 0, 1, None, None, []
        num_training_batches = 10

        class fit_loop:
            class epoch_loop:
                class batch_progress:
                    class current:
                        processed = 3

    cb = RNGStateCallback()
    cb._trainer = FakeTrainer()
    torch.manual_seed(5)
    state = cb.state_dict()
    assert state["format"] == 2 and len(state["ranks"]) == 1 and state["ranks"][0]["restore_at"] == "batch_start"
    expected = torch.rand(3)
    cb.load_state_dict(state)
    cb._restore("batch_start")
    assert torch.equal(torch.rand(3), expected)
    old = {"format": 1, "global": collect_rng_states(), "restore_at": "batch_start"}
    expected = torch.rand(3)
    cb.load_state_dict(old)
    cb._restore("batch_start")
    assert torch.equal(torch.rand(3), expected)

    cb.load_state_dict({"format": 2, "ranks": [state["ranks"][0], state["ranks"][0]]})
    with pytest.warns(UserWarning, match="states of 2 rank"):
        cb._restore("batch_start")


if __name__ == "__main__":
    _worker(sys.argv[1])
