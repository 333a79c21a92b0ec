"""R&B benchmarks (arXiv 2505.00358): callback overhead and the synthetic "hidden skills" experiment.

Sections (``--only overhead|skills|realtext``; default all three):

* **overhead**: median optimizer-step time with ``RnBCallback`` vs the same run without it, interleaved in one
  process (ratio; target <= 1.02), for a tiny 1-layer transformer classifier and for the MiniLM classifier, both
  trained on YouTube comments through ``MixtureDataModule``.
* **skills** (spec §13.1): 16 latent clusters in 32-d with shared teachers and two label-noise clusters, 4 coarse
  "human" domains of 4 clusters each, an evaluation set skewed to clusters 0-3 (which are also the smallest in
  training). Regroup (k-means, k by silhouette) is scored by ARI against the latent clusters; then a 2-layer MLP is
  trained for ``--steps`` steps (batch 32) with stratified (original), stratified (regrouped = "regroup only"), R&B
  (original) and R&B (regrouped), over ``--seeds`` seeds; final eval loss mean +- std and paired differences.

* **realtext** (issue 5): the shipped YouTube comments (5 videos) + SMS as 6 original domains, at most
  ``--realtext-per-domain`` (300) training texts per domain, an evaluation set from the held-out split with
  ``--realtext-skew-share`` (60%) of it on ``--realtext-skew`` (Eminem, SMS). Texts are embedded once with the shipped
  MiniLM (mean pool) and the embeddings are shared by the regroup (k by silhouette; ARI vs the original domains) and
  by every training arm: a frozen-embedding MLP head (384-64-64-2, R&B tracks its final Linear) trained on spam/ham for
  ``--steps`` steps with stratified (original), stratified (regrouped), R&B (regrouped) and R&B (original), over
  ``--seeds`` seeds; eval cross-entropy on the skewed set at the last step, mean +- std and paired differences. A
  frozen encoder keeps 4 methods x several seeds to a few minutes on 2 CPU cores (fine-tuning even a 1-layer encoder
  per arm would not) and matches R&B's premise that the embedding space proxies the gradient geometry.

Run: ``python benchmarks/bench_rnb.py`` (about 5-15 minutes on 2 shared CPU cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import numpy as np
import torch
from torch import nn

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

import lightning.pytorch as pl  # noqa: E402

from lightning_ws.callbacks.rnb import RnBCallback  # noqa: E402
from lightning_ws.datamodules.rnb import MixtureDataModule, TensorMixtureDataModule  # noqa: E402
from lightning_ws.rnb import SemanticRegrouper  # noqa: E402


def _quiet_trainer(max_steps: int, callbacks: list, **kw) -> pl.Trainer:
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    return pl.Trainer(max_steps=max_steps, max_epochs=-1, accelerator="cpu", devices=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_val_batches=0, callbacks=callbacks, **kw)


class _StepTimer(pl.Callback):
    """Wall time of each optimizer step (batch start -> batch end, so every callback hook is inside)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._t = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self._t)


# ----------------------------------------------------------------------------- overhead
def bench_overhead(steps: int, repeats: int) -> None:
    from lightning_ws.modules import TextClassifier

    tiny = {"num_hidden_layers": 1, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2}
    cases = [("tiny transformer (1 layer, d=64)", dict(pretrained=False, config_overrides=tiny), 32),
             ("MiniLM-L6 classifier (pretrained)", dict(), 16)]
    print("\n## Overhead: median step time with vs without RnBCallback (interleaved, same process)")
    print(f"steps per run {steps} (first 3 dropped), runs per arm {repeats}, YouTube comments, max_length 64")
    print(f"{'model':<36} {'batch':>5} {'without [ms]':>13} {'with [ms]':>10} {'ratio':>7} {'hooks [ms/step]':>16} "
          f"{'hooks/step':>11}")
    for name, kw, batch in cases:
        arms: dict[str, list[float]] = {"without": [], "with": []}
        hook_time = {"s": 0.0, "steps": 0}
        for r in range(repeats):
            for arm in (("without", "with") if r % 2 == 0 else ("with", "without")):
                dm = MixtureDataModule("youtube_comments", batch_size=batch, max_length=64, seed=r)
                torch.manual_seed(r)
                model = TextClassifier(num_classes=2, **kw)
                timer = _StepTimer()
                cbs: list = [timer]
                if arm == "with":
                    rnb = RnBCallback(layer="classifier", steps_per_round=5)
                    _time_hooks(rnb, hook_time)
                    cbs.insert(0, rnb)
                _quiet_trainer(steps, cbs).fit(model, dm)
                arms[arm].extend(timer.times[3:])
        wo, wi = statistics.median(arms["without"]), statistics.median(arms["with"])
        per_step = hook_time["s"] / max(1, hook_time["steps"])
        print(f"{name:<36} {batch:>5} {1000 * wo:>13.2f} {1000 * wi:>10.2f} {wi / wo:>7.3f} {1000 * per_step:>16.3f} "
              f"{per_step / wo:>10.2%}")


