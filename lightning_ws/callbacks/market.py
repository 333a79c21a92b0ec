"""``ParameterMarketCallback``: trade weights with other training runs through a shared store.

Train 'n Trade: Foundations of Parameter Markets (Huang, Vishwakarma, Sala; NeurIPS 2023, arXiv 2312.04740).
Each training run is an agent. At every trading window (the end of epoch ``t`` with ``t >= trading_start`` and
``t % trading_frequency == 0``, the reference schedule) the callback, on global rank zero:

1. measures the run's validation loss ``l(theta_A)`` on **its own validation split** (the datamodule's
   ``val_dataloader()``; the reference code picks ``alpha`` on the very test split it reports, we never touch test);
2. publishes its current (pre-trade) parameters as an offer in the market store, with that loss and its asking price,
   so that every seller's offer is from before the window's trades (simultaneous trades, as in the reference);
3. optionally waits (``peers``, ``wait_timeout_s``) until ``peers`` other runs have published an offer for the same
   epoch: lock-step windows between independent processes;
4. reads the newest verified offer of every other run (see :mod:`lightning_ws.market.store` for what "verified"
   means), rejects offers whose keys/shapes do not fit the model, optionally **aligns** the seller's hidden units to
   its own by weight matching (:mod:`lightning_ws.market.align`; checked on real inputs to preserve the seller's
   function, else the offer is used unaligned and the reason logged), and **tries before buying**: for every
   ``alpha`` of the grid (default 0.05, 0.15, ..., 0.95) the loss of ``(1 - alpha) theta_A + alpha theta_B`` on the
   validation split; the gain is the relative loss reduction at the best ``alpha``;
5. prices each offer (:class:`lightning_ws.market.pricing.PricingRule`: the reference "buy iff gain > 0", a posted
   price, or a Nash/beta split between the seller's reservation price and the buyer's value) within the remaining
   budget, buys the accepted offer with the largest surplus (at most ``max_purchases_per_window``; more would need a
   multi-way merge the reference never defines), merges ``theta_A <- theta_A(alpha*)``, optionally re-estimates
   BatchNorm statistics and resets the optimizer state (the reference re-creates its optimizer after a purchase);
6. appends every evaluation to the ledger (kept in ``state_dict`` and written atomically to
   ``<store>/ledgers/<run_id>.json``) and logs ``market/...`` metrics to the trainer's loggers (W&B included):
   the loss/accuracy before and after, each seller's gain, ``alpha*``, price and decision, and the whole alpha curve.

Under DDP only rank zero reads the store, evaluates and writes; the decision, the ledger entries and (after a
purchase) the new parameters are broadcast as tensors, so every rank ends the window with identical weights, optimizer
resets and callback state. The callback acts at epoch ends, so gradient accumulation does not change when it acts.

Defaults the paper leaves open: one purchase per window; the validation slice doubles as the data for BatchNorm
re-estimation; offers are whole models unless ``groups`` names key prefixes; the seller's pre-trade weights are
offered even when it buys in the same window.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from lightning_ws.contracts import LABELS, X
from lightning_ws.errors import ConfigError
from lightning_ws.market.align import (AlignmentNotApplicable, PermutationSpec, apply_permutation, function_preserved,
                                       sequential_permutation_spec, weight_matching)
from lightning_ws.market.pricing import PricingRule, best_alpha, default_alpha_grid, relative_gain
from lightning_ws.market.store import MarketStore, Offer, new_run_id

__all__ = ["ParameterMarketCallback"]

_STATE_VERSION = 1


class ParameterMarketCallback(Callback):
    """Trade parameters with other runs at trading windows (see the module docstring; arXiv 2312.04740).

    Args:
        store: market store: a folder (shared by the runs) or an fsspec URL.
        run_id: this run's id in the store; ``None`` makes a fresh ``<run_name>-<random>`` id (a resumed run keeps
            the id and owner token from its checkpoint). Another run's id is refused (its offers are never touched).
        run_name: prefix of generated run ids.
        owner_token: the secret that proves ownership of ``run_id`` (``None``: a fresh random token, kept in the
            checkpoint). Pass one only to re-attach a run that lost its checkpoint, or in tests.
        storage_options: fsspec filesystem options (credentials, endpoint) for URL stores.
        trading_start: first epoch with a trading window (reference ``trading_period`` T0).
        trading_frequency: windows at epochs ``t % trading_frequency == 0`` (reference ``trading_frequency``).
        alphas: interpolation grid in (0, 1]; default ``0.05, 0.15, ..., 0.95`` (the reference grid).
        align: align offers to this model by weight matching first (feed-forward MLP/conv chains only).
        align_max_sweeps: coordinate-ascent sweeps of weight matching (reference: 300).
        align_seed: seed of the sweep order.
        pricing: ``"gain"`` (reference: buy iff gain > ``min_gain``, free), ``"posted"`` or ``"nash"``.
        value_per_gain: the buyer's money per unit of relative loss reduction.
        beta: surplus split of ``"nash"`` (0.5 = Nash bargaining).
        competition: growth of the seller's reservation price with the buyer's gain (competitive market).
        min_gain: smallest gain that can lead to a purchase.
        asking_price: the price this run asks for its own offers (its reservation price).
        budget: money this run may spend in total (``inf``: unlimited).
        reset_optimizer: clear the optimizer state (momenta, Adam moments) after a purchase (reference: yes).
        repair_batchnorm: re-estimate BatchNorm running statistics of every candidate on the validation inputs (the
            reference interpolates them, which is wrong for BatchNorm models; see the spec's pitfalls).
        publish: publish this run's parameters at each window.
        buy: evaluate and buy offers at each window (``publish=True, buy=False``: a pure seller).
        groups: trade only state-dict keys starting with one of these prefixes (``None``: the whole model).
        max_offers_per_run: retention: this run's offers kept in the store.
        peers: wait for this many other runs' offers of the same epoch before trading (0: trade with what is there).
        wait_timeout_s: longest wait for ``peers`` (then trade with what is there, with a warning).
        max_purchases_per_window: offers bought per window (1: the best by surplus).
        log_curves: log the alpha curve of every offer as ``market/<seller>/loss@<alpha>``.

    Attributes:
        run_id: this run's id (after ``fit`` started).
        ledger: every evaluated offer (dicts; the ``"bought"`` entries are the purchases).
        spent: money spent so far; ``trades``: purchases so far.
        last_timing: seconds of the last window: ``eval``, ``align``, ``store``, ``wait`` (for peers), ``total`` and
            ``work`` (total less wait).
    """

    def __init__(self, store: str, run_id: str | None = None, run_name: str = "agent", owner_token: str | None = None,
                 storage_options: Mapping[str, Any] | None = None, trading_start: int = 0, trading_frequency: int = 1,
                 alphas: Sequence[float] | None = None, align: bool = False, align_max_sweeps: int = 300,
                 align_seed: int = 0, pricing: str = "gain", value_per_gain: float = 1.0, beta: float = 0.5,
                 competition: float = 0.0, min_gain: float = 0.0, asking_price: float = 0.0,
                 budget: float = float("inf"), reset_optimizer: bool = True, repair_batchnorm: bool = True,
                 publish: bool = True, buy: bool = True, groups: Sequence[str] | None = None,
                 max_offers_per_run: int = 3, peers: int = 0, wait_timeout_s: float = 0.0,
                 max_purchases_per_window: int = 1, log_curves: bool = True) -> None:
        super().__init__()
        if not store:
            raise ConfigError("ParameterMarketCallback needs `store`: a folder shared by the runs or an fsspec URL.")
        if trading_start < 0 or trading_frequency < 1:
            raise ConfigError(f"need trading_start >= 0 and trading_frequency >= 1, got {trading_start}, "
                              f"{trading_frequency}.")
        grid = default_alpha_grid() if alphas is None else [float(a) for a in alphas]
        if not grid or any(not 0.0 < a <= 1.0 for a in grid):
            raise ConfigError(f"alphas must be a non-empty list of numbers in (0, 1], got {alphas!r}.")
        if align_max_sweeps < 1 or max_offers_per_run < 1 or max_purchases_per_window < 1 or peers < 0:
            raise ConfigError("align_max_sweeps, max_offers_per_run and max_purchases_per_window must be >= 1 and "
                              "peers >= 0.")
        if not (asking_price >= 0 and math.isfinite(asking_price)) or not budget >= 0 or not wait_timeout_s >= 0:
            raise ConfigError(f"need a finite asking_price >= 0, budget >= 0 and wait_timeout_s >= 0; got "
                              f"{asking_price}, {budget}, {wait_timeout_s}.")
        if run_id is not None:
            MarketStore._check_run_id(run_id)
        new_run_id(run_name)  # validates the prefix
        self.pricing = PricingRule(pricing, value_per_gain=value_per_gain, beta=beta, competition=competition,
                                   min_gain=min_gain)
        self._store_url, self._storage_options = str(store), dict(storage_options or {})
        self._run_name, self._requested_id, self._owner_token = run_name, run_id, owner_token
        self.trading_start, self.trading_frequency, self.alphas = int(trading_start), int(trading_frequency), grid
        self.align, self.align_max_sweeps, self.align_seed = bool(align), int(align_max_sweeps), int(align_seed)
        self.asking_price, self.budget = float(asking_price), float(budget)
        self.reset_optimizer, self.repair_batchnorm = bool(reset_optimizer), bool(repair_batchnorm)
        self.publish, self.buy = bool(publish), bool(buy)
        self.groups = None if groups is None else tuple(groups)
        self.max_offers_per_run, self.peers = int(max_offers_per_run), int(peers)
        self.wait_timeout_s = float(wait_timeout_s)
        self.max_purchases_per_window, self.log_curves = int(max_purchases_per_window), bool(log_curves)
        # resumable state
        self.run_id: str | None = None
        self._token: str | None = None
        self.ledger: list[dict[str, Any]] = []
        self.spent = 0.0
        self.trades = 0
        self.last_window_epoch = -1
        self.published: list[str] = []
        # per-fit
        self._store: MarketStore | None = None
        self._spec: PermutationSpec | None = None
        self._align_note = ""
        self._val: list[tuple[Tensor, Tensor]] | None = None
        self.last_timing: dict[str, float] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(run_name=self._run_name, run_id=self._requested_id)

    # ------------------------------------------------------------------ setup
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        dm = getattr(trainer, "datamodule", None)
        if dm is None or not callable(getattr(dm, "val_dataloader", None)):
            raise ConfigError("ParameterMarketCallback tries offers on the run's own validation split: fit with a "
                              "LightningDataModule that has val_dataloader() (the test split is never used).")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after a checkpoint restore (load_state_dict), so a resumed run keeps its run id and token
        if trainer.is_global_zero:
            self._store = MarketStore(self._store_url, self._storage_options)
            run_id = self.run_id or self._requested_id or new_run_id(self._run_name)
            token = self._store.claim(run_id, self._token or self._owner_token)
            ids = {"run_id": run_id, "token": token}
        else:
            ids = {}
        ids = _broadcast_json(trainer, ids)
        self.run_id, self._token = ids["run_id"], ids["token"]
        if self.align:
            try:
                self._spec = sequential_permutation_spec(pl_module)
            except AlignmentNotApplicable as err:
                self._spec, self._align_note = None, str(err)
                rank_zero_warn(f"ParameterMarketCallback(align=True): weight matching does not apply to this model "
                               f"({err}); offers are interpolated without alignment.")
        rank_zero_info(f"ParameterMarketCallback: run {self.run_id!r} in market store {self._store_url!r}.")

    def _is_window(self, epoch: int) -> bool:
        return epoch >= self.trading_start and epoch % self.trading_frequency == 0 and epoch > self.last_window_epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if not self._is_window(epoch) or not (self.publish or self.buy):
            return
        t0 = time.perf_counter()
        new_state: dict[str, Tensor] | None = None
        if trainer.is_global_zero:
            result, new_state = self._window(trainer, pl_module, epoch)
        else:
            result = {}
        result = _broadcast_json(trainer, result)
        bought = bool(result["bought"])
        if bought:
            new_state = _broadcast_state(trainer, pl_module, new_state)
            pl_module.load_state_dict(new_state)
            if self.reset_optimizer:
                for opt in trainer.optimizers:
                    opt.state.clear()
        self.ledger.extend(result["entries"])
        self.spent += float(result["price"])
        self.trades += int(bought)
        if result["published"] is not None:
            self.published = (self.published + [result["published"]])[-self.max_offers_per_run:]
        self.last_window_epoch = epoch
        if trainer.is_global_zero:
            if self.buy and self._store is not None:
                self._store.write_ledger(self.run_id, self._token, {
                    "format": "lightning_ws.market.ledger/1", "run_id": self.run_id, "budget": _finite(self.budget),
                    "spent": self.spent, "trades": self.ledger, "updated": time.time()})
            self.last_timing["total"] = time.perf_counter() - t0
            self.last_timing["work"] = self.last_timing["total"] - self.last_timing.get("wait", 0.0)
            metrics = dict(result["metrics"])
            metrics.update({"market/trades": float(self.trades), "market/spent": self.spent,
                            "market/window_s": self.last_timing["work"],
                            "market/wait_s": self.last_timing.get("wait", 0.0)})
            if math.isfinite(self.budget):
                metrics["market/budget_left"] = self.budget - self.spent
            if self.publish and self._store is not None:
                metrics["market/income"] = self._store.income(self.run_id)
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    # ------------------------------------------------------------------ the window (rank zero)
    def _tradeable(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {k: v for k, v in state.items() if v.is_floating_point()
                and (self.groups is None or any(k.startswith(g) for g in self.groups))}

    def _window(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                epoch: int) -> tuple[dict[str, Any], dict[str, Tensor] | None]:
        assert self._store is not None and self.run_id is not None and self._token is not None
        timing = {"eval": 0.0, "align": 0.0, "store": 0.0, "wait": 0.0}
        if self._val is None:
            self._val = _batches(trainer.datamodule.val_dataloader(), pl_module.device)
            if not self._val:
                raise ConfigError("ParameterMarketCallback: the validation split is empty; the market needs "
                                  "validation data to value offers.")
        own = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        t = time.perf_counter()
        loss0, acc0 = self._evaluate(pl_module, own, repair=False)
        timing["eval"] += time.perf_counter() - t
        metrics: dict[str, float] = {"market/loss_before": loss0, "market/acc_before": acc0}
        entries: list[dict[str, Any]] = []
        candidates: list[tuple[float, float, int, dict[str, Tensor]]] = []
        published = None
        if self.publish:
            t = time.perf_counter()
            m = self._store.publish(self.run_id, self._token, self._tradeable(own), step=trainer.global_step,
                                    epoch=epoch, asking_price=self.asking_price,
                                    val_loss=loss0 if math.isfinite(loss0) else None,
                                    max_offers_per_run=self.max_offers_per_run)
            published = m.offer_id
            timing["store"] += time.perf_counter() - t
        if self.buy:
            t = time.perf_counter()
            offers = self._collect_offers(trainer, epoch, timing)
            timing["store"] += time.perf_counter() - t - timing["wait"]
            budget_left = self.budget - self.spent
            for offer in offers:
                entry, candidate = self._try_offer(pl_module, own, offer, loss0, acc0, budget_left, epoch,
                                                   trainer.global_step, timing)
                if entry is None:
                    continue
                if self.log_curves:
                    for a, loss in zip(self.alphas, entry.pop("_curve")):
                        metrics[f"market/{entry['seller']}/loss@{a:g}"] = loss
                else:
                    entry.pop("_curve")
                for k in ("gain", "alpha", "price", "value", "acc_after", "loss_after"):
                    if entry[k] is not None:
                        metrics[f"market/{entry['seller']}/{k}"] = float(entry[k])
                entries.append(entry)
                if entry["accept"] and candidate is not None:
                    candidates.append((entry["value"] - entry["price"], entry["gain"], len(entries) - 1, candidate))
        candidates.sort(key=lambda c: (-c[0], -c[1], c[2]))
        price, new_state = 0.0, None
        budget_left = self.budget - self.spent
        for surplus, _, idx, candidate in candidates[: self.max_purchases_per_window]:
            if entries[idx]["price"] > budget_left + 1e-12:
                entries[idx]["reason"] = "over budget"
                continue
            entries[idx]["bought"] = True
            price += entries[idx]["price"]
            budget_left -= entries[idx]["price"]
            new_state = candidate if new_state is None else new_state
            metrics["market/bought_from_" + entries[idx]["seller"]] = 1.0
            break  # one merge per window (see the class docstring)
        for e in entries:
            e.setdefault("bought", False)
        metrics["market/bought"] = float(new_state is not None)
        metrics["market/price"] = price
        if new_state is not None:
            bought = next(e for e in entries if e["bought"])
            metrics["market/gain"] = bought["gain"]
            metrics["market/alpha"] = bought["alpha"]
            metrics["market/acc_gain"] = bought["acc_after"] - acc0
        self.last_timing = timing
        return {"bought": new_state is not None, "entries": entries, "price": price, "metrics": metrics,
                "published": published}, new_state

    def _collect_offers(self, trainer: pl.Trainer, epoch: int, timing: dict[str, float]) -> list[Offer]:
        assert self._store is not None
        exclude = (self.run_id,)
        if self.peers and not trainer.fast_dev_run:
            t = time.perf_counter()
            deadline = time.monotonic() + self.wait_timeout_s
            while self._store.count_offers(exclude=exclude, epoch=epoch) < self.peers and time.monotonic() < deadline:
                time.sleep(0.05)
            timing["wait"] = time.perf_counter() - t
            offers = self._store.latest_offers(exclude=exclude, epoch=epoch)
            if len(offers) < self.peers:
                rank_zero_warn(f"ParameterMarketCallback: {len(offers)} of {self.peers} peers offered for epoch "
                               f"{epoch} within {self.wait_timeout_s:g}s; trading with the newest offers instead.")
                have = {o.manifest.run_id for o in offers}
                offers += [o for o in self._store.latest_offers(exclude=exclude) if o.manifest.run_id not in have]
            return sorted(offers, key=lambda o: o.manifest.run_id)
        return self._store.latest_offers(exclude=exclude)

    def _try_offer(self, pl_module: pl.LightningModule, own: dict[str, Tensor], offer: Offer, loss0: float,
                   acc0: float, budget_left: float, epoch: int, step: int,
                   timing: dict[str, float]) -> tuple[dict[str, Any] | None, dict[str, Tensor] | None]:
        m = offer.manifest
        mismatch = [k for k, v in offer.tensors.items()
                    if k not in own or own[k].shape != v.shape or not own[k].is_floating_point()
                    or not v.is_floating_point()]
        if mismatch or (self.groups is not None and not all(any(k.startswith(g) for g in self.groups)
                                                            for k in offer.tensors)):
            warnings.warn(f"ParameterMarketCallback: offer {m.run_id}/{m.offer_id} does not fit this model (keys or "
                          f"shapes differ: {mismatch[:5]}); skipped.", stacklevel=2)
            return None, None
        seller = {k: v.to(device=own[k].device, dtype=own[k].dtype) for k, v in offer.tensors.items()}
        aligned, note = False, ""
        if self.align and self._spec is not None:
            t = time.perf_counter()
            seller, aligned, note = self._align(pl_module, own, seller)
            timing["align"] += time.perf_counter() - t
        elif self.align:
            note = self._align_note
        t = time.perf_counter()
        curve, accs = [], []
        for a in self.alphas:
            loss, acc = self._evaluate(pl_module, _interpolate(own, seller, a), repair=self.repair_batchnorm)
            curve.append(loss)
            accs.append(acc)
        timing["eval"] += time.perf_counter() - t
        alpha, loss_star = best_alpha(self.alphas, curve)
        i = self.alphas.index(alpha) if not math.isnan(alpha) else None
        gain = relative_gain(loss0, loss_star) if i is not None else 0.0
        quote = self.pricing.quote(gain, m.asking_price, budget_left)
        entry = {"epoch": epoch, "step": step, "seller": m.run_id, "offer_id": m.offer_id, "seller_step": m.step,
                 "seller_epoch": m.epoch, "seller_val_loss": m.val_loss, "asking_price": m.asking_price,
                 "aligned": aligned, "align_note": note, "loss_before": loss0, "acc_before": acc0,
                 "alpha": alpha if i is not None else None, "loss_after": loss_star if i is not None else None,
                 "acc_after": accs[i] if i is not None else None, "gain": gain, "value": quote.value,
                 "reservation": quote.reservation, "price": quote.price, "accept": quote.accept,
                 "reason": quote.reason, "_curve": curve}
        if i is None or not quote.accept:
            return _jsonable(entry), None
        merged = _interpolate(own, seller, alpha)  # the candidate that was valued (rebuilt: one state in memory)
        if self.repair_batchnorm:
            merged = _repair_batchnorm(pl_module, merged, self._val or [])
        return _jsonable(entry), merged

    def _align(self, pl_module: pl.LightningModule, own: dict[str, Tensor],
               seller: dict[str, Tensor]) -> tuple[dict[str, Tensor], bool, str]:
        assert self._spec is not None
        if not all(k in seller for k in self._spec.axes):
            return seller, False, "the offer lacks tensors of the permutation spec (a partial offer): not aligned"
        full = dict(own)
        full.update(seller)
        perms = weight_matching(self._spec, own, full, max_sweeps=self.align_max_sweeps, seed=self.align_seed)
        permuted = apply_permutation(self._spec, {p: v.to(next(iter(own.values())).device) for p, v in perms.items()},
                                     full)
        probe = [x for x, _ in self._val[:2]] if self._val else []
        if not function_preserved(pl_module, full, permuted, probe):
            self._spec, self._align_note = None, ("the permutation spec changed the seller's outputs: the model's "
                                                  "forward is not the feed-forward chain weight matching assumes")
            rank_zero_warn(f"ParameterMarketCallback: {self._align_note}; alignment switched off for this run.")
            return seller, False, self._align_note
        return {k: permuted[k] for k in seller}, True, ""

    @torch.no_grad()
    def _evaluate(self, pl_module: pl.LightningModule, state: dict[str, Tensor], *,
                  repair: bool) -> tuple[float, float]:
        """Mean cross-entropy and accuracy of ``pl_module`` with ``state`` on the validation batches (eval mode)."""
        from torch.func import functional_call

        assert self._val is not None
        was_training = pl_module.training
        try:
            if repair:
                state = _repair_batchnorm(pl_module, state, self._val)
            pl_module.eval()
            total, correct, n = 0.0, 0, 0
            for x, y in self._val:
                logits = functional_call(pl_module, state, (x,))
                total += F.cross_entropy(logits.float(), y, reduction="sum").item()
                correct += int((logits.argmax(-1) == y).sum())
                n += len(y)
            return total / n, correct / n
        finally:
            pl_module.train(was_training)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"version": _STATE_VERSION, "run_id": self.run_id, "owner_token": self._token,
                "ledger": json.loads(json.dumps(self.ledger)), "spent": self.spent, "trades": self.trades,
                "last_window_epoch": self.last_window_epoch, "published": list(self.published)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        version = state_dict.get("version", 0)
        if version > _STATE_VERSION:
            raise ConfigError(f"ParameterMarketCallback state version {version} is newer than this library's "
                              f"{_STATE_VERSION}; upgrade lightning_ws to resume this run.")
        self.run_id = state_dict.get("run_id")
        self._token = state_dict.get("owner_token")
        self.ledger = list(state_dict.get("ledger", []))
        self.spent = float(state_dict.get("spent", 0.0))
        self.trades = int(state_dict.get("trades", 0))
        self.last_window_epoch = int(state_dict.get("last_window_epoch", -1))
        self.published = list(state_dict.get("published", []))


# ---------------------------------------------------------------------- helpers
def _interpolate(own: Mapping[str, Tensor], seller: Mapping[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """``own`` with every offered tensor replaced by ``(1 - alpha) own + alpha seller``."""
    out = dict(own)
    for k, v in seller.items():
        out[k] = torch.lerp(own[k], v, alpha)
    return out


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _batches(loader: Any, device: torch.device) -> list[tuple[Tensor, Tensor]]:
    """``(x, labels)`` pairs of a loader of ``{"x", "labels"}`` dicts or ``(x, y)`` tuples, on ``device``."""
    out = []
    for batch in loader:
        if isinstance(batch, Mapping):
            if X not in batch or LABELS not in batch:
                raise ConfigError(f"ParameterMarketCallback: validation batches must be dicts with 'x' and 'labels' "
                                  f"(or (x, y) tuples); got keys {sorted(batch)}.")
            x, y = batch[X], batch[LABELS]
        elif isinstance(batch, (list, tuple)) and len(batch) >= 2:
            x, y = batch[0], batch[1]
        else:
            raise ConfigError("ParameterMarketCallback: validation batches must be {'x', 'labels'} dicts or (x, y).")
        out.append((x.to(device), y.to(device)))
    return out


@torch.no_grad()
def _repair_batchnorm(model: nn.Module, state: dict[str, Tensor],
                      batches: list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """Re-estimate BatchNorm running statistics of ``model`` with ``state`` on ``batches`` (cumulative average)."""
    from torch.func import functional_call

    bns = [(name, m) for name, m in model.named_modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return state
    state = dict(state)
    momenta = [m.momentum for _, m in bns]
    for name, m in bns:
        p = f"{name}." if name else ""
        state[p + "running_mean"] = torch.zeros_like(state[p + "running_mean"])
        state[p + "running_var"] = torch.ones_like(state[p + "running_var"])
        state[p + "num_batches_tracked"] = torch.zeros_like(state[p + "num_batches_tracked"])
        m.momentum = None
    was_training = model.training
    model.train()
    try:
        for x, _ in batches:
            if len(x) > 1:
                functional_call(model, state, (x,))
    finally:
        for (_, m), mom in zip(bns, momenta):
            m.momentum = mom
        model.train(was_training)
    return state


def _dist_ready(trainer: pl.Trainer) -> bool:
    return trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def _broadcast_json(trainer: pl.Trainer, obj: Any) -> Any:
    """Rank zero's JSON-serialisable ``obj`` on every rank (sent as a byte tensor: no pickle)."""
    if not _dist_ready(trainer):
        return obj
    import torch.distributed as dist

    device = trainer.strategy.root_device
    if trainer.is_global_zero:
        data = json.dumps(obj, allow_nan=False).encode()
        size = torch.tensor([len(data)], dtype=torch.long, device=device)
    else:
        data, size = b"", torch.zeros(1, dtype=torch.long, device=device)
    dist.broadcast(size, 0)
    buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device) if trainer.is_global_zero
           else torch.empty(int(size.item()), dtype=torch.uint8, device=device))
    dist.broadcast(buf, 0)
    return json.loads(bytes(buf.cpu().tolist()).decode())


def _broadcast_state(trainer: pl.Trainer, pl_module: pl.LightningModule,
                     state: dict[str, Tensor] | None) -> dict[str, Tensor]:
    """Rank zero's ``state`` (same keys/shapes as the module's state dict) on every rank."""
    if not _dist_ready(trainer):
        assert state is not None
        return state
    import torch.distributed as dist

    out = {}
    for k, ref in pl_module.state_dict().items():
        t = state[k].detach().clone().contiguous() if trainer.is_global_zero else torch.empty_like(ref)
        t = t.to(trainer.strategy.root_device)
        dist.broadcast(t, 0)
        out[k] = t
    return out
