# HAND-WRITTEN judge program (written by a lightning_ws developer, not by an LLM), for PAJAMA (arXiv 2506.10403).
# Rubric: relevance to the query. Variant 1: share of the query's content words that the response uses.
import re


def judging_function(query, response):
    try:
        stop = {"the", "a", "an", "and", "or", "of", "to", "in", "on", "for", "is", "are", "be", "with", "that",
                "this", "it", "as", "by", "at", "from", "your", "you", "i", "me", "my", "can", "what", "how", "do",
                "human", "assistant", "please", "following", "given"}
        q = [w for w in re.findall(r"[a-z0-9']+", query.lower()) if len(w) > 2 and w not in stop]
        r = set(re.findall(r"[a-z0-9']+", response.lower()))
        if not response.strip():
            return 0.0
        if not q:
            return 5.0
        qs = set(q)
        return 10.0 * len(qs & r) / len(qs)
    except Exception:
        return 0.0
