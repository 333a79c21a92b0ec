# HAND-WRITTEN judge program (written by a lightning_ws developer, not by an LLM), for PAJAMA (arXiv 2506.10403).
# Rubric: structural organisation and formatting. Variant 1: headings, lists and paragraphs, matched to whether the
# query asks for a list / steps / multiple items (structure on a one-line ask earns less).
import re


def judging_function(query, response):
    try:
        if not response.strip():
            return 0.0
        lists = len(re.findall(r"(?m)^\s*(?:[-*\u2022]|\d+[.)])\s+", response))
        heads = len(re.findall(r"(?m)^\s*(?:#{1,6}\s|[A-Z][^\n]{0,40}:\s*$)", response))
        paras = len([p for p in response.split("\n\n") if p.strip()])
        wants = bool(re.search(r"\b(list|steps|ways|tips|examples|items|points|outline|\d+\s+\w+s)\b", query.lower()))
        s = min(4.0, lists / 2.0) + min(2.0, float(heads)) + min(2.0, paras / 2.0)
        return s * (1.5 if wants else 0.6) + 2.0
    except Exception:
        return 0.0
