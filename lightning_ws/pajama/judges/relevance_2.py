# HAND-WRITTEN judge program (written by a lightning_ws developer, not by an LLM), for PAJAMA (arXiv 2506.10403).
# Rubric: relevance to the query. Variant 2: cosine similarity of character-trigram profiles of query and response.
import math
from collections import Counter


def _grams(text):
    t = " ".join(text.lower().split())
    return Counter(t[i:i + 3] for i in range(max(0, len(t) - 2)))


def judging_function(query, response):
    try:
        a, b = _grams(query[-2000:]), _grams(response[:4000])
        if not a or not b:
            return 0.0
        dot = sum(v * b.get(k, 0) for k, v in a.items())
        na = math.sqrt(sum(v * v for v in a.values()))
        nb = math.sqrt(sum(v * v for v in b.values()))
        return 100.0 * dot / (na * nb)
    except Exception:
        return 0.0
