"""Compare program judges with their baselines on a labelled preference set (what the benchmark and
``lightning-ws pajama evaluate`` print).

Protocol (PAJAMA's, spec §9, with a split we can state): the set is split by a salted hash of the row id into a
validation part (``val_fraction``, stratified by subset) and a report part. Labels of the validation part choose
bounds, thresholds, programs and ``k``; the label model is fitted without labels on validation + report votes;
every number is measured on the report part only. Swap consistency re-scores the swapped pairs in the sandbox.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from lightning_ws.pajama.aggregate import pairwise_metrics, pairwise_votes, score_differences, verdicts_from_proba
from lightning_ws.pajama.bias import fixed_verdict_judge, length_judge
from lightning_ws.pajama.data import PreferencePairs, split_by_id
from lightning_ws.pajama.pipeline import REFERENCE_CONFIG, JudgeConfig, ProgramJudgePipeline
from lightning_ws.pajama.scoring import cpu_seconds, score_pairs

__all__ = ["compare_judges", "format_rows", "swap_consistency"]


def swap_consistency(p: np.ndarray, p_swapped: np.ndarray) -> float:
    """Share of pairs whose verdict on (B, A) mirrors the verdict on (A, B) (no verdict twice = consistent)."""
    v, vs = verdicts_from_proba(p), verdicts_from_proba(p_swapped)
    return float((np.where(vs < 0, vs, 1 - vs) == v).mean()) if len(v) else float("nan")


def compare_judges(pairs: PreferencePairs, programs: Sequence[Any], *, val_fraction: float = 0.3, seed: int = 0,
                   config: JudgeConfig | None = None, sandbox: Any = None, cache_dir: str | Path | None = None,
                   by_subset: bool = True, extra_aggregators: Sequence[str] = ("dawid_skene",)) -> dict[str, Any]:
    """Rows ``{method, subset, n, acc_all, acc_all_strict, acc_covered, coverage, swap_consistency}`` on the report
    part, plus the fitted pipeline summaries and timing.

    Methods: ``programs+<aggregator>`` (ours, ``config``), ``programs+majority_vote`` and ``programs+<extra>`` for
    each of ``extra_aggregators`` (same programs and thresholds, another aggregator),
    ``programs, reference rules`` (:data:`~lightning_ws.pajama.pipeline.REFERENCE_CONFIG`: the reference's threshold,
    ranking and ``k`` rules, a Dawid-Skene label model fitted on validation votes only, as the reference's Snorkel
    model), ``all programs, sign
    vote`` (every program, threshold 0, no selection), ``single best program`` (the first of our ranking),
    ``prefer longer``, and the shipped verdicts of other judges when the set has them (``gpt35_verdict``,
    ``pandalm7b_verdict``; one presentation order only, so no swap consistency).
    """
    cfg = config or JudgeConfig()
    strata = pairs.subsets if pairs.subsets and any(pairs.subsets) else None
    val_idx, rep_idx = split_by_id(pairs.ids, val_fraction, seed=seed, strata=strata)
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    ps = score_pairs(programs, pairs.queries, pairs.responses_a, pairs.responses_b, sandbox=sandbox,
                     cache_dir=cache_dir)
    sw = score_pairs(programs, pairs.queries, pairs.responses_b, pairs.responses_a, sandbox=sandbox,
                     cache_dir=cache_dir)
    score_wall, score_cpu = time.perf_counter() - t0, cpu_seconds() - c0
    S, Ssw, names = ps.scores, sw.scores, ps.names
    y = pairs.y
    yv, yr = y[val_idx], y[rep_idx]
    pool = S[rep_idx]

    methods: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    summaries: dict[str, Any] = {}
    ours = ProgramJudgePipeline(cfg).fit(S[val_idx], yv, pool_scores=pool, names=names)
    methods[f"programs+{cfg.aggregator}"] = (ours.predict_proba(S), ours.predict_proba(Ssw))
    summaries["ours"] = ours.summary()
    if cfg.aggregator != "majority_vote":
        mv = ProgramJudgePipeline(replace(cfg, aggregator="majority_vote")).fit(S[val_idx], yv, pool_scores=pool,
                                                                                 names=names)
        methods["programs+majority_vote"] = (mv.predict_proba(S), mv.predict_proba(Ssw))
        summaries["majority_vote"] = mv.summary()
    for agg in extra_aggregators:
        if agg in (cfg.aggregator, "majority_vote"):
            continue
        other = ProgramJudgePipeline(replace(cfg, aggregator=agg)).fit(S[val_idx], yv, pool_scores=pool, names=names)
        methods[f"programs+{agg}"] = (other.predict_proba(S), other.predict_proba(Ssw))
    ref = ProgramJudgePipeline(replace(REFERENCE_CONFIG, seed=cfg.seed)).fit(
        S[val_idx], yv, pool_scores=pool, names=names)
    methods["programs, reference rules (DS on val)"] = (ref.predict_proba(S), ref.predict_proba(Ssw))
    summaries["reference_rules"] = ref.summary()

    def sign_vote(scores: np.ndarray) -> np.ndarray:
        L = pairwise_votes(score_differences(scores), 0.0)
        nb, na = (L == 1).sum(1), (L == 0).sum(1)
        return np.where(nb + na > 0, nb / np.maximum(nb + na, 1), 0.5)

    methods["all programs, sign vote"] = (sign_vote(S), sign_vote(Ssw))
    best = ours.selection.order[0] if ours.selection and ours.selection.order else None
    if best is not None:
        def single(scores: np.ndarray) -> np.ndarray:
            L = ours.votes(scores)[:, best]
            return np.where(L == 1, 1.0, np.where(L == 0, 0.0, 0.5))

        methods[f"single best program ({names[best]})"] = (single(S), single(Ssw))
    methods["prefer longer"] = (length_judge(pairs.queries, pairs.responses_a, pairs.responses_b),
                                length_judge(pairs.queries, pairs.responses_b, pairs.responses_a))
    for key, label in (("gpt35_verdict", "GPT-3.5 verdicts (shipped)"),
                       ("pandalm7b_verdict", "PandaLM-7B verdicts (shipped)")):
        if pairs.extra and key in pairs.extra[0]:
            methods[label] = (fixed_verdict_judge([e.get(key) for e in pairs.extra]), None)

    groups: list[tuple[str, np.ndarray]] = [("all", rep_idx)]
    if by_subset and strata is not None:
        subs = np.asarray(pairs.subsets)
        groups += [(s, rep_idx[subs[rep_idx] == s]) for s in dict.fromkeys(pairs.subsets)]
    rows = []
    for gname, idx in groups:
        for mname, (p, psw) in methods.items():
            m = pairwise_metrics(p[idx], y[idx])
            m["swap_consistency"] = swap_consistency(p[idx], psw[idx]) if psw is not None else float("nan")
            rows.append({"data": pairs.name, "subset": gname, "method": mname, **m})
    return {"rows": rows, "pipelines": summaries, "n_val": len(val_idx), "n_report": len(rep_idx),
            "n_programs": len(names), "score_seconds": score_wall, "score_cpu_seconds": score_cpu,
            "error_rates": dict(zip(names, ps.error_rates().tolist())), "val_y_mean": float(yv.mean()),
            "report_y_mean": float(yr.mean())}


def format_rows(rows: Sequence[dict[str, Any]], cols: Sequence[str] = ("data", "subset", "method", "n", "acc_all",
                                                                       "acc_covered", "coverage",
                                                                       "swap_consistency")) -> str:
    """A Markdown table of ``rows`` (floats with 3 decimals)."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "-" if np.isnan(v) else f"{v:.3f}"
        return str(v)

    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(out)
