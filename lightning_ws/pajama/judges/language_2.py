# HAND-WRITTEN judge program (written by a lightning_ws developer, not by an LLM), for PAJAMA (arXiv 2506.10403).
# Rubric: language quality and readability. Variant 2: lexical variety (type/token ratio over a moving window) minus
# word-level repetition (the same word three times in a row, repeated bigrams), which degenerate outputs show.
import re
from collections import Counter


def judging_function(query, response):
    try:
        w = re.findall(r"[a-zA-Z']+", response.lower())
        if len(w) < 3:
            return 1.0 if w else 0.0
        win = 50
        ratios = [len(set(w[i:i + win])) / len(w[i:i + win]) for i in range(0, len(w), win) if len(w[i:i + win]) >= 5]
        ttr = sum(ratios) / len(ratios) if ratios else len(set(w)) / len(w)
        bigrams = Counter(zip(w, w[1:]))
        rep = sum(c - 1 for c in bigrams.values() if c > 1) / max(1, len(w) - 1)
        triple = sum(1 for i in range(len(w) - 2) if w[i] == w[i + 1] == w[i + 2])
        return 10.0 * ttr - 10.0 * rep - 2.0 * triple
    except Exception:
        return 0.0
