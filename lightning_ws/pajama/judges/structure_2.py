# HAND-WRITTEN judge program (written by a lightning_ws developer, not by an LLM), for PAJAMA (arXiv 2506.10403).
# Rubric: structural organisation. Variant 2: follows format constraints named in the query: word / sentence limits,
# "one word", "list N", JSON, "in X words"; each satisfied constraint adds, each violated one subtracts.
import re


def judging_function(query, response):
    try:
        q, r = query.lower(), response.strip()
        if not r:
            return 0.0
        words = len(r.split())
        score = 5.0
        m = re.search(r"(?:in|under|at most|no more than|less than|within)\s+(\d+)\s+words", q)
        if m:
            score += 3.0 if words <= int(m.group(1)) * 1.1 else -3.0
        m = re.search(r"(\d+|one|two|three|four|five)\s+sentences?", q)
        if m:
            nums = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5}
            n = int(nums.get(m.group(1), m.group(1)))
            got = len([s for s in re.split(r"(?<=[.!?])\s+", r) if s.strip()])
            score += 2.0 if got == n else -2.0 * min(3, abs(got - n))
        if re.search(r"\b(one|single) word\b", q):
            score += 3.0 if words <= 2 else -3.0
        m = re.search(r"\b(?:list|give|name|provide)\s+(\d+|three|five|ten)\b", q)
        if m:
            nums = {"three": 3, "five": 5, "ten": 10}
            n = int(nums.get(m.group(1), m.group(1)))
            items = len(re.findall(r"(?m)^\s*(?:[-*\u2022]|\d+[.)])\s+", r)) or len(re.split(r",|;", r))
            score += 2.0 if items == n else -1.0
        if "json" in q:
            score += 2.0 if r.lstrip("`json \n").startswith(("{", "[")) else -2.0
        return score
    except Exception:
        return 0.0
