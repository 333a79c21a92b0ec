"""``lightning-ws weaver``: Weaver verifier-ensemble selection reports (arXiv 2506.18203).

``lightning-ws weaver select --data gsm8k`` prints first sample, majority vote, naive ensemble, best single verifier
(dev), logistic regression (dev), Weaver in each supervision mode and oracle Pass@N side by side on held-out
problems, and with ``--out DIR`` writes ``report.json``, the fitted Weaver (``weaver/``) and the per-candidate Weaver
scores of every problem (``weaver_scores.safetensors`` + ``weaver_scores.json``) for distillation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from lightning_ws.errors import LightningWSError
from lightning_ws.weaver.select import _NORM_METHODS, BINARIZE_METHODS, TIE_BREAKS, UNANSWERED

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``lightning-ws weaver``."""
    ap = argparse.ArgumentParser(prog="lightning-ws weaver", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="action", required=True)
    sp = sub.add_parser("select", help="compare selectors on held-out problems and write Weaver scores")
    sp.add_argument("--data", default="gsm8k",
                    help="'gsm8k' (shipped candidates + offline heuristic verifiers) or a .jsonl/.parquet file in "
                         "the Weaver layout")
    sp.add_argument("--embed", action="store_true",
                    help="gsm8k only: add the MiniLM question-solution similarity and candidate-consensus verifiers")
    sp.add_argument("--verifiers", default="all", choices=["all", "heuristic"],
                    help="gsm8k only: 'all' (heuristic + cross-candidate consistency verifiers, default) or "
                         "'heuristic' (the five per-candidate heuristics)")
    sp.add_argument("--cache-dir", type=Path, default=None, help="gsm8k --embed: cache folder for the embeddings")
    sp.add_argument("--dev-fraction", type=float, default=0.1, help="labelled dev problems (default 0.1)")
    sp.add_argument("--seed", type=int, default=0)
    # Model options default to None = the library's Weaver() default, so the command fits the model a user of
    # Weaver() gets (before, it pinned the issue-4 recipe: MeTaL moment matching on "prior"-binarised votes, which
    # fails at extreme correct rates and on a single pooled judge; BENCHMARKS.md, issue 17).
    sp.add_argument("--label-model", default=None,
                    help="label model (default: Weaver's, 'answer_level'); also moment_matching, dawid_skene, "
                         "triplet, metal_compat (the reference's fixed-step recipe), ...")
    sp.add_argument("--normalize", default=None, choices=list(_NORM_METHODS),
                    help="score normalisation (default: Weaver's, 'quantile')")
    sp.add_argument("--binarize", default=None, choices=list(BINARIZE_METHODS),
                    help="vote thresholds of the binary label models (default: Weaver's, 'youden')")
    sp.add_argument("--threshold", type=float, default=None, help="threshold for --binarize fixed (default 0.5)")
    sp.add_argument("--tie-break", default=None, choices=list(TIE_BREAKS),
                    help="ties among the top scores (default: Weaver's, 'continuous_mean')")
    sp.add_argument("--no-guard", action="store_true",
                    help="always use the label model (default: the label-free guard may fall back to the pooled "
                         "mean score or majority vote and says so in the report)")
    sp.add_argument("--guard-split", default=None, choices=["auto", "on", "off"],
                    help="the guard's split test of a kept label model (default: Weaver's, 'auto': only where no two "
                         "candidates of a problem share an answer, e.g. preference pairs; 'on': every label-free fit "
                         "of at least 32 problems; 'off': never)")
    sp.add_argument("--no-groups", action="store_true",
                    help="count every verifier as its own source (default: detect groups of near-duplicate or "
                         "exchangeable verifiers, e.g. repeated draws of one judge, and pool each into one source)")
    sp.add_argument("--keep-copies", action="store_true",
                    help="keep verifier columns that copy another (the same scores, or the same ranks on another "
                         "scale) as separate verifiers (default: each such set counts as one, with a warning)")
    sp.add_argument("--keep-flat", action="store_true",
                    help="keep verifiers that give every candidate of each problem the same score (default: left "
                         "out, with a warning: they cannot rank candidates)")
    sp.add_argument("--keep-answer-blind", action="store_true",
                    help="keep verifiers (or pooled groups) whose scores do not differ between the answers of a "
                         "problem (default: left out, with a warning: they cannot tell a right answer from a wrong "
                         "one, and the answer-level model would fit their noise)")
    sp.add_argument("--unanswered", default=None, choices=list(UNANSWERED),
                    help="a candidate without an extracted answer where another candidate of its problem has one "
                         "(default: Weaver's, 'exclude': never selected; 'keep': an answer of its own)")
    sp.add_argument("--score-mode", default="label_free", choices=["label_free", "few_labels", "transductive"],
                    help="supervision mode of the Weaver fit whose scores are written to --out (default label_free)")
    sp.add_argument("--out", type=Path, default=None, help="folder for report.json, the model and the scores")
    return ap


