"""``lightning-ws datacomp``: build the noisy demo pool, compute filter signals, run the filter ensemble.

    lightning-ws datacomp build-pool --out data/datacomp_pool
    lightning-ws datacomp signals --shards data/datacomp_pool --cache data/datacomp_signals [--clip run.ckpt]
    lightning-ws datacomp filter --cache data/datacomp_signals --out data/keep_uids.npy --shards data/datacomp_pool

Multi-device signal passes use Lightning's ``predict`` instead:
``lightning-ws predict -c configs/predict/clip_signals.yaml``.
``filter`` prints each filter's vote shares and, when the shards carry the pool builder's truth (``truth_keep``),
precision / recall / F1 of "keep" for keep-all, every single filter and the ensemble.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lightning_ws.errors import ConfigError

__all__ = ["main"]


def _build_pool(args: argparse.Namespace) -> int:
    from lightning_ws.datacomp.pool import NoiseSpec, build_pool, load_cifar10_subset
    from lightning_ws.datacomp.shards import write_shards

    src = load_cifar10_subset("pool")
    if args.limit:
        src = src[: args.limit]
    samples = build_pool(src, NoiseSpec(args.mismatch, args.junk, args.blank, args.near_duplicate), seed=args.seed)
    paths = write_shards(samples, args.out, samples_per_shard=args.samples_per_shard, overwrite=args.overwrite)
    bad = sum(not s.meta["truth_keep"] for s in samples)
    print(f"wrote {len(samples)} image-caption pairs ({bad} bad by construction) into {len(paths)} shards in "
          f"{args.out}")
    return 0


def _signals(args: argparse.Namespace) -> int:
    from lightning_ws.datacomp.signals import compute_signals

    clip = None
    context_length, image_size = 32, 32
    if args.clip:
        from lightning_ws.modules.clip import CLIPModule

        module = CLIPModule.load_from_checkpoint(args.clip, map_location="cpu")
        clip, context_length = module.model, module.context_length
        image_size = int(module.model.visual.image_size[0]) if hasattr(module.model.visual, "image_size") else 32
    det = None
    if args.detector:
        from lightning_ws.datacomp.filters import OwlDetector, tiny_owlvit

        det = OwlDetector(tiny_owlvit() if args.detector == "tiny-random" else args.detector)
    paths = compute_signals(args.shards, args.cache, clip_model=clip, detector=det, clip_image_size=image_size,
                            context_length=context_length, batch_size=args.batch_size, device=args.device)
    print(f"wrote {len(paths)} signal cache file(s) to {args.cache} (shards already cached were skipped)")
    return 0


def _filter(args: argparse.Namespace) -> int:
    from lightning_ws.datacomp import ensemble as E
    from lightning_ws.datacomp import filters as Fl
    from lightning_ws.io import save_json

    caches = sorted(Path(args.cache).glob("*.signals.safetensors"))
    if not caches:
        raise ConfigError(f"no *.signals.safetensors in {args.cache}; run `lightning-ws datacomp signals` first.")
    sig = Fl.load_signal_caches(caches)
    lfs = Fl.default_lfs(list(sig))
    ens = E.FilterEnsemble(lfs, label_model=args.label_model, latent=args.latent, threshold=args.threshold,
                           top_fraction=args.top_fraction)
    res = ens.run(sig)
    E.save_submission(args.out, res)
    print(f"kept {res.report['n_kept']} of {res.report['n']} ({res.report['kept_share']:.1%}); estimated P(keep) "
          f"{res.report['class_prior_keep']:.3f}; uids -> {args.out}")
    print("| filter | coverage | keep votes | drop votes |")
    for name, st in res.report["lf_stats"].items():
        print(f"| {name} | {st['coverage']:.3f} | {st['keep_votes']:.3f} | {st['drop_votes']:.3f} |")
    if args.shards:
        from lightning_ws.datacomp.shards import iter_shards

        truth = {s.uid: s.meta.get("truth_keep") for s in iter_shards(args.shards)}
        if all(v is not None for v in truth.values()):
            y = np.array([bool(truth[u]) for u in res.uids])
            rows = [("keep all", np.ones(len(y), bool))] + [
                (f"single: {lf.name}", E.single_filter_keep(res.L[:, j])) for j, lf in enumerate(lfs)] + [
                (f"ensemble ({args.label_model})", res.keep)]
            print("| selection | precision | recall | F1 | kept |")
            for name, keep in rows:
                m = E.keep_metrics(keep, y)
                print(f"| {name} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['n_kept']} |")
        if args.filtered_out:
            paths, n = E.write_filtered_shards(args.shards, args.filtered_out, res.kept_uids)
            print(f"wrote {n} kept samples into {len(paths)} shards in {args.filtered_out}")
    if args.report:
        save_json(args.report, res.report)
    return 0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="lightning-ws datacomp", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build-pool", help="the noisy CIFAR-10 image-caption pool, as DataComp-layout shards")
    b.add_argument("--out", required=True)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--limit", type=int, default=0, help="use only the first N source images (0 = all 2,000)")
    b.add_argument("--samples-per-shard", type=int, default=256)
    b.add_argument("--mismatch", type=float, default=0.15)
    b.add_argument("--junk", type=float, default=0.10)
    b.add_argument("--blank", type=float, default=0.05)
    b.add_argument("--near-duplicate", type=float, default=0.10)
    b.add_argument("--overwrite", action="store_true")
    s = sub.add_parser("signals", help="filter signals per shard (one process; multi-device: "
                                        "configs/predict/clip_signals.yaml)")
    s.add_argument("--shards", required=True)
    s.add_argument("--cache", required=True)
    s.add_argument("--clip", help="a CLIPModule checkpoint for the CLIP score")
    s.add_argument("--detector", help="a local OWL-ViT folder, or tiny-random (wiring only)")
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--device", default="cpu")
    f = sub.add_parser("filter", help="label-model ensemble -> kept uids (.npy), report, filtered shards")
    f.add_argument("--cache", required=True)
    f.add_argument("--out", required=True, help="DataComp uid array (.npy)")
    f.add_argument("--label-model", default="dawid_skene")
    f.add_argument("--latent", choices=("failure_modes", "binary"), default="failure_modes",
                   help="one latent drop class per failure mode (default) or one binary drop class")
    f.add_argument("--threshold", type=float, default=None)
    f.add_argument("--top-fraction", type=float, default=None)
    f.add_argument("--shards", help="the pool shards (for truth metrics and --filtered-out)")
    f.add_argument("--filtered-out", help="write the kept samples as new shards here")
    f.add_argument("--report", help="write the ensemble report (JSON) here")
    args = ap.parse_args(argv)
    return {"build-pool": _build_pool, "signals": _signals, "filter": _filter}[args.cmd](args)
