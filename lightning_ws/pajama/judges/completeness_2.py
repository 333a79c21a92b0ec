# HAND-WRITTEN judge program (written by a lightning_ws developer, not by an LLM), for PAJAMA (arXiv 2506.10403).
# Rubric: completeness and coverage. Variant 2: a truncated or unfinished answer is incomplete: penalise endings
# without closing punctuation, unbalanced brackets / code fences, and trailing ellipses.
def judging_function(query, response):
    try:
        text = response.strip()
        if not text:
            return 0.0
        score = 10.0
        if text[-1] not in ".!?)]}\"'`*>|":
            score -= 3.0
        if text.endswith("...") or text.endswith(","):
            score -= 2.0
        if text.count("```") % 2:
            score -= 3.0
        for a, b in ("()", "[]", "{}"):
            if text.count(a) != text.count(b):
                score -= 1.0
        return score
    except Exception:
        return 0.0