def _load(args: argparse.Namespace):
    from lightning_ws.weaver.data import load_gsm8k_verification, load_weaver_table

    if args.data == "gsm8k":
        return load_gsm8k_verification(verifiers=args.verifiers, embed=args.embed, cache_dir=args.cache_dir)
    return load_weaver_table(args.data)


def main(argv: list[str] | None = None) -> int:
    """Run ``lightning-ws weaver``; returns the exit code (2 on a user error, printed as one paragraph)."""
    args = build_parser().parse_args(argv)
    try:
        return _select(args)
    except LightningWSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def weaver_kwargs(args: argparse.Namespace) -> dict:
    """The ``Weaver(...)`` arguments the user set on the command line; every other one keeps Weaver's default."""
    kw = {k: getattr(args, k) for k in ("label_model", "normalize", "binarize", "threshold", "tie_break", "unanswered")
          if getattr(args, k) is not None}
    if args.no_guard:
        kw["guard"] = False
    if args.guard_split is not None:
        kw["guard_split"] = {"auto": "auto", "on": True, "off": False}[args.guard_split]
    if args.no_groups:
        kw["group_verifiers"] = False
    if args.keep_copies:
        kw["merge_copies"] = False
    if args.keep_flat:
        kw["drop_flat"] = False
    if args.keep_answer_blind:
        kw["drop_answer_blind"] = False
    return kw


def _select(args: argparse.Namespace) -> int:
    import torch

    from lightning_ws.io import save_json, save_tensors
    from lightning_ws.weaver.report import format_report, weaver_report
    from lightning_ws.weaver.select import Weaver

    data = _load(args)
    kw = weaver_kwargs(args)
    print(f"data: {args.data}: {data.num_problems} problems x {data.num_candidates} candidates x "
          f"{data.num_verifiers} verifiers ({', '.join(data.verifier_names)})")
    if args.data == "gsm8k":
        print("note: GSM8K verifiers are offline heuristics (weak stand-ins), not the paper's reward models/judges.")
    report = None
    if data.has_labels:
        report = weaver_report(data, dev_fraction=args.dev_fraction, seed=args.seed, weaver_kwargs=kw)
        print(format_report(report))
    else:
        print("no answer_correct labels: skipping the comparison table, writing label-free scores only.")
    if args.out is not None:
        w = Weaver(seed=args.seed, **kw)
        if args.score_mode == "few_labels":
            w.fit(data, "few_labels", dev_fraction=args.dev_fraction)
        else:
            w.fit(data, args.score_mode)
        scores = w.score(data)
        sel = w.select(data)
        args.out.mkdir(parents=True, exist_ok=True)
        w.save(args.out / "weaver")
        meta = {"mode": args.score_mode, "data": str(args.data), "shape": list(scores.shape),
                "verifiers": w.verifier_names_}
        save_tensors(args.out / "weaver_scores.safetensors",
                     {"scores": torch.from_numpy(np.ascontiguousarray(scores)), "selected": torch.from_numpy(sel)},
                     metadata={"mode": args.score_mode, "data": str(args.data)})
        save_json(args.out / "weaver_scores.json", {**meta, "scores": scores.tolist(), "selected": sel.tolist()})
        if report is not None:
            save_json(args.out / "report.json", report)
        print(f"wrote {args.out}/weaver_scores.safetensors, weaver_scores.json, weaver/"
              + (", report.json" if report is not None else "") + f" (Weaver mode {args.score_mode})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
