# HAND-WRITTEN judge program (written by a lightning_ws developer, not by an LLM), for PAJAMA (arXiv 2506.10403).
# Rubric: language quality and readability. Variant 1: penalise shouting, repeated punctuation, broken casing and
# very long sentences; reward sentences that start with a capital and end with punctuation.
import re


def judging_function(query, response):
    try:
        text = response.strip()
        if not text:
            return 0.0
        sents = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
        good = sum(1 for s in sents if s[0].isupper() or s[0].isdigit() or not s[0].isalpha())
        score = 6.0 * good / max(1, len(sents))
        letters = [c for c in text if c.isalpha()]
        caps = sum(1 for c in letters if c.isupper()) / max(1, len(letters))
        score -= 4.0 * max(0.0, caps - 0.3)
        score -= min(2.0, 0.5 * len(re.findall(r"[!?.]{3,}", text)))
        words = [len(s.split()) for s in sents]
        long_share = sum(1 for w in words if w > 40) / max(1, len(words))
        score -= 2.0 * long_share
        if text[-1] in ".!?)\"'`":
            score += 2.0
        return score
    except Exception:
        return 0.0
