"""R&B's training loader resumes mid-epoch: Lightning sees it as stateful (no "not resumable" warning), and a run
interrupted mid-epoch and resumed ends with the same parameters, mixture, sampler position and callback state as an
uninterrupted run (dropout on)."""

from __future__ import annotations

import warnings

import pytest
import torch

from lightning_ws.callbacks.rnb import RnBCallback
from lightning_ws.datamodules.rnb import MixtureDataLoader, TensorMixtureDataModule
from tests.helpers.resume import assert_resume_equivalent, assert_state_equal
from tests.helpers.tiny import TinyClassifier


def _case(dms: list):
    def build():
        gen = torch.Generator().manual_seed(7)
        n = 48
        dom = torch.arange(n) % 3
        x = torch.randn(n, 8, generator=gen) + dom.unsqueeze(1).float()
        y = (x[:, 0] > dom.float()).long() + (dom == 2).long()
        dm = TensorMixtureDataModule(x, y, dom, eval_x=x[:12], eval_labels=y[:12], eval_domains=dom[:12],
                                     batch_size=8, seed=3)  # 48 slots per epoch = 6 batches = 3 optimizer steps
        dms.append(dm)
        torch.manual_seed(0)
        return TinyClassifier(lr=0.1, dropout=0.2), dm, [RnBCallback(method="rnb", steps_per_round=2)]
    return build


def test_mixture_loader_is_stateful_and_resumes_mid_epoch_without_warning(tmp_path):
    dms: list = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # interrupt at optimizer step 4 = batch 8 of 12, i.e. 2 batches into the second epoch (mid-epoch, mid-round)
        res = assert_resume_equivalent(_case(dms), total_steps=7, interrupt_step=4, tmp_path=tmp_path,
                                       accumulate_grad_batches=2)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "not resumable" in m], messages
    full, _, resumed = dms
    assert torch.equal(full.mixture, resumed.mixture)
    assert not torch.allclose(full.mixture, torch.full((3,), 1 / 3, dtype=torch.float64))  # R&B moved it
    assert_state_equal(full.state_dict(), resumed.state_dict(), path="datamodule")
    assert full.state_dict()["sampler"]["consumed"] == 7 * 2 * 8  # every consumed micro-batch counted once
    # the loader state was in the checkpoint's loop state, where Lightning looks for resumable loaders
    ckpt = torch.load(res.checkpoint, map_location="cpu", weights_only=False)
    loader_states = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader_states and loader_states[0]["sampler"]["consumed"] == 4 * 2 * 8
    assert isinstance(full.train_dataloader(), MixtureDataLoader)


def test_mixture_loader_state_round_trip():
    dms: list = []
    _, dm, _ = _case(dms)()
    loader = dm.train_dataloader()
    it = iter(loader)
    for _ in range(3):
        next(it)
        loader.sampler.advance()
    state = loader.state_dict()
    assert state["sampler"]["consumed"] == 3 * 8
    _, fresh_dm, _ = _case(dms)()
    fresh = fresh_dm.train_dataloader()
    fresh.load_state_dict(state)
    key = next(k for k in ("idx", "x") if k in next(iter(fresh_dm.train_dataloader())))
    rest = [batch[key].tolist() for batch, _ in zip(it, range(3))]
    assert rest == [batch[key].tolist() for batch, _ in zip(iter(fresh), range(3))]


RNB_TINY = """
model:
  init_args:
    pretrained: false
    config_overrides: {num_hidden_layers: 1, hidden_size: 32, intermediate_size: 64, num_attention_heads: 2}
    dropout: 0.1
data:
  init_args:
    batch_size: 4
    max_length: 16
    num_samples_per_epoch: 24     # 6 batches per epoch
trainer:
  max_steps: 9
  limit_val_batches: 1
  num_sanity_val_steps: 0
  accelerator: cpu
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: lightning_ws.resume.LastCheckpoint
      init_args:
        every_n_train_steps: 1
    - class_path: lightning_ws.callbacks.rnb.RnBCallback
      init_args:
        layer: classifier
        method: rnb
        lam: 3.0
        steps_per_round: 2
        warmup_rounds: 1
"""


@pytest.mark.slow  # three CLI fits of the tiny encoder (~45 s on the shared box); the in-process test above is fast
def test_cli_crash_mid_epoch_then_ckpt_path_last_equals_uninterrupted(tmp_path, capsys):
    """configs/rnb_youtube.yaml (tiny encoder, dropout on) crashed in epoch 2 (step 8 = batch 2 of 6) and continued
    with --ckpt_path last ends with the uninterrupted run's parameters, mixture, sampler position and R&B state."""
    import json
    from pathlib import Path

    from lightning_ws.cli import main
    from tests.helpers.resume import assert_state_equal

    repo = Path(__file__).resolve().parents[1]
    tiny = tmp_path / "rnb_tiny.yaml"
    tiny.write_text(RNB_TINY)

    def args(save_dir):
        return ["fit", "-c", str(repo / "configs" / "rnb_youtube.yaml"), "-c", str(tiny),
                "--trainer.logger.init_args.save_dir", str(save_dir)]

    def last(save_dir):
        (run,) = [p.parent for p in (save_dir / "lightning-ws").glob("*/run.json")]
        return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)

    assert main(args(tmp_path / "full")) == 0
    crash = json.dumps({"class_path": "tests.helpers.kill.CrashAtStep", "init_args": {"step": 8}})
    with pytest.raises(RuntimeError, match="simulated crash"):
        main([*args(tmp_path / "resumed"), f"--trainer.callbacks+={crash}"])
    assert last(tmp_path / "resumed")["global_step"] == 8
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*args(tmp_path / "resumed"), "--ckpt_path", "last"]) == 0
    err = capsys.readouterr().err
    assert "not resumable" not in err and not [w for w in caught if "not resumable" in str(w.message)]
    a, b = last(tmp_path / "full"), last(tmp_path / "resumed")
    assert a["global_step"] == b["global_step"] == 9
    assert_state_equal(a["state_dict"], b["state_dict"], path="params")
    assert_state_equal(a["datamodule_hyper_parameters"], b["datamodule_hyper_parameters"], path="dm_hparams")
    dm_key = next(k for k in a if k.endswith("MixtureDataModule"))
    assert_state_equal(a[dm_key], b[dm_key], path="sampler")  # consumed slots, mixture, pending chunks
    assert a[dm_key]["sampler"]["consumed"] == 9 * 4
    rnb_key = next(k for k in a["callbacks"] if k.startswith("RnBCallback"))
    assert_state_equal(a["callbacks"][rnb_key], b["callbacks"][rnb_key], path="rnb")
    assert_state_equal(a["callbacks"]["RNGStateCallback"], b["callbacks"]["RNGStateCallback"], path="rng")
