"""DataComp-style filtering and CLIP training on the shipped real images (2 shared CPU cores).

Prints, in order:
1. shard reading: samples/s of ``lightning_ws.datacomp.shards.iter_shards`` (webdataset) vs plain ``tarfile`` over the
   same pool shards, interleaved repeats, and their ratio;
2. the filter-signal pass in samples/s (rules only; + CLIP score; + a tiny random OWL-ViT detector, for speed only);
3. filter quality (truth known): precision / recall / F1 of "keep" for keep-all, each single filter, the label-model
   ensembles with one latent drop class per failure mode (the default: Dawid-Skene; chosen on the development pool,
   pool seed 1 with 1,000 source images and its own scorer, whose rows are printed first) and with the old binary
   latent, and "drop if any filter drops" (no label model);
4. CLIP from scratch (tiny config) at equal steps, seeds 0-2, on the unfiltered pool, the default ensemble's subset
   (skipped when it keeps everything) and the "any filter drops" subset:
   zero-shot CIFAR-10 on 1,000 held-out images (never in the pool), COCO recall@5 (154 photos x 5 captions), and the
   mean training step time.

The CLIP-score filter uses a CLIP trained here on the unfiltered pool (seed 100): no outside model exists offline.

    OMP_NUM_THREADS=1 python benchmarks/bench_datacomp.py [--steps 200] [--seeds 0 1 2] [--quick] [--no-dev]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _fit_clip(shards: str, *, steps: int, seed: int, batch_size: int, keep_uids: str | None, val: bool = True):
    import lightning.pytorch as pl

    from lightning_ws.datamodules.webdataset import WebDatasetDataModule
    from lightning_ws.modules.clip import CLIPModule

    class _StepTimer(pl.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._t = 0.0

        def on_train_batch_start(self, *a) -> None:  # noqa: ANN002
            self._t = time.perf_counter()

        def on_train_batch_end(self, *a) -> None:  # noqa: ANN002
            self.times.append(time.perf_counter() - self._t)

    pl.seed_everything(seed, verbose=False)
    model = CLIPModule(lr=1e-3, weight_decay=0.1, warmup_steps=max(1, steps // 10))
    dm = WebDatasetDataModule(shards, batch_size=batch_size, keep_uids=keep_uids, shuffle_buffer=500, seed=seed,
                              val_batch_size=500, zeroshot="cifar10" if val else None,
                              retrieval="coco" if val else None)
    timer = _StepTimer()
    trainer = pl.Trainer(max_steps=steps, max_epochs=-1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=1.0 if val else 0, check_val_every_n_epoch=None, val_check_interval=steps,
                         callbacks=[timer])
    trainer.fit(model, dm)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    return model, metrics, float(np.median(timer.times[5:] or timer.times))


DEFAULT = ("dawid_skene", "failure_modes")


def _quality_table(title: str, sig: dict, truth: dict) -> tuple[dict, np.ndarray]:
    """Print precision / recall / F1 of keep for keep-all, each single filter, any-drop and the ensembles."""
    from lightning_ws.datacomp import ensemble as E
    from lightning_ws.datacomp import filters as Fl

    uids = Fl.uids_from_signals(sig)
    y = np.array([truth[u] for u in uids])
    lfs = Fl.default_lfs(list(sig))
    rows = [("keep all", E.keep_metrics(np.ones(len(y), bool), y))]
    for lf in lfs:
        rows.append((f"single: {lf.name}", E.keep_metrics(E.single_filter_keep(lf(sig)), y)))
    L = np.stack([lf(sig) for lf in lfs], 1)
    rows.append(("any filter drops -> drop (no label model)", E.keep_metrics((L != Fl.DROP).all(1), y)))
    results = {}
    for latent in ("failure_modes", "binary"):
        for lm in ("dawid_skene", "moment_matching", "auto", "majority_vote", "triplet"):
            if lm == "triplet" and latent == "failure_modes":
                continue  # FlyingSquid is binary
            res = E.FilterEnsemble(lfs, label_model=lm, latent=latent).run(sig)
            results[(lm, latent)] = res
            tag = " (default)" if (lm, latent) == DEFAULT else ""
            rows.append((f"ensemble {lm}, {latent}{tag}, P(keep)>=0.5; prior {res.report['class_prior_keep']:.2f}",
                         E.keep_metrics(res.keep, y)))
    print(f"{title}: constant filters left out of the fit: {results[DEFAULT].report['lfs_constant']}")
    print("| filter | precision | recall | F1 | kept |")
    for name, mt in rows:
        print(f"| {name} | {mt['precision']:.3f} | {mt['recall']:.3f} | {mt['f1']:.3f} | "
              f"{mt['n_kept']} ({mt['kept']:.0%}) |")
    best_single = max(mt["f1"] for name, mt in rows if name.startswith("single"))
    ens_f1 = E.keep_metrics(results[DEFAULT].keep, y)["f1"]
    print(f"{title}: ensemble (default) F1 {ens_f1:.3f} vs best single filter F1 {best_single:.3f}", flush=True)
    return results, L


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="400 source images, 30 steps, one seed (wiring check)")
    ap.add_argument("--no-dev", action="store_true", help="skip the development pool (seed 1) rows")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    from lightning_ws.datacomp import ensemble as E
    from lightning_ws.datacomp import filters as Fl
    from lightning_ws.datacomp import pool, shards
    from lightning_ws.datacomp.signals import compute_signals

    if args.quick:
        args.steps, args.seeds = 30, [0]
    work = Path(tempfile.mkdtemp(prefix="bench_datacomp_"))
    try:
        src = pool.load_cifar10_subset("pool")
        if args.quick:
            src = src[:400]
        samples = pool.build_pool(src, seed=0)
        truth = {s.uid: s.meta["truth_keep"] for s in samples}
        kinds = {s.uid: s.meta["noise"] for s in samples}
        shards.write_shards(samples, work / "pool", samples_per_shard=256)
        print(f"pool: {len(samples)} pairs from {len(src)} CIFAR-10 test images, {sum(truth.values())} good; "
              f"bad: " + ", ".join(f"{k} {sum(v == k for v in kinds.values())}" for k in
                                   ("mismatch", "junk", "blank", "near_duplicate")))

        # 1. shard reading
        urls = shards.list_shards(work / "pool")
        rates = {"webdataset": [], "tarfile": []}
        for _ in range(5):
            t = time.perf_counter()
            n = sum(1 for _ in shards.iter_shards(urls))
            rates["webdataset"].append(n / (time.perf_counter() - t))
            t = time.perf_counter()
            m = sum(1 for _ in shards.raw_tar_read(urls))
            rates["tarfile"].append(m / 3 / (time.perf_counter() - t))  # 3 members per sample
        wds_r, tar_r = np.median(rates["webdataset"]), np.median(rates["tarfile"])
        print(f"| shard reading (samples/s, median of 5 interleaved) | iter_shards {wds_r:,.0f} | tarfile "
              f"{tar_r:,.0f} | ratio {wds_r / tar_r:.2f} |")

        # scorer CLIP (trained on the unfiltered pool)
        scorer, _, _ = _fit_clip(str(work / "pool"), steps=args.steps, seed=100, batch_size=args.batch_size,
                                 keep_uids=None, val=False)

        # 2. signal pass
        from lightning_ws.datacomp.filters import OwlDetector, tiny_owlvit

        t = time.perf_counter()
        compute_signals(urls, work / "cache_rules")
        r_rules = len(samples) / (time.perf_counter() - t)
        t = time.perf_counter()
        paths = compute_signals(urls, work / "cache", clip_model=scorer.model)
        r_clip = len(samples) / (time.perf_counter() - t)
        t = time.perf_counter()
        compute_signals(urls[:2], work / "cache_det", clip_model=scorer.model, detector=OwlDetector(tiny_owlvit()))
        r_det = min(len(samples), 512) / (time.perf_counter() - t)
        print(f"| filter-signal pass (samples/s) | rules {r_rules:,.0f} | + CLIP score {r_clip:,.0f} | "
              f"+ CLIP + tiny OWL-ViT {r_det:,.0f} |")

        # 3. filter quality (development pool first: the defaults were chosen there)
        if not args.no_dev and not args.quick:
            dev_src = pool.load_cifar10_subset("pool")[:1000]
            dev = pool.build_pool(dev_src, seed=1)
            dev_truth = {s.uid: s.meta["truth_keep"] for s in dev}
            shards.write_shards(dev, work / "dev", samples_per_shard=256)
            dev_scorer, _, _ = _fit_clip(str(work / "dev"), steps=args.steps, seed=100, batch_size=args.batch_size,
                                         keep_uids=None, val=False)
            dev_paths = compute_signals(shards.list_shards(work / "dev"), work / "dev_cache",
                                        clip_model=dev_scorer.model)
            _quality_table("development pool (seed 1, 1,000 images)", Fl.load_signal_caches(dev_paths), dev_truth)
        sig = Fl.load_signal_caches(paths)
        uids = Fl.uids_from_signals(sig)
        results, L = _quality_table("benchmark pool (seed 0)", sig, truth)
        subsets = {"unfiltered": None}
        ens_keep = results[DEFAULT].keep
        if ens_keep.all():
            print("the default ensemble keeps every sample: its CLIP runs are the unfiltered runs")
        else:
            E.save_submission(work / "ensemble.npy", results[DEFAULT])
            subsets["ensemble (default)"] = str(work / "ensemble.npy")
        shards.save_uid_array(work / "any_drop.npy", [u for u, k in zip(uids, (L != Fl.DROP).all(1)) if k])
        subsets["any filter drops"] = str(work / "any_drop.npy")

        # 4. CLIP from scratch on each subset, equal steps
        out: dict[str, list] = {name: [] for name in subsets}
        for seed in args.seeds:
            for name, keep in subsets.items():
                _, met, step_s = _fit_clip(str(work / "pool"), steps=args.steps, seed=seed,
                                           batch_size=args.batch_size, keep_uids=keep)
                out[name].append((met["val/zeroshot_acc"], met["val/i2t_R@5"], met["val/t2i_R@5"], step_s))
                print(f"| {name} | seed {seed} | zero-shot CIFAR-10 {met['val/zeroshot_acc']:.3f} | COCO i2t R@5 "
                      f"{met['val/i2t_R@5']:.3f} | t2i R@5 {met['val/t2i_R@5']:.3f} | step {step_s * 1000:.0f} ms |",
                      flush=True)
        for name, vals in out.items():
            a = np.array(vals)
            print(f"| {name} mean +- sd over {len(a)} seeds | zero-shot {a[:, 0].mean():.3f} +- {a[:, 0].std():.3f} "
                  f"| i2t R@5 {a[:, 1].mean():.3f} | t2i R@5 {a[:, 2].mean():.3f} | step {a[:, 3].mean() * 1000:.0f} "
                  f"ms |")
        print(json.dumps({"steps": args.steps, "batch_size": args.batch_size, "seeds": args.seeds}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
