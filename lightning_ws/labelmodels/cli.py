"""``lightning-ws labelmodel``: fit label models on a WRENCH-format data set and compare them side by side.

Example::

    lightning-ws labelmodel youtube
    lightning-ws labelmodel sms --models mv,ds,mm --class-balance dev --output results/sms_lm.json
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from lightning_ws.errors import ConfigError, DataError
from lightning_ws.labelmodels.base import TIE_BREAKS
from lightning_ws.labelmodels.base import score_predictions as score
from lightning_ws.labelmodels.factory import LABEL_MODEL_NAMES, make_label_model
from lightning_ws.labelmodels.matrix import LFAnalysis, _column_vote_counts, covered_mask

__all__ = ["build_parser", "main", "score"]


#: WRENCH sets whose benchmark metric is F1 of class 1 (the WRENCH paper's convention); the rest use accuracy.
WRENCH_F1_SETS = frozenset({"sms", "spouse", "cdr", "census", "basketball", "tennis", "commercial"})


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``prog="lightning-ws labelmodel"``)."""
    from lightning_ws.data._common import SHIPPED_WRENCH  # lazy, like load_wrench in main: data is not a core import

    ap = argparse.ArgumentParser(
        prog="lightning-ws labelmodel",
        description="Fit label models on the train split of a WRENCH-format data set (inductive: fit on train, "
                    "score on the evaluation split), print the LF analysis and every model's metric side by side.")
    ap.add_argument("dataset", help=f"shipped data set name ({', '.join(SHIPPED_WRENCH)}) or a folder with "
                                    "train/valid/test.json")
    ap.add_argument("--models", default=",".join(LABEL_MODEL_NAMES),
                    help="comma-separated label models or aliases (mv, wmv, ds, mm, triplet, auto); default: all")
    ap.add_argument("--class-balance", default="estimated", choices=["estimated", "dev", "uniform", "oracle"],
                    help="estimated: label-free (default); dev: smoothed valid-split label frequencies; uniform; "
                         "oracle: gold train frequencies (only to reproduce papers that do this)")
    ap.add_argument("--metric", default="auto", choices=["auto", "accuracy", "f1"],
                    help="auto = WRENCH convention: binary F1 of class 1 for sms, spouse, cdr, census, basketball, tennis "
                         "and commercial (matched by folder name), accuracy otherwise")
    ap.add_argument("--pos-label", type=int, default=1, help="positive class of the f1 metric (default 1)")
    ap.add_argument("--tie-break", default="random", choices=list(TIE_BREAKS), help="tie policy of predict")
    ap.add_argument("--eval-split", default="test", choices=["train", "valid", "test"])
    ap.add_argument("--seed", type=int, default=0, help="seed of every model (default 0)")
    ap.add_argument("--output", default=None, help="write the results as JSON to this path")
    ap.add_argument("--no-analysis", action="store_true", help="do not print the LF analysis table")
    return ap


