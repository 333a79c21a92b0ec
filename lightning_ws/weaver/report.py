"""Side-by-side evaluation of Weaver (arXiv 2506.18203) against the paper's baselines on held-out problems.

:func:`weaver_report` splits problems into a small labelled dev split and an evaluation split (seeded), then scores
on the evaluation problems: first sample, majority vote, naive ensemble (mean normalised score), the best single
verifier chosen on dev, L2 logistic regression trained on dev (a NeurIPS-review request), Weaver in each supervision
mode, and the oracle Pass@N. Every row records its supervision (``none``, ``dev`` or ``oracle``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lightning_ws.errors import ConfigError, DataError
from lightning_ws.weaver._numeric import nan_mean
from lightning_ws.weaver.data import VerificationData
from lightning_ws.weaver.distill import split_problems
from lightning_ws.weaver.scoring import (
    pass_at_k,
    score_auroc,
    selection_accuracy,
    top_answer_tie_rate,
    top_tie_rate,
)
from lightning_ws.weaver.select import (
    ScoreNormalizer,
    Weaver,
    first_sample_select,
    majority_vote_scores,
    majority_vote_select,
    select_candidates,
)

__all__ = ["naive_ensemble_scores", "best_single_verifier", "logistic_regression_scores",
           "weaver_report", "format_report", "suite_report", "suite_baselines", "SUITE_BASELINES"]


def _dev_eval_split(num_problems: int, dev_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded ``(dev, eval)`` split of problem indices (by problem, never by candidate), through the one
    :func:`~lightning_ws.weaver.distill.split_problems` of the package (its train part is the dev split)."""
    if not 0.0 < float(dev_fraction) < 1.0:
        raise ConfigError(f"dev_fraction must lie in (0, 1), got {dev_fraction}.")
    try:
        dev, _, ev = split_problems(num_problems, val_fraction=0.0, test_fraction=1.0 - float(dev_fraction),
                                    seed=seed)
    except ConfigError as e:
        raise DataError(f"{num_problems} problems are too few for a dev split of {dev_fraction}: {e}") from e
    return dev, ev


def _with_mv(data: VerificationData) -> tuple[np.ndarray, list[str]]:
    mv = majority_vote_scores(data.answer_ids())[:, :, None]
    return np.concatenate([data.scores, mv], axis=2), [*data.verifier_names, "majority_vote"]


def naive_ensemble_scores(normalized: np.ndarray) -> np.ndarray:
    """``(P, N)`` unweighted nan-mean of normalised verifier scores (the paper's "naive ensemble")."""
    return nan_mean(normalized, axis=2)


def best_single_verifier(normalized: np.ndarray, correct: np.ndarray) -> int:
    """Index of the verifier with the best Select@1 on labelled problems (ties: higher pooled AUROC, then lower index)."""
    best, key = 0, (-1.0, -1.0)
    for v in range(normalized.shape[2]):
        s = normalized[:, :, v]
        sel, _ = select_candidates(s, secondary=np.zeros_like(s), tie_break="secondary")
        acc = float(correct[np.arange(len(sel)), sel].mean())
        auc = float(score_auroc(torch.from_numpy(s), torch.from_numpy(correct)))
        k = (acc, -1.0 if np.isnan(auc) else auc)
        if k > key:
            best, key = v, k
    return best


def logistic_regression_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, *,
                               C: float = 1.0, seed: int = 0) -> np.ndarray:
    """L2 logistic regression (``class_weight="balanced"``, reference baseline) on per-candidate features.

    Missing features are imputed with the training median. Returns ``(P_test, N)`` P(correct).
    """
    from sklearn.linear_model import LogisticRegression

    V = train_x.shape[2]
    Xtr, Xte = train_x.reshape(-1, V).copy(), test_x.reshape(-1, V).copy()
    med = np.nan_to_num(np.nanmedian(Xtr, axis=0), nan=0.5)
    Xtr = np.where(np.isnan(Xtr), med, Xtr)
    Xte = np.where(np.isnan(Xte), med, Xte)
    y = train_y.reshape(-1).astype(int)
    if y.min() == y.max():
        return np.full(test_x.shape[:2], float(y[0]))
    clf = LogisticRegression(C=C, class_weight="balanced", max_iter=1000, random_state=seed).fit(Xtr, y)
    return clf.predict_proba(Xte)[:, 1].reshape(test_x.shape[:2])