def _time_hooks(cb: RnBCallback, acc: dict) -> None:
    """Accumulate the wall time spent inside the callback's per-step hooks (forward hook excluded: it only stores a
    reference and registers a tensor hook)."""
    for name in ("on_train_batch_start", "on_after_backward", "on_before_optimizer_step", "on_train_batch_end"):
        fn = getattr(cb, name)

        def timed(*args, _fn=fn, _name=name, **kwargs):
            t0 = time.perf_counter()
            out = _fn(*args, **kwargs)
            acc["s"] += time.perf_counter() - t0
            if _name == "on_train_batch_end":
                acc["steps"] += 1
            return out

        setattr(cb, name, timed)


# ----------------------------------------------------------------------------- hidden skills
def make_skills(seed: int = 0):
    """16 clusters (32-d), 8 linear teachers (4-d subspace, around the centre) shared by pairs, clusters 14-15 label noise, 4 coarse domains, skewed eval."""
    rng = np.random.default_rng(seed)
    k, dim, n_cls = 16, 32, 4
    centers = rng.normal(0.0, 3.0, size=(k, dim))
    teachers = rng.normal(0.0, 1.0, size=(8, n_cls, dim))
    teachers[:, :, 4:] = 0.0  # each teacher reads a 4-d subspace around its cluster centre (learnable in minutes)
    sizes = np.array([60] * 4 + [250] * 12)

    def sample(counts: np.ndarray, noisy: bool):
        xs, ys, cs = [], [], []
        for c, n in enumerate(counts):
            if n == 0:
                continue
            x = centers[c] + rng.normal(0.0, 1.0, size=(n, dim))
            y = (teachers[c % 8] @ (x - centers[c]).T).argmax(0)
            if noisy and c >= 14:
                y = rng.integers(0, n_cls, size=n)
            xs.append(x)
            ys.append(y)
            cs.append(np.full(n, c))
        return np.concatenate(xs), np.concatenate(ys), np.concatenate(cs)

    x, y, clusters = sample(sizes, noisy=True)
    eval_counts = np.array([175] * 4 + [30] * 10 + [0, 0])  # 70% on clusters 0-3, none on the noise clusters
    xe, ye, ce = sample(eval_counts, noisy=False)
    coarse = clusters % 4  # group g = clusters {g, g+4, g+8, g+12}
    return x.astype(np.float32), y, clusters, coarse, xe.astype(np.float32), ye, ce


class MLP(pl.LightningModule):
    """2-layer MLP; ``classifier`` is the tracked head."""

    def __init__(self, dim: int = 32, hidden: int = 64, n_cls: int = 4, lr: float = 3e-3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.classifier = nn.Linear(hidden, n_cls)
        self.lr = lr

    def forward(self, x):
        return self.classifier(self.body(x))

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch["x"]), batch["labels"])

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def _eval_loss(model: MLP, xe: np.ndarray, ye: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(torch.as_tensor(xe)), torch.as_tensor(ye)))


