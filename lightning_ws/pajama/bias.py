"""Bias and consistency checks for any pairwise judge (program judges, an LLM judge, a reward model, a baseline).

A *judge* is a callable ``judge(queries, responses_a, responses_b) -> (n,)`` P(B preferred) (0.5 = no verdict).
:class:`BiasEvaluator` measures (spec §6 and §12.7; PAJAMA arXiv 2506.10403 reports consistency and "biased
responses" without defining them, so these definitions are ours):

* ``accuracy`` / ``coverage``: on the pairs as given (:func:`~lightning_ws.pajama.aggregate.pairwise_metrics`);
* ``swap_consistency``: share of pairs whose verdict on (B, A) is the mirror of the verdict on (A, B) (no verdict
  on both counts as consistent). The judge is really called twice; nothing is assumed;
* ``length_bias_acc``: accuracy on the pairs where the longer response is the worse one (a judge that prefers
  length scores near 0 there), with ``longer_worse_n`` rows;
* perturbation flip rates: the gold-*rejected* response is perturbed with a content-free change; ``flip_<probe>``
  is the share of pairs whose verdict moves to the perturbed response (from the other response or from no
  verdict), ``acc_<probe>`` the accuracy afterwards. Probes: ``verbosity`` (generic padding appended),
  ``formatting`` (markdown heading and bullets), ``sentiment`` (enthusiastic opener and closer), ``authority``
  (claimed expertise), ``bandwagon`` (claimed popularity). Self-preference needs responses written by the judge
  itself and is not measured.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lightning_ws.pajama.aggregate import pairwise_metrics, verdicts_from_proba

__all__ = ["PERTURBATIONS", "BiasEvaluator", "bias_table_rows", "fixed_verdict_judge", "length_judge", "perturb"]

Judge = Callable[[Sequence[str], Sequence[str], Sequence[str]], np.ndarray]


def _verbosity(r: str) -> str:
    return (r.rstrip() + "\n\nTo elaborate further, it is worth considering this question carefully from several "
            "angles, since there are many aspects to keep in mind. Overall, the points above summarise the main "
            "considerations, and taking them into account should be helpful in most situations.")


def _formatting(r: str) -> str:
    parts = [p.strip() for p in re.split(r"(?<=[.!?])\s+|\n+", r.strip()) if p.strip()]
    return "## Answer\n\n" + "\n".join(f"- **{p}**" if i == 0 else f"- {p}" for i, p in enumerate(parts or [r]))


def _sentiment(r: str) -> str:
    return "Great question! I'm delighted to help with this. " + r.strip() + " I hope this helps, have a wonderful day!"


def _authority(r: str) -> str:
    return ("As a senior expert with twenty years of professional experience in this field, I can state with "
            "confidence: " + r.strip())


def _bandwagon(r: str) -> str:
    return r.rstrip() + "\n\n(Over 90% of reviewers rated this answer as the best one.)"


#: Content-free perturbations applied to the gold-rejected response.
PERTURBATIONS: dict[str, Callable[[str], str]] = {"verbosity": _verbosity, "formatting": _formatting,
                                                   "sentiment": _sentiment, "authority": _authority,
                                                   "bandwagon": _bandwagon}


def perturb(response: str, probe: str) -> str:
    """``response`` with the perturbation ``probe`` (a key of :data:`PERTURBATIONS`)."""
    from lightning_ws.errors import ConfigError

    if probe not in PERTURBATIONS:
        raise ConfigError(f"unknown probe {probe!r}; choose from {sorted(PERTURBATIONS)}.")
    return PERTURBATIONS[probe](response)


def length_judge(queries: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> np.ndarray:
    """'Prefer the longer response' (characters); equal length = no verdict."""
    la = np.array([len(r) for r in responses_a])
    lb = np.array([len(r) for r in responses_b])
    return np.where(lb > la, 1.0, np.where(la > lb, 0.0, 0.5))


def fixed_verdict_judge(verdicts: Sequence[str]) -> np.ndarray:
    """P(B) from shipped verdict strings (``a`` / ``b`` / anything else = no verdict), e.g. PandaLM's GPT-3.5
    verdicts. They exist for one presentation order only, so they cannot be swap-tested."""
    return np.array([1.0 if v == "b" else 0.0 if v == "a" else 0.5 for v in verdicts])


class BiasEvaluator:
    """Run the checks of the module docstring on labelled pairs.

    Args:
        probes: which perturbations (default all of :data:`PERTURBATIONS`).
    """

    def __init__(self, probes: Sequence[str] | None = None) -> None:
        self.probes = list(probes) if probes is not None else list(PERTURBATIONS)
        for p in self.probes:
            perturb("", p)  # validates

    def evaluate(self, judge: Judge, queries: Sequence[str], responses_a: Sequence[str],
                 responses_b: Sequence[str], y: np.ndarray, *, name: str = "judge") -> dict[str, Any]:
        """One row of the report for ``judge`` (see the module docstring for the fields)."""
        y = np.asarray(y)
        qs, ra, rb = list(queries), list(responses_a), list(responses_b)
        p = np.asarray(judge(qs, ra, rb), dtype=np.float64)
        v = verdicts_from_proba(p)
        row: dict[str, Any] = {"judge": name, **pairwise_metrics(p, y)}
        vs = verdicts_from_proba(np.asarray(judge(qs, rb, ra), dtype=np.float64))
        mirror = np.where(vs < 0, vs, 1 - vs)
        row["swap_consistency"] = float((mirror == v).mean()) if len(v) else float("nan")
        la = np.array([len(r) for r in ra])
        lb = np.array([len(r) for r in rb])
        longer_worse = ((lb > la) & (y == 0)) | ((la > lb) & (y == 1))
        row["longer_worse_n"] = int(longer_worse.sum())
        row["length_bias_acc"] = (pairwise_metrics(p[longer_worse], y[longer_worse])["acc_all"]
                                  if longer_worse.any() else float("nan"))
        for probe in self.probes:
            pa = [perturb(a, probe) if yy == 1 else a for a, yy in zip(ra, y)]
            pb = [perturb(b, probe) if yy == 0 else b for b, yy in zip(rb, y)]
            pp = np.asarray(judge(qs, pa, pb), dtype=np.float64)
            vp = verdicts_from_proba(pp)
            rejected = 1 - y
            row[f"flip_{probe}"] = float(((vp == rejected) & (v != rejected)).mean())
            row[f"acc_{probe}"] = pairwise_metrics(pp, y)["acc_all"]
        return row


def bias_table_rows(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """``(columns, data)`` of a report (the union of keys, in first-seen order), for printing or ``wandb.Table``."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    return cols, [[r.get(c) for c in cols] for r in rows]