def weaver_report(data: VerificationData, *, dev_fraction: float = 0.1, seed: int = 0,
                  weaver_kwargs: dict[str, Any] | None = None,
                  modes: tuple[str, ...] = ("label_free", "few_labels", "transductive")) -> dict[str, Any]:
    """Evaluate baselines and Weaver on held-out problems; returns ``{"rows": [...], "split": ..., "weaver": ...}``.

    Each row: ``method``, ``supervision`` (``none`` / ``dev`` / ``oracle``), ``select_at_1`` and, where a
    per-candidate score exists, ``auroc``, ``tie_rate`` (top score shared by two candidates) and ``answer_tie_rate``
    (shared by two candidates with different answers: the ties a selector must break; an answer-level scorer gives
    the candidates of one answer one score, so its ``tie_rate`` is high by design). Weaver rows also carry the
    ``guard`` choice (``label_model``, ``pooled_mean``, ``mean_verifier`` or ``majority_vote``). Weaver ``label_free`` /
    ``transductive`` are fitted on the evaluation problems' scores (no labels / eval prior); ``few_labels`` on dev + eval scores with dev labels.
    """
    correct = data.require_labels("weaver_report")
    dev, ev = _dev_eval_split(data.num_problems, dev_fraction, seed)
    d_dev, d_ev = data.subset(dev), data.subset(ev)
    if d_dev.verifier_names != data.verifier_names or d_ev.verifier_names != data.verifier_names:
        raise DataError("a verifier has no scores on the dev or eval split; drop it or change the split seed.")
    y_ev, y_dev = correct[ev], correct[dev]
    t_y = torch.from_numpy(y_ev)
    t_ids = torch.from_numpy(d_ev.answer_ids())
    rows: list[dict[str, Any]] = []

    def add(method: str, supervision: str, sel: np.ndarray, scores: np.ndarray | None = None, **extra: Any) -> None:
        row = {"method": method, "supervision": supervision,
               "select_at_1": float(selection_accuracy(torch.from_numpy(sel), t_y))}
        if scores is not None:
            row["auroc"] = float(score_auroc(torch.from_numpy(scores), t_y))
            row["tie_rate"] = float(top_tie_rate(torch.from_numpy(scores)))
            row["answer_tie_rate"] = float(top_answer_tie_rate(torch.from_numpy(scores), t_ids))
        row.update(extra)
        rows.append(row)

    add("first_sample", "none", first_sample_select(len(ev)))
    add("majority_vote", "none", majority_vote_select(d_ev.answer_ids()))
    raw_ev, names = _with_mv(d_ev)
    raw_dev, _ = _with_mv(d_dev)
    normalizer = ScoreNormalizer("quantile").fit(raw_ev)  # label-free, fitted on unlabeled eval scores
    norm_ev, norm_dev = normalizer.transform(raw_ev), normalizer.transform(raw_dev)
    mean_v = naive_ensemble_scores(norm_ev[:, :, :-1])
    add("mean_verifier", "none", select_candidates(mean_v, tie_break="first")[0], mean_v)
    ne = naive_ensemble_scores(norm_ev)
    add("naive_ensemble", "none", select_candidates(ne, tie_break="first")[0], ne)
    v = best_single_verifier(norm_dev, y_dev)
    s = norm_ev[:, :, v]
    add(f"best_single_verifier[{names[v]}]", "dev", select_candidates(s, secondary=ne, tie_break="secondary")[0], s)
    lr = logistic_regression_scores(norm_dev, y_dev, norm_ev, seed=seed)
    add("logistic_regression", "dev", select_candidates(lr, secondary=ne, tie_break="secondary")[0], lr)
    reports = {}
    for mode in modes:
        w = Weaver(**{"seed": seed, **(weaver_kwargs or {})})
        if mode == "few_labels":
            both = data.subset(np.concatenate([dev, ev]))
            w.fit(both, "few_labels", dev_problems=np.arange(len(dev)))
        else:
            w.fit(d_ev, mode)
        sc = w.score(d_ev)
        sel = w.select(d_ev)
        sup = {"label_free": "none", "few_labels": "dev", "transductive": "oracle"}[mode]
        add(f"weaver[{mode}]", sup, sel, sc, class_balance=w.report_["class_balance"],
            sources=len(w.report_["sources"]), guard=w.report_.get("guard", {}).get("choice"))
        reports[mode] = w.report_
    add("oracle_pass@N", "oracle", y_ev.argmax(axis=1))
    rows[-1]["pass_at_1"] = float(pass_at_k(t_y, 1))
    return {"rows": rows, "split": {"dev_problems": int(len(dev)), "eval_problems": int(len(ev)), "seed": seed,
                                    "eval_correct_rate": float(y_ev.mean())},
            "weaver": reports, "verifiers": names}


