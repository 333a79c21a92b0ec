# HAND-WRITTEN judge program (written by a lightning_ws developer, not by an LLM), for PAJAMA (arXiv 2506.10403).
# Rubric: logical coherence and argument structure. Variant 1: connective density (because, therefore, however,
# first/then/finally) per sentence, capped.
import re


def judging_function(query, response):
    try:
        text = response.lower()
        sents = [s for s in re.split(r"[.!?\n]+", text) if s.strip()]
        if not sents:
            return 0.0
        conn = ("because", "therefore", "however", "so that", "thus", "since", "first", "second", "then",
                "finally", "in addition", "for example", "as a result", "which means", "although", "while")
        hits = sum(len(re.findall(r"\b" + re.escape(c) + r"\b", text)) for c in conn)
        return 10.0 * min(1.0, hits / len(sents)) + min(3.0, len(sents) / 3.0)
    except Exception:
        return 0.0
