# HAND-WRITTEN judge program (written by a lightning_ws developer, not by an LLM), for PAJAMA (arXiv 2506.10403).
# Rubric: reasoning transparency and step-wise formulation. Variant 1: explicit steps (numbered lines, "step",
# "first ... then"), equations, and a stated conclusion ("so", "therefore", "the answer is").
import re


def judging_function(query, response):
    try:
        text = response
        if not text.strip():
            return 0.0
        steps = len(re.findall(r"(?m)^\s*(?:\d+[.)]|step\s*\d+)", text, flags=re.IGNORECASE))
        eqs = len(re.findall(r"\d\s*[-+*/x=]\s*\d", text))
        concl = len(re.findall(r"\b(therefore|thus|so the|the answer is|in conclusion|in summary)\b", text, re.IGNORECASE))
        return min(5.0, steps) + min(3.0, 0.5 * eqs) + min(2.0, 2.0 * concl)
    except Exception:
        return 0.0