def bench_skills(steps: int, seeds: int, k_grid: list[int]) -> None:
    from sklearn.metrics import adjusted_rand_score

    x, y, clusters, coarse, xe, ye, ce = make_skills(0)
    print("\n## Hidden skills (spec 13.1): 16 latent clusters, 4 coarse domains, eval skewed to clusters 0-3")
    t0 = time.perf_counter()
    res = SemanticRegrouper(k_grid, seed=0, progress=False).fit(x, xe)
    t_regroup = time.perf_counter() - t0
    ari_train = adjusted_rand_score(clusters, res.train_domains)
    ari_eval = adjusted_rand_score(ce, res.eval_domains)
    print(f"regroup: k grid {k_grid} -> chosen k = {res.k} (silhouette); ARI train {ari_train:.3f}, "
          f"eval {ari_eval:.3f}; {t_regroup:.1f} s")
    print("  k:          " + " ".join(f"{r['k']:>6}" for r in res.table))
    print("  silhouette: " + " ".join(f"{r['silhouette']:>6.3f}" for r in res.table))
    ari_coarse = adjusted_rand_score(clusters, coarse)
    print(f"  (coarse human domains vs latent clusters: ARI {ari_coarse:.3f})")
    arms = {
        "stratified (original 4)": ("stratified", coarse, None),
        "stratified (regrouped) = regroup only": ("stratified", res.train_domains, res.eval_domains),
        "R&B (original 4)": ("rnb", coarse, coarse_eval(ce)),
        "R&B (regrouped) = regroup + balance": ("rnb", res.train_domains, res.eval_domains),
    }
    results: dict[str, list[float]] = {name: [] for name in arms}
    wall: dict[str, list[float]] = {name: [] for name in arms}
    print(f"training: MLP 32-64-64-4, Adam 3e-3, batch 32, {steps} steps, lam 3, K 20, seeds {seeds}")
    for seed in range(seeds):
        for name, (method, dom, edom) in arms.items():
            eval_dom = edom if edom is not None else coarse_eval(ce)
            dm = TensorMixtureDataModule(torch.as_tensor(x), torch.as_tensor(y), dom, eval_domains=eval_dom,
                                         batch_size=32, seed=seed)
            torch.manual_seed(seed)
            model = MLP()
            cb = RnBCallback(layer="classifier", method=method, lam=3.0, steps_per_round=20)
            t0 = time.perf_counter()
            _quiet_trainer(steps, [cb]).fit(model, dm)
            wall[name].append(time.perf_counter() - t0)
            results[name].append(_eval_loss(model, xe, ye))
    base = np.asarray(results["stratified (original 4)"])
    print(f"\n{'method':<40} {'eval loss (mean +- std)':>24} {'diff vs strat. orig.':>22} {'fit s':>7}")
    for name, vals in results.items():
        v = np.asarray(vals)
        d = v - base
        print(f"{name:<40} {v.mean():>14.4f} +- {v.std(ddof=1) if len(v) > 1 else 0.0:.4f} "
              f"{d.mean():>+14.4f} +- {d.std(ddof=1) if len(d) > 1 else 0.0:.4f} {np.mean(wall[name]):>7.1f}")
    print("per-seed eval losses: " + "; ".join(f"{n}: {[round(v, 4) for v in vals]}" for n, vals in results.items()))


def coarse_eval(ce: np.ndarray) -> np.ndarray:
    """Original (coarse) domain of evaluation points: the same cluster -> group map as training."""
    return ce % 4