def format_report(report: dict[str, Any]) -> str:
    """Plain-text table of :func:`weaver_report` output."""
    lines = [f"{'method':<44} {'supervision':<11} {'select@1':>8} {'auroc':>6} {'ties':>6} {'ans ties':>8}  guard"]
    for r in report["rows"]:
        au = f"{r['auroc']:.3f}" if "auroc" in r and r["auroc"] == r["auroc"] else "-"
        tr = f"{r['tie_rate']:.3f}" if "tie_rate" in r else "-"
        at = f"{r['answer_tie_rate']:.3f}" if "answer_tie_rate" in r else "-"
        lines.append(f"{r['method']:<44} {r['supervision']:<11} {r['select_at_1']:>8.4f} {au:>6} {tr:>6} {at:>8}  "
                     f"{r.get('guard') or '-'}")
    lines.append("(ties: top score shared by two candidates; ans ties: by two candidates with different answers, the "
                 "ties a selector must break; guard: what Weaver's label-free guard used)")
    sp = report["split"]
    lines.append(f"(eval problems {sp['eval_problems']}, dev problems {sp['dev_problems']}, seed {sp['seed']}, "
                 f"eval correct rate {sp['eval_correct_rate']:.3f})")
    return "\n".join(lines)


#: Rows of :func:`suite_report`, in order.
SUITE_BASELINES = ("first_sample", "majority_vote", "mean_verifier", "naive_ensemble", "best_single_verifier",
                   "weaver", "oracle")


def suite_baselines(data: VerificationData) -> tuple[dict[str, float], int]:
    """Select@1 of the simple baselines of :func:`suite_report` on one whole labelled set (``first_sample``,
    ``majority_vote``, ``mean_verifier``, ``naive_ensemble``, ``best_single_verifier``; definitions there) and the
    index of the best single verifier (chosen with the set's own labels)."""
    y = data.require_labels("suite_baselines")
    P = data.num_problems
    acc = lambda sel: float(y[np.arange(P), sel].mean())
    norm = ScoreNormalizer("quantile").fit_transform(data.scores)
    mv_col = ScoreNormalizer("quantile").fit_transform(majority_vote_scores(data.answer_ids())[:, :, None])
    mean_v = naive_ensemble_scores(norm)
    ne = naive_ensemble_scores(np.concatenate([norm, mv_col], axis=2))
    best = best_single_verifier(norm, y)
    out = {"first_sample": acc(first_sample_select(P)),
           "majority_vote": acc(majority_vote_select(data.answer_ids())),
           "mean_verifier": acc(select_candidates(mean_v, tie_break="first")[0]),
           "naive_ensemble": acc(select_candidates(ne, tie_break="first")[0]),
           "best_single_verifier": acc(select_candidates(norm[:, :, best], secondary=mean_v,
                                                         tie_break="secondary")[0])}
    return out, best


def suite_report(data: VerificationData, *, seed: int = 0, weaver_kwargs: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """Label-free Weaver against the simple baselines on one whole labelled set (no split: nothing is fitted on
    labels except the *best single verifier*, which is chosen with the set's own labels - an oracle choice, marked so).

    Returns ``{"select_at_1": {row: value}, "weaver": report_, "fit_seconds": s, "correct_rate": r,
    "class_balance_estimate": pi_hat}``; rows as :data:`SUITE_BASELINES`. ``mean_verifier`` averages the quantile
    normalised real verifiers (every draw of a repeated judge counts once, as a user would average them);
    ``naive_ensemble`` adds the majority-vote pseudo-verifier column (the paper's naive ensemble); ties go to the
    first candidate for both, as in the reference.
    """
    import time

    y = data.require_labels("suite_report")
    P = data.num_problems
    acc = lambda sel: float(y[np.arange(P), sel].mean())  # noqa: E731
    out, best = suite_baselines(data)
    t0 = time.perf_counter()
    w = Weaver(**{"seed": seed, **(weaver_kwargs or {})}).fit(data, "label_free")
    sel = w.select(data)
    fit_s = time.perf_counter() - t0
    out["weaver"] = acc(sel)
    out["oracle"] = float(y.any(axis=1).mean())
    return {"select_at_1": out, "weaver": w.report_, "fit_seconds": fit_s, "correct_rate": float(y.mean()),
            "class_balance_estimate": float(w.report_["class_balance"]),
            "best_single_verifier": data.verifier_names[best]}

