# HAND-WRITTEN judge program (written by a lightning_ws developer, not by an LLM), for PAJAMA (arXiv 2506.10403).
# Rubric: reasoning transparency. Variant 2: share of sentences that justify (because / since / due to / this
# means / which is why) among all sentences.
import re


def judging_function(query, response):
    try:
        sents = [s for s in re.split(r"(?<=[.!?])\s+|\n+", response) if len(s.split()) >= 3]
        if not sents:
            return 0.0
        why = re.compile(r"\b(because|since|due to|this means|which is why|as a result|so that|in order to)\b", re.IGNORECASE)
        return 10.0 * sum(1 for s in sents if why.search(s)) / len(sents) + min(2.0, len(sents) / 5.0)
    except Exception:
        return 0.0
