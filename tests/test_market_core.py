"""Parameter-market core: the store's safety guarantees, pricing rules and weight matching (no Lightning)."""

from __future__ import annotations

import json
import pickle
import threading
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_ws.errors import ConfigError
from lightning_ws.market import (AlignmentNotApplicable, MarketStore, OwnershipError, PricingRule,
                                 StoreIntegrityWarning, apply_permutation, best_alpha, default_alpha_grid,
                                 function_preserved, relative_gain, sequential_permutation_spec, weight_matching)


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 3, generator=g), "b": torch.randn(4, generator=g)}


def _store_with_offer(tmp_path: Path) -> tuple[MarketStore, str, Path]:
    store = MarketStore(tmp_path / "m")
    token = store.claim("seller")
    m = store.publish("seller", token, _tensors(), step=5, epoch=1, asking_price=0.2, val_loss=0.7)
    return store, token, tmp_path / "m" / "offers" / "seller" / m.payload


def test_publish_and_read_round_trip(tmp_path):
    store, _, payload = _store_with_offer(tmp_path)
    (offer,) = store.latest_offers(exclude=("buyer",))
    man = json.loads(payload.with_suffix(".json").read_text())
    assert {"run_id", "step", "fingerprint", "sha256", "asking_price", "val_loss", "keys"} <= set(man)
    assert offer.manifest.run_id == "seller" and offer.manifest.step == 5 and offer.manifest.asking_price == 0.2
    assert offer.manifest.val_loss == 0.7 and offer.manifest.keys["w"] == [[4, 3], "float32"]
    for k, v in _tensors().items():
        assert torch.equal(offer.tensors[k], v)
    assert store.latest_offers(exclude=("seller",)) == []


def test_tampered_payload_is_rejected(tmp_path):
    store, _, payload = _store_with_offer(tmp_path)
    data = bytearray(payload.read_bytes())
    data[-3] ^= 0x55  # flip bits inside a tensor: same size, valid safetensors, different sha256
    payload.write_bytes(bytes(data))
    with pytest.warns(StoreIntegrityWarning, match="sha256"):
        assert store.latest_offers() == []


def test_tampered_manifest_is_rejected(tmp_path):
    store, _, payload = _store_with_offer(tmp_path)
    man_path = payload.with_suffix(".json")
    man = json.loads(man_path.read_text())
    man["keys"]["w"] = [[3, 4], "float32"]  # lie about a shape: the payload no longer matches the listing
    man_path.write_text(json.dumps(man))
    with pytest.warns(StoreIntegrityWarning, match="key/shape"):
        assert store.latest_offers() == []


@pytest.mark.parametrize("cut", ["manifest", "payload"])
def test_partial_write_is_never_read(tmp_path, cut):
    store, _, payload = _store_with_offer(tmp_path)
    target = payload.with_suffix(".json") if cut == "manifest" else payload
    target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])  # a writer that died half-way
    with pytest.warns(StoreIntegrityWarning):
        assert store.latest_offers() == []


def test_in_flight_files_are_invisible(tmp_path):
    """A payload without its manifest (publication in progress) and temporary files are not offers."""
    store = MarketStore(tmp_path)
    token = store.claim("seller")
    folder = tmp_path / "offers" / "seller"
    (folder / "000000001-0123456789abcdef.safetensors").write_bytes(b"half")
    (folder / ".000000002-0123456789abcdef.json.x.tmp").write_text("{")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store.latest_offers() == []
    store.publish("seller", token, _tensors(), step=3, epoch=0)
    assert len(store.latest_offers()) == 1


def test_never_unpickles(tmp_path, monkeypatch):
    """A pickle planted as a payload is rejected without being unpickled."""
    store, _, payload = _store_with_offer(tmp_path)
    payload.write_bytes(pickle.dumps(_tensors()))
    calls = []
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: calls.append(a))
    with pytest.warns(StoreIntegrityWarning):
        assert store.latest_offers() == []
    assert not calls


def test_runs_cannot_overwrite_each_other(tmp_path):
    store = MarketStore(tmp_path)
    token = store.claim("a")
    with pytest.raises(OwnershipError, match="already owned"):
        store.claim("a")  # a second run configured with the same id
    assert store.claim("a", token) == token  # the owner (e.g. resumed from its checkpoint) re-attaches
    other = store.claim("b")
    with pytest.raises(OwnershipError):
        store.publish("a", other, _tensors(), step=1, epoch=0)
    m = store.publish("a", token, _tensors(), step=1, epoch=0)
    # a manifest copied into another run's folder is not accepted as that run's offer
    src = tmp_path / "offers" / "a"
    for suffix in (".json", ".safetensors"):
        (tmp_path / "offers" / "b" / f"{m.offer_id}{suffix}").write_bytes((src / f"{m.offer_id}{suffix}").read_bytes())
    with pytest.warns(StoreIntegrityWarning, match="claims run"):
        offers = store.latest_offers()
    assert [o.manifest.run_id for o in offers] == ["a"]
    # offers are write-once: republishing the same step with other tensors makes a new offer, never a replacement
    store.publish("a", token, _tensors(1), step=1, epoch=0)
    assert len(store.manifests("a")) == 2


def test_retention_and_ledger(tmp_path):
    store = MarketStore(tmp_path)
    token = store.claim("a")
    for step in range(5):
        store.publish("a", token, _tensors(step), step=step, epoch=step, max_offers_per_run=2)
    assert [m.step for m in store.manifests("a")] == [3, 4]
    assert len(list((tmp_path / "offers" / "a").glob("*.safetensors"))) == 2
    assert store.latest_offers(epoch=3)[0].manifest.step == 3
    store.write_ledger("a", token, {"trades": [{"seller": "b", "bought": True, "price": 0.25}]})
    assert store.read_ledger("a")["trades"][0]["price"] == 0.25 and store.income("b") == 0.25
    with pytest.raises(OwnershipError):
        store.write_ledger("a", "wrong", {"trades": []})


