# HAND-WRITTEN judge program (written by a lightning_ws developer, not by an LLM), for PAJAMA (arXiv 2506.10403).
# Rubric: factual-accuracy indicators. Variant 1: penalise self-contradiction markers and "as an AI I cannot know"
# deflections that replace an answer; reward concrete, checkable content (numbers, dates, proper nouns).
import re


def judging_function(query, response):
    try:
        text = response.strip()
        if not text:
            return 0.0
        low = text.lower()
        words = max(1, len(text.split()))
        concrete = len(re.findall(r"\b\d[\d,.]*\b", text)) + len(re.findall(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-z]{2,}", text))
        score = 5.0 + 10.0 * min(0.3, concrete / words)
        for cue in ("i don't know", "i do not know", "i'm not sure", "i am not sure", "i cannot", "i can't",
                    "as an ai", "i'm just", "not able to", "no idea"):
            if cue in low:
                score -= 2.0
        return score
    except Exception:
        return 0.0
