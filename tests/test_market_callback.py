"""ParameterMarketCallback: decisions, merging, pricing, safety, resume, DDP, gradient accumulation, two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_ws.callbacks import ParameterMarketCallback
from lightning_ws.datamodules.images import ClassSkewedImageDataModule
from lightning_ws.errors import ConfigError
from lightning_ws.market import MarketStore, StoreIntegrityWarning
from lightning_ws.modules.image_classifier import ImageClassifier
from tests.helpers.ddp import run_fit
from tests.helpers.resume import assert_resume_equivalent

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread (the shared 2-core machine makes thread pools slow, BatchNorm especially)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _model(seed: int = 0, **kw: Any) -> ImageClassifier:
    torch.manual_seed(seed)
    return ImageClassifier(input_dim=64, num_classes=10, hidden_dims=[16, 16], **kw)


def _dm(agent: int = 0, batch_size: int = 64) -> ClassSkewedImageDataModule:
    return ClassSkewedImageDataModule("digits", agent=agent, batch_size=batch_size)


_SELLERS: dict[str, dict[str, torch.Tensor]] = {}


def _seller_state(kind: str = "helpful", **kw: Any) -> dict[str, torch.Tensor]:
    """A seller trained (plain loop, 60 Adam steps) on agent 1's data, or a harmful one (huge random weights)."""
    key = f"{kind}{sorted(kw.items())}"
    if key not in _SELLERS:
        _SELLERS[key] = _make_seller(kind, **kw)
    return {k: v.clone() for k, v in _SELLERS[key].items()}


