# HAND-WRITTEN judge program (written by a lightning_ws developer, not by an LLM), for PAJAMA (arXiv 2506.10403).
# Rubric: completeness and coverage. Variant 1: does the response answer every part of the query? Count the query's
# question marks / enumerated asks and the response's distinct points (sentences, list items), with diminishing
# returns (log), so padding beyond the asks earns little.
import math
import re


def judging_function(query, response):
    try:
        text = response.strip()
        if not text:
            return 0.0
        asks = max(1, query.count("?") + len(re.findall(r"(?m)^\s*(?:\d+[.)]|[-*])\s+", query)))
        points = len([s for s in re.split(r"(?<=[.!?])\s+|\n+", text) if len(s.split()) >= 3])
        return 10.0 * min(1.0, points / (2.0 * asks)) + math.log1p(points)
    except Exception:
        return 0.0