def test_fsspec_url_store():
    store = MarketStore("memory://lightning-ws-market-test")
    token = store.claim("s")
    store.publish("s", token, _tensors(), step=2, epoch=0, val_loss=1.0)
    (offer,) = store.latest_offers()
    assert torch.equal(offer.tensors["w"], _tensors()["w"])
    with pytest.raises(OwnershipError):
        store.claim("s")


def test_concurrent_publisher_and_reader(tmp_path):
    """A reader polling while a writer publishes (with retention) only ever gets complete, verified offers."""
    store = MarketStore(tmp_path)
    token = store.claim("w")
    done = threading.Event()

    def writer():
        big = {f"t{i}": torch.randn(64, 64) for i in range(8)}
        for step in range(25):
            big["t0"][0, 0] = step
            store.publish("w", token, big, step=step, epoch=step, max_offers_per_run=2)
        done.set()

    th = threading.Thread(target=writer)
    seen = set()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no partial or corrupt file may ever be met
        th.start()
        while not done.is_set():
            for offer in MarketStore(tmp_path).latest_offers():
                assert float(offer.tensors["t0"][0, 0]) == offer.manifest.step
                seen.add(offer.manifest.step)
        th.join()
    assert seen and max(seen) <= 24


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError):
        MarketStore("")
    with pytest.raises(ConfigError):
        MarketStore(tmp_path).claim("../escape")


def test_pricing_rules():
    assert relative_gain(2.0, 1.5) == 0.25 and relative_gain(0.0, 1.0) == 0.0
    assert best_alpha([0.1, 0.5, 0.9], [3.0, 1.0, float("nan")]) == (0.5, 1.0)
    assert default_alpha_grid()[0] == 0.05 and default_alpha_grid()[-1] == 0.95 and len(default_alpha_grid()) == 10
    ref = PricingRule("gain")
    assert ref.quote(0.1, asking_price=5.0, budget_left=0.0).accept
    assert not ref.quote(-0.1, 0.0, 1.0).accept
    posted = PricingRule("posted", value_per_gain=10.0)
    q = posted.quote(0.2, asking_price=1.5, budget_left=10.0)  # value 2.0 >= 1.5
    assert q.accept and q.price == 1.5
    assert not posted.quote(0.1, 1.5, 10.0).accept  # value 1.0 < asking price
    assert posted.quote(0.2, 1.5, 1.0).reason == "over budget"
    nash = PricingRule("nash", value_per_gain=10.0, beta=0.5)
    q = nash.quote(0.3, asking_price=1.0, budget_left=10.0)  # v = 3, c = 1: Nash price (v + c) / 2
    assert q.accept and q.price == pytest.approx(2.0)
    competitive = PricingRule("nash", value_per_gain=10.0, competition=5.0)
    q = competitive.quote(0.3, 1.0, 10.0)  # c = 1 + 5 * 0.3 = 2.5, v = 3
    assert q.reservation == pytest.approx(2.5) and q.price == pytest.approx(2.75)
    with pytest.raises(ConfigError):
        PricingRule("auction")


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 12), nn.LayerNorm(12), nn.ReLU(),
                         nn.Linear(12, 4))


def _cnn() -> nn.Module:
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(24, 5))
    m[1].running_mean.normal_()
    m[1].running_var.uniform_(0.5, 2.0)
    return m.eval()


@pytest.mark.parametrize("make,shape", [(_mlp, (5, 10)), (_cnn, (3, 1, 8, 8))])
def test_weight_matching_recovers_a_random_permutation(make, shape):
    torch.manual_seed(0)
    model = make()
    spec = sequential_permutation_spec(model)
    sd = model.state_dict()
    g = torch.Generator().manual_seed(1)
    true = {p: torch.randperm(n, generator=g) for p, n in spec.sizes.items()}
    shuffled = apply_permutation(spec, true, sd)
    assert any(not torch.equal(shuffled[k], sd[k]) for k in sd)
    x = torch.randn(*shape)
    assert function_preserved(model, sd, shuffled, [x])  # permuting hidden units leaves the function unchanged
    found = weight_matching(spec, sd, shuffled, seed=3)
    back = apply_permutation(spec, found, shuffled)
    for k in sd:
        assert torch.equal(back[k], sd[k]), k


def test_weight_matching_where_it_does_not_apply():
    with pytest.raises(AlignmentNotApplicable, match="Embedding"):
        sequential_permutation_spec(nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 4), nn.Linear(4, 2)))
    with pytest.raises(AlignmentNotApplicable, match="GroupNorm"):
        sequential_permutation_spec(nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.Conv2d(4, 2, 3)))
    with pytest.raises(AlignmentNotApplicable, match="chain"):
        sequential_permutation_spec(nn.Sequential(nn.Linear(4, 8), nn.Linear(6, 2)))


def test_function_check_catches_a_forward_that_is_not_the_chain():
    class Reversed(nn.Module):  # registered a, b, c but runs c(b(a)) only when the widths allow; here runs skip
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 2)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.c(torch.relu(self.b(h)) + h)  # a residual connection the spec cannot see

    torch.manual_seed(0)
    model = Reversed()
    spec = sequential_permutation_spec(model)  # shapes chain, so the builder cannot tell
    sd = model.state_dict()
    perms = {p: torch.randperm(n) for p, n in spec.sizes.items()}
    assert not function_preserved(model, sd, apply_permutation(spec, perms, sd), [torch.randn(4, 6)])