def _results_table(rows: list[dict[str, Any]], metric: str) -> str:
    head = ["model", f"{metric} (all rows)", f"{metric} (covered)", "tie rate", "fit s", "class balance",
            "converged"]
    cells = [[r["model"], f"{100 * r['metric_all']:.2f}", f"{100 * r['metric_covered']:.2f}",
              f"{r['tie_rate']:.3f}", f"{r['fit_time_s']:.3f}", r["class_balance_source"], str(r["converged"])]
             if "skipped" not in r else [r["model"], "skipped (below)"] + ["-"] * 5 for r in rows]
    w = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    out = ["| " + " | ".join(h.ljust(x) for h, x in zip(head, w)) + " |",
           "|" + "|".join("-" * (x + 2) for x in w) + "|"]
    out += ["| " + " | ".join(c.ljust(x) for c, x in zip(row, w)) + " |" for row in cells]
    out += [f"{r['model']} skipped: {r['skipped']}" for r in rows if "skipped" in r]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0). Bad input raises ``DataError`` / ``ConfigError`` /
    ``DataFileNotFoundError`` (the top-level ``lightning-ws`` wrapper prints them)."""
    from lightning_ws.data import load_wrench
    from lightning_ws.io import save_json, to_jsonable

    args = build_parser().parse_args(argv)
    names = [s.strip() for s in args.models.split(",") if s.strip()]
    if not names:
        raise ConfigError("--models is empty; pass e.g. --models mv,ds,mm.")
    for n in names:  # fail fast on unknown names, before loading data
        make_label_model(n, seed=args.seed)
    # label models fit without gold labels: any split may hold unlabelled rows (WRENCH marks them -1); the gold
    # labels that exist are used for scoring, the dev prior and the LF analysis only
    train = load_wrench(args.dataset, "train", require_text=False, allow_unlabeled=True)
    evals = (train if args.eval_split == "train"  # transductive: the split already read
             else load_wrench(args.dataset, args.eval_split, require_text=False, allow_unlabeled=True))
    # the valid split serves only the dev prior: read it when that is asked for
    valid = None
    if args.class_balance == "dev":
        valid = (evals if args.eval_split == "valid"
                 else load_wrench(args.dataset, "valid", require_text=False, allow_unlabeled=True))
    k = train.num_classes
    if evals.weak_labels.shape[1] != train.weak_labels.shape[1]:
        raise DataError(f"the train split of {train.name} has {train.weak_labels.shape[1]} labeling-function columns "
                        f"but the {args.eval_split} split has {evals.weak_labels.shape[1]}; every split must hold "
                        f"the same LFs in the same column order (WRENCH's weak_labels lists).")
    metric = args.metric if args.metric != "auto" else ("f1" if train.name.lower() in WRENCH_F1_SETS else "accuracy")
    scored = evals.has_gold
    if not scored.any():
        raise DataError(f"the {args.eval_split} split of {train.name} has no gold labels to score against; pass "
                        f"--eval-split with a labelled split.")
    if args.class_balance == "oracle":
        if not train.has_gold.all():
            raise ConfigError("--class-balance oracle needs gold labels on every train row; this train split has "
                              f"{int((~train.has_gold).sum())} without one. Use estimated or dev.")
        cb: Any = np.bincount(train.labels, minlength=k) / len(train.labels)
    else:
        cb = args.class_balance
    if valid is not None and not valid.has_gold.any():
        raise ConfigError("--class-balance dev needs gold labels on the valid split; it has none. Use estimated.")
    analysis = (LFAnalysis(train.weak_labels, train.gold_labels, lf_names=train.lf_names, num_classes=k)
                if args.output or not args.no_analysis else None)  # built once for the table and the JSON
    if not args.no_analysis:
        n_gold = int(train.has_gold.sum())
        print(f"LF analysis, {train.name} train split"
              + (" (emp_acc uses gold labels):" if n_gold == train.n else
                 f" (emp_acc uses the gold labels of {n_gold} of {train.n} rows):" if n_gold else
                 " (no gold train labels: no emp_acc):"))
        print(analysis.to_table())
        print()
    # LFs that never vote on train leave every per-LF parameter undefined: the single models refuse them, so they
    # are dropped for every model alike (auto would ignore them anyway) and the table says so.
    votes = _column_vote_counts(train.weak_labels) > 0
    keep = np.flatnonzero(votes)
    silent_names = [nm for nm, v in zip(train.lf_names, votes) if not v]
    lf_names = [train.lf_names[j] for j in keep]
    L_train, L_eval = train.weak_labels[:, keep], evals.weak_labels[:, keep]
    if silent_names:
        print(f"{len(silent_names)} LF(s) never vote on the train split and are dropped for every model: "
              f"{silent_names[:20]}\n")
    cov = covered_mask(L_eval)
    y_eval, cov_scored = evals.labels[scored], cov[scored]
    dev_y = None if valid is None else valid.labels[valid.has_gold]
    rows = []
    for name in names:
        lm = make_label_model(name, num_classes=k, seed=args.seed)
        try:
            lm.fit(L_train, cb, dev_y=dev_y, lf_names=lf_names)
        except DataError as err:  # e.g. too few LFs for this model: the others still run, and the table says why
            if len(names) == 1:
                raise
            rows.append({"model": lm.name, "skipped": str(err)})
            continue
        pred, ties = lm.predict(L_eval, args.tie_break, return_ties=True)
        pred = pred[scored]
        rep = lm.fit_report_
        rows.append({"model": lm.name, "metric_all": score(y_eval, pred, metric, args.pos_label),
                     "metric_covered": score(y_eval[cov_scored], pred[cov_scored], metric, args.pos_label),
                     "tie_rate": float(ties.mean()), "fit_time_s": float(rep["fit_time_s"]),
                     "class_balance_source": lm.class_balance_source,
                     "class_balance": lm.class_balance_.tolist(), "converged": bool(rep.get("converged", True)),
                     "n_iter": int(rep.get("n_iter", 0)), "lf_accuracies": lm.lf_accuracies.tolist()})
    if all("skipped" in r for r in rows):
        raise DataError("no label model could be fitted on this train split: "
                        + "; ".join(f"{r['model']}: {r['skipped']}" for r in rows))
    unscored = f", {evals.n - int(scored.sum())} rows without a gold label not scored" if not scored.all() else ""
    print(f"{train.name}: fit on train (n={train.n}, m={L_train.shape[1]}), scored on {args.eval_split} "
          f"(n={int(scored.sum())}{unscored}, covered {cov_scored.mean():.3f}); metric={metric}, "
          f"class balance={args.class_balance}, "
          f"tie break={args.tie_break}, seed={args.seed}")
    print(_results_table(rows, metric))
    if args.output:
        report = {"dataset": train.name, "eval_split": args.eval_split, "metric": metric,
                  "class_balance_mode": args.class_balance, "tie_break": args.tie_break, "seed": args.seed,
                  "evaluation": "inductive (fit on train)", "eval_coverage": float(cov_scored.mean()),
                  "eval_rows_scored": int(scored.sum()), "train_rows_with_gold": int(train.has_gold.sum()),
                  "results": rows, "lfs_dropped_never_vote_on_train": silent_names,
                  "lf_analysis": analysis.summary()}
        save_json(args.output, to_jsonable(report))  # NaN (e.g. emp_acc of an LF without votes) -> null
        print(f"results written to {args.output}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
