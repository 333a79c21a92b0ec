"""``lightning-ws rnb``: offline Regroup for R&B (arXiv 2505.00358).

Actions:

* ``regroup``: embed a text source's training and evaluation split, k-means over a grid of k, choose k by silhouette,
  map evaluation texts to the nearest training centroid, write the result folder (``arrays.safetensors`` +
  ``result.json``) that :class:`lightning_ws.datamodules.rnb.MixtureDataModule` reads via ``regroup_dir``.
* ``show``: print the per-k table and ``p_eval`` of a result folder.

Example::

    lightning-ws rnb regroup --source youtube_comments --k 2 3 4 5 6 8 --out runs/rnb/youtube_regroup
    lightning-ws rnb show runs/rnb/youtube_regroup
"""

from __future__ import annotations

import argparse

from lightning_ws.errors import ConfigError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``lightning-ws rnb`` (R&B, arXiv 2505.00358)."""
    parser = argparse.ArgumentParser(prog="lightning-ws rnb", description="R&B (arXiv 2505.00358) offline tools.")
    sub = parser.add_subparsers(dest="action", required=True)
    rg = sub.add_parser("regroup", help="k-means domains from text embeddings; writes a result folder.")
    rg.add_argument("--source", default="youtube_comments",
                    help="youtube_comments | youtube_sms | youtube | sms | a WRENCH folder | a .jsonl/.csv file "
                         "(columns: see --text-column, --label-column, --domain-column, --split-column).")
    rg.add_argument("--text-column", default="text", help="file sources: the text column.")
    rg.add_argument("--label-column", default="label",
                    help="file sources: the integer class-id column ('none' = unlabelled).")
    rg.add_argument("--domain-column", default="domain",
                    help="file sources: the original domain column ('none' = one domain; regrouping needs none).")
    rg.add_argument("--split-column", default="split",
                    help="file sources: optional train/eval/test column ('none' = ignore).")
    rg.add_argument("--test-fraction", type=float, default=0.1,
                    help="held-out test fraction per domain (no fixed split); MixtureDataModule's default is 0.1.")
    rg.add_argument("--out", required=True, help="output folder (created).")
    rg.add_argument("--k", type=int, nargs="+", default=[2, 3, 4, 5, 6, 8, 10], help="grid of k (each >= 2).")
    rg.add_argument("--eval-fraction", type=float, default=0.2, help="held-out fraction per domain (no fixed split).")
    rg.add_argument("--split-seed", type=int, default=0, help="seed of the train/eval split.")
    rg.add_argument("--embedder", choices=("minilm", "tfidf"), default="minilm",
                    help="minilm = the shipped all-MiniLM-L6-v2, mean pooling; tfidf = TF-IDF + SVD.")
    rg.add_argument("--model-path", default=None, help="local transformers folder for --embedder minilm.")
    rg.add_argument("--prefix", default="", help="string prepended to every text before embedding.")
    rg.add_argument("--max-length", type=int, default=128, help="token truncation for --embedder minilm.")
    rg.add_argument("--batch-size", type=int, default=64, help="texts per embedding forward pass.")
    rg.add_argument("--tfidf-dim", type=int, default=64, help="SVD dimensions for --embedder tfidf.")
    rg.add_argument("--seed", type=int, default=0, help="k-means / silhouette subsample seed.")
    rg.add_argument("--n-init", type=int, default=3, help="k-means restarts per k.")
    rg.add_argument("--silhouette-sample-size", type=int, default=20_000, help="silhouette subsample size.")
    rg.add_argument("--no-progress", action="store_true", help="hide progress bars.")
    sh = sub.add_parser("show", help="print a result folder's per-k table and p_eval.")
    sh.add_argument("folder")
    return parser


def _regroup(args: argparse.Namespace) -> int:
    from lightning_ws.rnb.data import load_mixture_source
    from lightning_ws.rnb.regroup import MiniLMEmbedder, SemanticRegrouper, TfidfSvdEmbedder

    def col(v: str) -> str | None:
        return None if v.lower() in ("none", "null", "") else v

    data = load_mixture_source(args.source, eval_fraction=args.eval_fraction, split_seed=args.split_seed,
                               test_fraction=args.test_fraction, text_column=args.text_column,
                               label_column=col(args.label_column), domain_column=col(args.domain_column),
                               split_column=col(args.split_column))
    if args.embedder == "minilm":
        embedder = MiniLMEmbedder(args.model_path, batch_size=args.batch_size, max_length=args.max_length,
                                  prefix=args.prefix, progress=not args.no_progress)
    else:
        if args.prefix:
            raise ConfigError("--prefix applies to --embedder minilm only.")
        embedder = TfidfSvdEmbedder(args.tfidf_dim, seed=args.seed)
    regrouper = SemanticRegrouper(args.k, embedder=embedder, seed=args.seed, n_init=args.n_init,
                                  silhouette_sample_size=args.silhouette_sample_size, progress=not args.no_progress)
    result = regrouper.fit(data.train_texts, data.eval_texts)
    result.metadata.update({"source": args.source, "eval_fraction": args.eval_fraction,
                            "test_fraction": args.test_fraction, "split_seed": args.split_seed,
                            "prefix": args.prefix, "text_field": args.text_column,
                            "original_domains": list(data.domain_names)})
    folder = result.save(args.out)
    _print(result)
    print(f"wrote {folder} (use it as MixtureDataModule(regroup_dir=...) with source={args.source!r}, "
          f"eval_fraction={args.eval_fraction}, test_fraction={args.test_fraction}, split_seed={args.split_seed}; "
          f"it is tied to these rows by data_hash {result.metadata.get('data_hash', '?')[:12]})")
    return 0


def _print(result) -> None:  # noqa: ANN001 - RegroupResult
    print(f"{'k':>4} {'silhouette':>11} {'hook_loss':>10} {'inertia':>12} {'min_size':>9} {'eval_cov':>9}")
    for row in result.table:
        sil = "-" if row.get("silhouette") is None else f"{row['silhouette']:.4f}"
        hook = "-" if row.get("hook_loss") is None else f"{row['hook_loss']:.4f}"
        print(f"{row['k']:>4} {sil:>11} {hook:>10} {row['inertia']:>12.3f} {row['min_cluster_size']:>9} "
              f"{row['eval_domains_covered']:>9}")
    print(f"chosen k = {result.k}; train sizes = {result.train_sizes.tolist()}; "
          f"p_eval = {[round(float(v), 4) for v in result.p_eval]}")


def main(argv: list[str] | None = None) -> int:
    """Run ``lightning-ws rnb ACTION ...`` (R&B Regroup, arXiv 2505.00358); returns the exit code.

    Raises:
        ConfigError / DataError / DataFileNotFoundError: bad input (the ``lightning-ws`` entry point prints them).
    """
    args = build_parser().parse_args(argv)
    if args.action == "regroup":
        if args.n_init < 1 or args.batch_size < 1 or args.max_length < 2:
            raise ConfigError("--n-init and --batch-size must be >= 1 and --max-length >= 2.")
        return _regroup(args)
    from lightning_ws.rnb.regroup import RegroupResult

    _print(RegroupResult.load(args.folder))
    return 0



if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(main())
