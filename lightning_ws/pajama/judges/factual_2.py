# HAND-WRITTEN judge program (written by a lightning_ws developer, not by an LLM), for PAJAMA (arXiv 2506.10403).
# Rubric: factual-accuracy indicators. Variant 2: numeric consistency: numbers the query gives should reappear in an
# answer that computes with them; a response whose numbers all come from nowhere, or that contradicts itself with
# "yes ... no" openers, scores lower.
import re


def judging_function(query, response):
    try:
        text = response.strip()
        if not text:
            return 0.0
        qn = set(re.findall(r"\d+(?:\.\d+)?", query))
        rn = re.findall(r"\d+(?:\.\d+)?", text)
        score = 5.0
        if qn and rn:
            score += 3.0 * len(qn & set(rn)) / len(qn)
        elif qn and not rn:
            score -= 1.0
        first = text.lower().split(".")[0]
        if ("yes" in first.split() and "no" in first.split()):
            score -= 2.0
        return score
    except Exception:
        return 0.0
