# HAND-WRITTEN judge program (written by a lightning_ws developer, not by an LLM), for PAJAMA (arXiv 2506.10403).
# Rubric: clarity and conciseness. Variant 1: length appropriate to the query: the best length grows with the
# query's length and with how open-ended it is; too short and much too long both lose (log-ratio to a target).
import math


def judging_function(query, response):
    try:
        n = len(response.split())
        if n == 0:
            return 0.0
        q = query.lower()
        target = 25 + 0.5 * min(400, len(query.split()))
        if any(k in q for k in ("explain", "describe", "write", "essay", "story", "list", "steps", "how")):
            target *= 3
        if any(k in q for k in ("one word", "one sentence", "briefly", "short", "yes or no", "single")):
            target /= 4
        return 10.0 - 3.0 * abs(math.log((n + 1.0) / (target + 1.0)))
    except Exception:
        return 0.0
