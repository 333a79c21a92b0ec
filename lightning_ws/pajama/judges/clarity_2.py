# HAND-WRITTEN judge program (written by a lightning_ws developer, not by an LLM), for PAJAMA (arXiv 2506.10403).
# Rubric: clarity and conciseness. Variant 2: filler and hedging phrases per 100 words (lower is clearer), and
# average word length as a plain-language signal.
import re


def judging_function(query, response):
    try:
        w = re.findall(r"[A-Za-z']+", response)
        if not w:
            return 0.0
        low = " " + " ".join(x.lower() for x in w) + " "
        filler = ("basically", "actually", "really", "very", "just", "kind of", "sort of", "you know", "i mean",
                  "in order to", "it is important to note", "as mentioned", "needless to say", "of course")
        hits = sum(low.count(" " + f + " ") for f in filler)
        per100 = 100.0 * hits / len(w)
        avg = sum(len(x) for x in w) / len(w)
        return 10.0 - per100 - 1.5 * abs(avg - 4.7)
    except Exception:
        return 0.0
