# HAND-WRITTEN judge program (written by a lightning_ws developer, not by an LLM), for PAJAMA (arXiv 2506.10403).
# Rubric: evidence density and specificity. Variant 2: information density: distinct content words per 10 words, so
# padding and repetition dilute the score and specific, varied content raises it.
import re


def judging_function(query, response):
    try:
        w = re.findall(r"[a-z]+", response.lower())
        if not w:
            return 0.0
        stop = {"the", "a", "an", "and", "or", "of", "to", "in", "on", "for", "is", "are", "was", "be", "it", "that",
                "this", "with", "as", "by", "at", "you", "your", "i", "we", "they", "he", "she", "can", "will", "not"}
        content = [x for x in w if x not in stop and len(x) > 2]
        return 10.0 * len(set(content)) / len(w) + min(2.0, len(set(content)) / 20.0)
    except Exception:
        return 0.0