# ----------------------------------------------------------------------------- real text
def make_realtext(per_domain: int, skew: tuple[str, ...], skew_share: float, seed: int = 0):
    """YouTube comments (5 videos) + SMS (6 original domains): <= ``per_domain`` training texts per domain and an
    evaluation set drawn from the held-out split with ``skew_share`` of it split evenly over the ``skew`` domains."""
    from lightning_ws.rnb.data import load_mixture_source

    src = load_mixture_source("youtube_sms", eval_fraction=0.2, split_seed=0)
    names = list(src.domain_names)
    unknown = [s for s in skew if s not in names]
    if unknown or not skew or len(skew) >= len(names) or not 0.0 < skew_share < 1.0:
        raise SystemExit(f"--realtext-skew must name 1..{len(names) - 1} of {names} (got {list(skew)}) and "
                         f"--realtext-skew-share must lie in (0, 1) (got {skew_share}).")
    rng = np.random.default_rng(seed)
    tr_rows = []
    for d in range(len(names)):
        rows = np.flatnonzero(src.train_domains == d)
        tr_rows.append(np.sort(rng.choice(rows, size=min(per_domain, len(rows)), replace=False)))
    tr = np.concatenate(tr_rows)
    skew_ids = [names.index(s) for s in skew]
    rest = [d for d in range(len(names)) if d not in skew_ids]
    avail = np.bincount(src.eval_domains, minlength=len(names))
    n_skew = int(min(avail[skew_ids]))  # per skewed domain
    n_rest = int(round(n_skew * len(skew_ids) * (1.0 - skew_share) / skew_share / len(rest)))
    n_rest = min(n_rest, int(min(avail[rest])))
    ev_rows = []
    for d in range(len(names)):
        rows = np.flatnonzero(src.eval_domains == d)
        ev_rows.append(np.sort(rng.choice(rows, size=n_skew if d in skew_ids else n_rest, replace=False)))
    ev = np.concatenate(ev_rows)
    return ([src.train_texts[i] for i in tr], src.train_labels[tr], src.train_domains[tr],
            [src.eval_texts[i] for i in ev], src.eval_labels[ev], src.eval_domains[ev], names)