def _make_seller(kind: str, **kw: Any) -> dict[str, torch.Tensor]:
    model = _model(7, **kw)
    if kind == "harmful":
        return {k: 50 * torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    dm = _dm(agent=1)
    x, y, _ = dm._train
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        idx = torch.randint(0, len(y), (64,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _publish(store_dir: Path | str, state: dict[str, torch.Tensor], run_id: str = "seller", price: float = 0.0,
             epoch: int = 0) -> None:
    store = MarketStore(store_dir)
    token = store.claim(run_id)
    store.publish(run_id, token, {k: v for k, v in state.items() if v.is_floating_point()}, step=0, epoch=epoch,
                  asking_price=price, val_loss=1.0)


class _Snapshot(pl.Callback):
    """Records the parameters at each epoch end, before the market callback (placed first in the list)."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.states.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


def _fit(model, dm, callbacks, **kw):
    args = dict(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0,
                deterministic=True)
    args.update(kw)
    trainer = pl.Trainer(callbacks=callbacks, **args)
    trainer.fit(model, dm)
    return trainer


def test_buys_a_helpful_offer_and_merges_at_alpha_star(tmp_path):
    seller = _seller_state()
    _publish(tmp_path / "s", seller)
    snap = _Snapshot()
    cb = ParameterMarketCallback(str(tmp_path / "s"), run_id="buyer")
    model = _model()
    trainer = _fit(model, _dm(), [snap, cb], limit_train_batches=3)
    (entry,) = cb.ledger
    assert entry["bought"] and entry["gain"] > 0 and entry["seller"] == "seller" and cb.trades == 1
    a = entry["alpha"]
    for k, v in model.state_dict().items():
        want = torch.lerp(snap.states[0][k], seller[k], a) if v.is_floating_point() else snap.states[0][k]
        torch.testing.assert_close(v, want, msg=k)
    assert all(len(s) == 0 for s in trainer.optimizers[0].state.values()) or not trainer.optimizers[0].state
    ledger = MarketStore(tmp_path / "s").read_ledger("buyer")
    assert ledger["trades"][0]["offer_id"] == entry["offer_id"]
    # its own offer (pre-trade weights) is in the store for others
    (own,) = MarketStore(tmp_path / "s").latest_offers(exclude=("seller",))
    torch.testing.assert_close(own.tensors["net.0.weight"], snap.states[0]["net.0.weight"])


def test_does_not_buy_a_harmful_offer(tmp_path):
    _publish(tmp_path / "s", _seller_state("harmful"))
    snap = _Snapshot()
    cb = ParameterMarketCallback(str(tmp_path / "s"), run_id="buyer")
    model = _model()
    _fit(model, _dm(), [snap, cb], limit_train_batches=3)
    (entry,) = cb.ledger
    assert not entry["bought"] and entry["gain"] <= 0 and entry["reason"] == "no gain" and cb.trades == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, snap.states[0][k])


@pytest.mark.parametrize("reset", [True, False])
def test_optimizer_reset_flag_and_alpha_one_is_the_seller(tmp_path, reset):
    seller = _seller_state()
    _publish(tmp_path / "s", seller)
    cb = ParameterMarketCallback(str(tmp_path / "s"), run_id="buyer", alphas=[1.0], reset_optimizer=reset)
    model = _model()
    trainer = _fit(model, _dm(), [cb], limit_train_batches=3)
    assert cb.ledger[0]["bought"] and cb.ledger[0]["alpha"] == 1.0
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            assert torch.equal(v, seller[k]), k
    assert (len(trainer.optimizers[0].state) == 0) == reset


def test_prices_and_budget(tmp_path):
    _publish(tmp_path / "s", _seller_state(), price=0.05)
    cb = ParameterMarketCallback(str(tmp_path / "s"), run_id="buyer", pricing="nash", value_per_gain=1.0,
                                 budget=0.6, asking_price=0.1)
    _fit(_model(), _dm(), [cb], max_epochs=4, limit_train_batches=2)
    bought = [e for e in cb.ledger if e["bought"]]
    assert bought, cb.ledger
    for e in bought:
        assert e["price"] == pytest.approx(e["reservation"] + 0.5 * (e["value"] - e["reservation"]))
        assert e["reservation"] == pytest.approx(0.05) and e["value"] == pytest.approx(e["gain"])
    assert cb.spent == pytest.approx(sum(e["price"] for e in bought)) and cb.spent <= 0.6 + 1e-12
    (own,) = MarketStore(tmp_path / "s").latest_offers(exclude=("seller",))
    assert own.manifest.asking_price == 0.1
    cb2 = ParameterMarketCallback(str(tmp_path / "s"), run_id="poor", pricing="posted", budget=0.01)
    _fit(_model(), _dm(), [cb2], limit_train_batches=2)
    # it sees both runs' newest offers (posted at 0.1 and 0.05), both worth more than their price, both over budget
    assert cb2.trades == 0 and {e["seller"]: e["price"] for e in cb2.ledger} == {"buyer": 0.1, "seller": 0.05}
    assert all(e["reason"] == "over budget" for e in cb2.ledger)


def test_tampered_offer_is_rejected_by_the_callback(tmp_path):
    _publish(tmp_path / "s", _seller_state())
    payload = next((tmp_path / "s" / "offers" / "seller").glob("*.safetensors"))
    data = bytearray(payload.read_bytes())
    data[-5] ^= 0x01
    payload.write_bytes(bytes(data))
    cb = ParameterMarketCallback(str(tmp_path / "s"), run_id="buyer")
    with pytest.warns(StoreIntegrityWarning, match="sha256"):
        _fit(_model(), _dm(), [cb], limit_train_batches=2)
    assert cb.ledger == [] and cb.trades == 0


def test_mismatched_offer_is_skipped(tmp_path):
    other = ImageClassifier(input_dim=64, num_classes=10, hidden_dims=[8]).state_dict()
    _publish(tmp_path / "s", other)
    cb = ParameterMarketCallback(str(tmp_path / "s"), run_id="buyer")
    with pytest.warns(UserWarning, match="does not fit"):
        _fit(_model(), _dm(), [cb], limit_train_batches=2)
    assert cb.ledger == []


class _NoTestDM(ClassSkewedImageDataModule):
    def test_dataloader(self):
        raise AssertionError("the market must never read the test split")


def test_alignment_on_and_where_it_does_not_apply(tmp_path):
    """Aligned trades on the MLP; a residual forward fails the function check: traded unaligned, said in the ledger."""
    _publish(tmp_path / "s", _seller_state())
    cb = ParameterMarketCallback(str(tmp_path / "s"), run_id="buyer", align=True)
    _fit(_model(), _NoTestDM("digits", agent=0, batch_size=64), [cb], limit_train_batches=3)
    assert cb.ledger[0]["aligned"] and cb.ledger[0]["bought"]

    class Residual(ImageClassifier):
        def forward(self, x):
            h = torch.relu(self.net[0](x))
            return self.net[4](torch.relu(self.net[2](h)) + h)

    _publish(tmp_path / "s2", _seller_state())
    torch.manual_seed(0)
    cb = ParameterMarketCallback(str(tmp_path / "s2"), run_id="buyer2", align=True)
    with pytest.warns(UserWarning, match="alignment switched off"):
        _fit(Residual(input_dim=64, num_classes=10, hidden_dims=[16, 16]), _dm(), [cb], limit_train_batches=3)
    assert not cb.ledger[0]["aligned"] and "feed-forward chain" in cb.ledger[0]["align_note"]


def test_batchnorm_statistics_are_repaired(tmp_path):
    seller = _seller_state(norm="batch")
    _publish(tmp_path / "s", seller)
    snap = _Snapshot()
    cb = ParameterMarketCallback(str(tmp_path / "s"), run_id="buyer", align=True)
    model = _model(norm="batch")
    _fit(model, _dm(), [snap, cb], limit_train_batches=3)
    e = cb.ledger[0]
    assert e["bought"] and e["aligned"]
    lerped = torch.lerp(snap.states[0]["net.1.running_var"], seller["net.1.running_var"], e["alpha"])
    assert not torch.allclose(model.state_dict()["net.1.running_var"], lerped)


def test_init_and_setup_errors(tmp_path):
    with pytest.raises(ConfigError, match="alphas"):
        ParameterMarketCallback(str(tmp_path), alphas=[0.0])
    with pytest.raises(ConfigError, match="run id"):
        ParameterMarketCallback(str(tmp_path), run_id="../x")
    with pytest.raises(ConfigError, match="pricing"):
        ParameterMarketCallback(str(tmp_path), pricing="free")
    from torch.utils.data import DataLoader

    cb = ParameterMarketCallback(str(tmp_path), run_id="a")
    dm = _dm()
    trainer = pl.Trainer(callbacks=[cb], max_epochs=1, logger=False, enable_progress_bar=False)
    with pytest.raises(ConfigError, match="validation split"):  # plain dataloaders: no validation split to own
        trainer.fit(_model(), train_dataloaders=DataLoader(dm.train_dataloader().dataset, collate_fn=lambda r: r))


def _resume_build_factory(tmp_path: Path, seller: dict[str, torch.Tensor]):
    calls = {"n": 0}

    def build():
        calls["n"] += 1
        store = tmp_path / ("store_full" if calls["n"] == 1 else "store_resumed")
        if calls["n"] <= 2:
            _publish(store, seller)
        cb = ParameterMarketCallback(str(store), run_id="buyer", owner_token="secret", align=True)
        return _model(optimizer="sgd"), _dm(batch_size=64), [cb]

    return build


def test_resume_equals_uninterrupted_and_keeps_the_ledger(tmp_path):
    """11 batches/epoch, accumulation 2 -> 6 optimizer steps/epoch: interrupt in epoch 1 after epoch 0's trade."""
    res = assert_resume_equivalent(_resume_build_factory(tmp_path, _seller_state()), total_steps=14,
                                   interrupt_step=8, tmp_path=tmp_path)
    (state,) = res.resumed_callbacks.values()
    assert [e["epoch"] for e in state["ledger"]] == [0, 1, 2][: len(state["ledger"])]
    assert len(state["ledger"]) >= 2 and state["ledger"][0]["bought"] and state["last_window_epoch"] >= 1
    ledger = MarketStore(tmp_path / "store_resumed").read_ledger("buyer")
    assert ledger["trades"] == state["ledger"]


def test_gradient_accumulation_matches_larger_batches(tmp_path):
    seller = _seller_state()
    out = []
    for bs, acc in ((16, 2), (32, 1)):
        store = tmp_path / f"s{bs}"
        _publish(store, seller)
        cb = ParameterMarketCallback(str(store), run_id="buyer")
        model = _model(optimizer="sgd")
        _fit(model, _dm(batch_size=bs), [cb], max_epochs=2, limit_train_batches=8 if acc == 2 else 4,
             accumulate_grad_batches=acc)
        out.append((model.state_dict(), cb))
    (p1, c1), (p2, c2) = out
    assert [e["bought"] for e in c1.ledger] == [e["bought"] for e in c2.ledger] and c1.trades >= 1
    for e1, e2 in zip(c1.ledger, c2.ledger):
        assert e1["alpha"] == e2["alpha"]
        assert e1["gain"] == pytest.approx(e2["gain"], rel=1e-4)
    for k in p1:
        torch.testing.assert_close(p1[k], p2[k], rtol=1e-4, atol=1e-5, msg=k)


def make_ddp_case(store: str, batch_size: int = 16):
    """DDP factory: no distributed sampler, so both ranks see the batches one process sees (same mean gradient)."""
    cb = ParameterMarketCallback(store, run_id="buyer", owner_token="tok", align=True)
    return _model(optimizer="sgd"), _dm(batch_size=batch_size), [cb]


@pytest.mark.ddp
def test_ddp_rank_zero_trades_and_broadcasts(tmp_path):
    seller = _seller_state()
    kw = {"trainer_kwargs": {"max_steps": -1, "max_epochs": 2, "limit_train_batches": 4,
                             "use_distributed_sampler": False}}
    for name in ("two", "one"):
        _publish(tmp_path / name, seller)
    two = run_fit("tests.test_market_callback:make_ddp_case", tmp_path, devices=2,
                  factory_kwargs={"store": str(tmp_path / "two")}, **kw)
    one = run_fit("tests.test_market_callback:make_ddp_case", tmp_path, devices=1,
                  factory_kwargs={"store": str(tmp_path / "one")}, **kw)
    (key,) = one[0]["callbacks"]
    s0, s1, ref = two[0]["callbacks"][key], two[1]["callbacks"][key], one[0]["callbacks"][key]
    assert s0 == s1  # identical callback state on every rank
    assert s0["trades"] == ref["trades"] >= 1
    for k, v in one[0]["params"].items():
        assert torch.equal(two[0]["params"][k], two[1]["params"][k]), k
        torch.testing.assert_close(two[0]["params"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    # only rank zero wrote: one offer per window, one ledger
    assert len(MarketStore(tmp_path / "two").manifests("buyer")) == 2


@pytest.mark.parametrize("wandb", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["no_logger", "wandb"])
def test_two_concurrent_runs_trade_through_a_store(tmp_path, wandb):
    """The two shipped agent configs, as two separate `lightning-ws fit` processes at once, trade both ways (and log
    the market to W&B, offline, in the slow variant)."""
    from lightning_ws.wandb_offline import find_offline_runs, read_offline_run

    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1",
               WANDB_MODE="offline", WANDB_SILENT="true")
    store = tmp_path / "market"
    procs = []
    for agent in ("a", "b"):
        cmd = [sys.executable, "-m", "lightning_ws.cli", "fit", "-c", str(REPO / f"configs/market_digits_{agent}.yaml"),
               "--trainer.max_epochs=3",
               f"--trainer.logger.init_args.save_dir={tmp_path / agent}" if wandb else "--trainer.logger=false",
               "--trainer.enable_checkpointing=false",
               f"--trainer.callbacks.init_args.store={store}", "--trainer.callbacks.init_args.wait_timeout_s=90"]
        procs.append(subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out[-4000:]
    market = MarketStore(store)
    runs = market.runs()
    assert len(runs) == 2 and {r.split("-")[0] for r in runs} == {"agent_a", "agent_b"}
    for run in runs:
        ledger = market.read_ledger(run)
        (other,) = [r for r in runs if r != run]
        trades = ledger["trades"]
        # windows at epochs 1 and 2 (trading_start 1); lock-step: each bought the other's offer of the same epoch
        assert [t["epoch"] for t in trades] == [1, 2] and all(t["seller"] == other for t in trades)
        assert all(t["seller_epoch"] == t["epoch"] for t in trades)
        assert any(t["bought"] for t in trades), trades
        assert all(t["aligned"] for t in trades)
    for agent in ("a", "b") if wandb else ():
        (run_file,) = find_offline_runs(tmp_path / agent)
        rows = [h for h in read_offline_run(run_file.parent, wait=60).history if "market/trades" in h]
        assert len(rows) == 2  # windows at epochs 1 and 2
        keys = set().union(*rows)
        assert {"market/loss_before", "market/acc_before", "market/bought", "market/price", "market/window_s"} <= keys
        assert any(k.endswith("/gain") for k in keys) and any("/loss@0.05" in k for k in keys)



def test_agent_splits_are_disjoint_and_complementary():
    """Validation slices are disjoint from the test split and from each other; agents hold complementary classes."""
    a, b, central = _dm(0), _dm(1), ClassSkewedImageDataModule("digits", agent=None)
    test = set(a._test[2].tolist())
    assert test == set(b._test[2].tolist()) == set(central._test[2].tolist())
    va, vb = set(a._val[2].tolist()), set(b._val[2].tolist())
    assert not (va & vb) and not ((va | vb) & test) and va | vb == set(central._val[2].tolist())
    assert not (set(central._train[2].tolist()) & (test | va | vb))
    ca, cb = np.array(a.class_counts), np.array(b.class_counts)
    assert (ca[:5] > 5 * ca[5:].max()).all() and (cb[5:] > 5 * cb[:5].max()).all()
