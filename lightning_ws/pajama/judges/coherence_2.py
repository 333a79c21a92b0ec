# HAND-WRITTEN judge program (written by a lightning_ws developer, not by an LLM), for PAJAMA (arXiv 2506.10403).
# Rubric: logical coherence and argument structure. Variant 2: adjacent sentences should share vocabulary (topic
# continuity): mean Jaccard overlap of content words between consecutive sentences.
import re


def judging_function(query, response):
    try:
        sents = [set(w for w in re.findall(r"[a-z]{4,}", s.lower())) for s in re.split(r"(?<=[.!?])\s+", response)]
        sents = [s for s in sents if s]
        if len(sents) < 2:
            return 3.0 if sents else 0.0
        ov = [len(a & b) / len(a | b) for a, b in zip(sents, sents[1:])]
        return 3.0 + 20.0 * sum(ov) / len(ov)
    except Exception:
        return 0.0
