"""R&B's training loader resumes mid-epoch: Lightning sees it as stateful (no "not resumable" warning), and a run
interrupted mid-epoch and resumed ends with the same parameters, mixture, sampler position and callback state as an
uninterrupted run (dropout on)."""

from __future__ import annotations

import warnings

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