def bench_realtext(steps: int, seeds: int, k_grid: list[int], per_domain: int, skew: tuple[str, ...],
                   skew_share: float) -> None:
    """Real text (issue 5): frozen MiniLM embeddings + MLP head, stratified (original / regrouped) vs R&B."""
    from sklearn.metrics import adjusted_rand_score

    from lightning_ws.rnb import MiniLMEmbedder

    tt, yt, dt, te, ye, de, names = make_realtext(per_domain, skew, skew_share, seed=0)
    m0 = len(names)
    print("\n## Real text: YouTube comments (5 videos) + SMS = 6 original domains, MiniLM regroup, skewed eval")
    print(f"train {len(tt)} texts ({', '.join(f'{n} {c}' for n, c in zip(names, np.bincount(dt, minlength=m0)))}); "
          f"eval {len(te)} texts ({', '.join(f'{n} {c}' for n, c in zip(names, np.bincount(de, minlength=m0)))}); "
          f"eval share of {'+'.join(skew)}: {np.isin(de, [names.index(s) for s in skew]).mean():.1%}; "
          f"spam rate train {yt.mean():.2f}, eval {ye.mean():.2f}")
    t0 = time.perf_counter()
    embedder = MiniLMEmbedder(batch_size=64, max_length=128)
    emb = embedder(list(tt) + list(te))  # embedded once, shared by the regroup and every training arm
    xt, xe = emb[:len(tt)], emb[len(tt):]
    t_embed = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = SemanticRegrouper(k_grid, seed=0, progress=False).fit(xt, xe)
    t_regroup = time.perf_counter() - t0
    ari_train = adjusted_rand_score(dt, res.train_domains)
    ari_eval = adjusted_rand_score(de, res.eval_domains)
    print(f"embed (MiniLM-L6, mean pool, max_length 128): {t_embed:.1f} s; regroup k grid {k_grid} -> chosen k = "
          f"{res.k} (silhouette {max(r['silhouette'] for r in res.table):.3f}); ARI vs original domains: train "
          f"{ari_train:.3f}, eval {ari_eval:.3f}; {t_regroup:.1f} s")
    print("  k:          " + " ".join(f"{r['k']:>6}" for r in res.table))
    print("  silhouette: " + " ".join(f"{r['silhouette']:>6.3f}" for r in res.table))
    print(f"  regrouped train sizes {res.train_sizes.tolist()}, p_eval {[round(float(p), 3) for p in res.p_eval]}")
    arms = {
        f"stratified (original {m0})": ("stratified", dt, de),
        f"stratified (regrouped k={res.k})": ("stratified", res.train_domains, res.eval_domains),
        f"R&B (regrouped k={res.k})": ("rnb", res.train_domains, res.eval_domains),
        f"R&B (original {m0})": ("rnb", dt, de),
    }
    xt_t, xe_t = torch.as_tensor(xt), torch.as_tensor(xe)
    yt_t, ye_t = torch.as_tensor(yt, dtype=torch.long), torch.as_tensor(ye, dtype=torch.long)
    results: dict[str, list[float]] = {name: [] for name in arms}
    accs: dict[str, list[float]] = {name: [] for name in arms}
    finals: dict[str, list[np.ndarray]] = {name: [] for name in arms}
    print(f"training: frozen MiniLM embedding (384-d) -> MLP 384-64-64-2 (R&B tracks the final Linear), Adam 3e-3, "
          f"batch 32, {steps} steps, lam 3, K 20, seeds {seeds}; eval loss = mean CE on the skewed eval set at the "
          f"last step")
    for seed in range(seeds):
        for name, (method, dom, edom) in arms.items():
            dm = TensorMixtureDataModule(xt_t, yt_t, dom, eval_domains=edom, num_domains=int(dom.max()) + 1,
                                         batch_size=32, seed=seed)
            torch.manual_seed(seed)  # model init only (Lightning-module construction draws from the global RNG)
            model = MLP(dim=xt.shape[1], hidden=64, n_cls=2)
            cb = RnBCallback(layer="classifier", method=method, lam=3.0, steps_per_round=20)
            _quiet_trainer(steps, [cb]).fit(model, dm)
            results[name].append(_eval_loss(model, xe_t.numpy(), ye_t.numpy()))
            with torch.no_grad():
                accs[name].append(float((model(xe_t).argmax(1) == ye_t).float().mean()))
            finals[name].append(dm.mixture.numpy().copy())

    def _ms(v: list[float]) -> str:
        a = np.asarray(v)
        return f"{a.mean():.4f} +- {a.std(ddof=1) if len(a) > 1 else 0.0:.4f}"

    base = np.asarray(results[f"stratified (original {m0})"])
    print(f"\n| method | eval loss (mean +- std, {seeds} seeds) | diff vs stratified (original) | eval acc |")
    print("|---|---|---|---|")
    for name in arms:
        print(f"| {name} | {_ms(results[name])} | {_ms(list(np.asarray(results[name]) - base))} | "
              f"{_ms(accs[name])} |")
    print("per-seed eval losses: " + "; ".join(f"{n}: {[round(v, 4) for v in vals]}" for n, vals in results.items()))
    for name, (method, _, _) in arms.items():
        if method == "rnb":
            print(f"final mixture {name} (seed 0): {[round(float(p), 3) for p in finals[name][0]]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("overhead", "skills", "realtext"), default=None)
    parser.add_argument("--steps", type=int, default=300, help="training steps per run (skills).")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--overhead-steps", type=int, default=23)
    parser.add_argument("--overhead-repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--realtext-per-domain", type=int, default=300, help="training texts per original domain.")
    parser.add_argument("--realtext-skew", default="Eminem,SMS", help="comma-separated original domains the eval "
                        "set is skewed toward.")
    parser.add_argument("--realtext-skew-share", type=float, default=0.6, help="eval share of the skewed domains.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {args.threads}, CPU count {os.cpu_count()}, "
          f"load avg {os.getloadavg()[0]:.1f}")
    if args.only in (None, "skills"):
        bench_skills(args.steps, args.seeds, [4, 8, 12, 16, 20, 24])
    if args.only in (None, "realtext"):
        bench_realtext(args.steps, args.seeds, [3, 4, 6, 8, 12, 16, 24, 32], args.realtext_per_domain,
                       tuple(s.strip() for s in args.realtext_skew.split(",") if s.strip()), args.realtext_skew_share)
    if args.only in (None, "overhead"):
        bench_overhead(args.overhead_steps, args.overhead_repeats)


if __name__ == "__main__":
    main()
