# HAND-WRITTEN judge program (written by a lightning_ws developer, not by an LLM), for PAJAMA (arXiv 2506.10403).
# Rubric: evidence density and specificity. Variant 1: specific tokens (numbers, units, proper nouns, quoted terms,
# examples) per sentence, against generic vague words ("things", "stuff", "various", "etc").
import re


def judging_function(query, response):
    try:
        sents = [s for s in re.split(r"(?<=[.!?])\s+|\n+", response) if s.strip()]
        if not sents:
            return 0.0
        spec = len(re.findall(r"\b\d+(?:\.\d+)?\s*(?:%|km|kg|mg|ml|cm|mm|m|g|s|hours?|minutes?|years?|days?)?\b", response))
        spec += len(re.findall(r"\"[^\"]{2,40}\"|'[^']{2,40}'", response))
        spec += len(re.findall(r"\b(for example|for instance|such as|e\.g\.)", response, re.IGNORECASE))
        vague = len(re.findall(r"\b(things?|stuff|various|etc|something|somehow|many ways)\b", response, re.IGNORECASE))
        return 5.0 + 3.0 * min(2.0, spec / len(sents)) - 1.0 * min(4.0, vague)
    except Exception:
        return 0.0
