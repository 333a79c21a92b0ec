"""Ask an LLM for judge programs: rubric x variant prompts, static checks, validation probes, code and behavioural
de-duplication, storage with the full prompt (PAJAMA arXiv 2506.10403, spec §7 and §14 ``ProgramSynthesizer``).

Differences from the reference (spec §12.1-12.2): candidates are never executed in this process (probes run in
:class:`~lightning_ws.programs.ProgramSandbox`); a slot whose attempts all fail is recorded as *missing* instead of
being filled with a length judge; duplicates are caught by code similarity (difflib ratio) and by identical probe
outputs. Prompts come from ``templates/pajama.yaml``; few-shot examples from a labelled validation split with a
fixed seed (42, as the reference).
"""

from __future__ import annotations

import difflib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lightning_ws.errors import ConfigError
from lightning_ws.pajama.data import PreferencePairs
from lightning_ws.pajama.llm_judge import load_pajama_template
from lightning_ws.pajama.scoring import JUDGE_ENTRY, JUDGE_IMPORTS, RUBRICS

__all__ = [
    "PROBES",
    "ProgramSynthesizer",
    "SynthesisReport",
    "approach_summary",
    "fewshot_examples",
    "render_judge_prompt",
]

#: Validation probes: (query, response) rows every accepted program must score with a finite number on at least
#: ``min_probe_ok`` of them, and not with one constant value.
PROBES: list[tuple[str, str]] = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of France?", "paris"),
    ("What is the capital of France?", ""),
    ("Explain photosynthesis in two sentences.",
     ("Photosynthesis is how plants turn light, water and carbon dioxide into sugar and oxygen. It happens in "
      "chloroplasts, using the pigment chlorophyll.")),
    ("Explain photosynthesis in two sentences.", "I don't know."),
    ("List three prime numbers.", "1. 2\n2. 3\n3. 5"),
    ("List three prime numbers.", "Numbers numbers numbers numbers numbers numbers."),
    ("Write a haiku about rain.", "Soft rain on the roof\nwhispers to the sleeping town\npuddles hold the sky"),
    ("", "An answer to an empty query."),
    ("Summarise: " + "word " * 3000, "A summary. " * 500),
    ("Translate 'hello' to Spanish.", "Hola. \u00a1Hola! \u4f60\u597d \U0001f600"),
    ("How do I make tea?", "Boil water, steep the tea bag for 3 minutes, then remove it and add milk if you like."),
]


def fewshot_examples(pairs: PreferencePairs, n: int = 10, seed: int = 42, max_chars: int = 500) -> tuple[str, list[str]]:
    """``n`` labelled pairs drawn with ``seed`` (text block for the prompt, ids). Pass a *validation* split."""
    idx = [i for i in range(len(pairs)) if pairs.y[i] >= 0]
    rng = random.Random(seed)
    pick = sorted(rng.sample(idx, min(n, len(idx))))

    def cut(t: str) -> str:
        return t if len(t) <= max_chars else t[:max_chars] + " [...]"

    blocks = []
    for k, i in enumerate(pick, 1):
        blocks.append(f"Example {k}\nQuery: {cut(pairs.queries[i])}\nResponse A: {cut(pairs.responses_a[i])}\n"
                      f"Response B: {cut(pairs.responses_b[i])}\nVerdict: {'B' if pairs.y[i] == 1 else 'A'} is "
                      f"better")
    return "\n\n".join(blocks), [pairs.ids[i] for i in pick]


def approach_summary(source: str) -> str:
    """A one-line summary of a program's approach: its first comment or docstring line, else its first lines."""
    for line in source.splitlines():
        s = line.strip()
        if s.startswith("#") and len(s) > 8 and "HAND-WRITTEN" not in s:
            return s.lstrip("# ")[:200]
    m = re.search(r'"""(.+?)(?:"""|\n)', source)
    if m:
        return m.group(1).strip()[:200]
    body = " ".join(ln.strip() for ln in source.splitlines() if ln.strip() and not ln.strip().startswith("import"))
    return body[:200]


@dataclass
class _Rendered:
    system: str
    user: str
    prompt_id: str
    template_version: int
    example_ids: list[str]

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system}, {"role": "user", "content": self.user}]


def render_judge_prompt(rubric: str, variant: int, n_variants: int = 8, *, existing: Sequence[str] = (),
                        examples: str = "", example_ids: Sequence[str] = (), template: str = "pajama") -> _Rendered:
    """The program prompt of one (rubric, variant) slot, in the template's block order (spec §7.3)."""
    tpl = load_pajama_template(template)
    rubrics = tpl.get("rubrics", {})
    if rubric not in rubrics:
        raise ConfigError(f"unknown rubric {rubric!r}; the template has {sorted(rubrics)}.")
    fields = {"rubric_name": rubrics[rubric]["name"], "rubric_description": rubrics[rubric]["description"],
              "variant": variant, "n_variants": n_variants,
              "existing": "\n".join(f"- {e}" for e in existing), "examples": examples,
              "allowed_imports": ", ".join(JUDGE_IMPORTS)}
    parts = []
    for block in tpl["program"]["blocks"]:
        cond = block.get("when")
        if cond and not fields.get(cond):
            continue
        parts.append(block["text"].format(**fields))
    return _Rendered(tpl["program"]["system"], "\n\n".join(parts), f"{rubric}_v{variant}", int(tpl["version"]),
                     list(example_ids))


@dataclass
class SynthesisReport:
    """What :meth:`ProgramSynthesizer.generate` did: accepted programs, missing slots, attempts, rejections by
    reason, tokens and cost."""

    programs: list[Any] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    attempts: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"accepted": len(self.programs), "missing": list(self.missing), "attempts": self.attempts,
                "rejected": dict(self.rejected), "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "cost_usd": round(self.cost_usd, 6)}


class ProgramSynthesizer:
    """Generate ``len(rubrics) x n_variants`` judge programs through any chat client.

    Args:
        client: a :class:`~lightning_ws.programs.ChatClient` (OpenAI-compatible, transformers, replay).
        store: a :class:`~lightning_ws.programs.ProgramStore`; accepted programs go there (task ``pajama``, family
            ``pajama``, prompt id ``<rubric>_v<variant>``), with prompt, response, usage and cost.
        sandbox: a running :class:`~lightning_ws.programs.ProgramSandbox` for the probes (else one is started).
        rubrics: rubric keys (default all ten of :data:`~lightning_ws.pajama.scoring.RUBRICS`).
        n_variants: variants per rubric (8).
        max_attempts_per_slot, max_attempts_total: budgets (5 and 200, as the reference).
        temperature, max_tokens: sampling (0.7 and 5000, as the reference).
        examples: labelled *validation* pairs for the few-shot block (``None`` = no examples).
        n_examples, example_seed: few-shot size and seed (10 and 42).
        similarity_threshold: reject a program whose code's difflib ratio to an accepted one is at least this.
        min_probe_ok: share of probes that must return a finite score (0.9).
    """

    def __init__(self, client: Any, store: Any, *, sandbox: Any = None, rubrics: Sequence[str] | None = None,
                 n_variants: int = 8, max_attempts_per_slot: int = 5, max_attempts_total: int = 200,
                 temperature: float = 0.7, max_tokens: int = 5000, examples: PreferencePairs | None = None,
                 n_examples: int = 10, example_seed: int = 42, similarity_threshold: float = 0.9,
                 min_probe_ok: float = 0.9, template: str = "pajama") -> None:
        self.rubrics = list(rubrics) if rubrics is not None else list(RUBRICS)
        bad = [r for r in self.rubrics if r not in RUBRICS]
        if bad:
            raise ConfigError(f"unknown rubrics {bad}; choose from {list(RUBRICS)}.")
        if n_variants < 1 or max_attempts_per_slot < 1 or max_attempts_total < 1:
            raise ConfigError("n_variants, max_attempts_per_slot and max_attempts_total must be >= 1.")
        self.client, self.store, self.sandbox = client, store, sandbox
        self.n_variants = n_variants
        self.max_attempts_per_slot, self.max_attempts_total = max_attempts_per_slot, max_attempts_total
        self.temperature, self.max_tokens = temperature, max_tokens
        self.similarity_threshold, self.min_probe_ok = similarity_threshold, min_probe_ok
        self.template = template
        self.examples, self.example_ids = ("", [])
        if examples is not None:
            self.examples, self.example_ids = fewshot_examples(examples, n_examples, example_seed)

    def _probe(self, source: str) -> tuple[str | None, np.ndarray]:
        from lightning_ws.programs.sandbox import ProgramSandbox

        own = self.sandbox is None
        sb = self.sandbox or ProgramSandbox(workers=1)
        try:
            res = sb.run([{"source": source, "entry": JUDGE_ENTRY}], PROBES, output="float", entry=JUDGE_ENTRY)
        finally:
            if own:
                sb.close()
        vals = res.values[:, 0]
        ok = np.isfinite(vals)
        if ok.mean() < self.min_probe_ok:
            kinds = sorted({e["kind"] for e in res.errors}) or ["non-numeric output"]
            return f"probe_failures ({', '.join(kinds)})", vals
        if np.nanmax(vals) - np.nanmin(vals) < 1e-12:
            return "constant_output", vals
        return None, vals

    def generate(self) -> SynthesisReport:
        """Fill every (rubric, variant) slot, or record it as missing."""
        from lightning_ws.programs.generate import check_program, extract_code
        from lightning_ws.programs.store import Program

        rep = SynthesisReport()
        seen_outputs: list[np.ndarray] = []

        def reject(reason: str) -> None:
            key = reason.split(" ")[0]
            rep.rejected[key] = rep.rejected.get(key, 0) + 1

        for rubric in self.rubrics:
            accepted: list[str] = []
            for variant in range(1, self.n_variants + 1):
                done = False
                for _ in range(self.max_attempts_per_slot):
                    if rep.attempts >= self.max_attempts_total:
                        break
                    rp = render_judge_prompt(rubric, variant, self.n_variants,
                                             existing=[approach_summary(s) for s in accepted],
                                             examples=self.examples, example_ids=self.example_ids,
                                             template=self.template)
                    rep.attempts += 1
                    res = self.client.complete(rp.messages(), n=1, temperature=self.temperature,
                                               max_tokens=self.max_tokens, prompt_id=rp.prompt_id, task="pajama")
                    rep.prompt_tokens += int(res.usage.get("prompt_tokens", 0)) if res.usage else 0
                    rep.completion_tokens += int(res.usage.get("completion_tokens", 0)) if res.usage else 0
                    rep.cost_usd += float(res.cost_usd or 0.0)
                    text = res.texts[0] if res.texts else ""
                    code = extract_code(text, JUDGE_ENTRY)
                    chk = check_program(code, JUDGE_ENTRY, n_args=2, allowed_imports=JUDGE_IMPORTS)
                    if not chk.ok:
                        reject("static_check")
                        continue
                    if any(difflib.SequenceMatcher(None, code, a).ratio() >= self.similarity_threshold
                           for a in accepted):
                        reject("similar_code")
                        continue
                    why, vals = self._probe(code)
                    if why is not None:
                        reject(why)
                        continue
                    rounded = np.round(vals, 9)
                    if any(np.array_equal(rounded, o, equal_nan=True) for o in seen_outputs):
                        reject("same_behaviour")
                        continue
                    prog = Program(source=code, entry=JUDGE_ENTRY, task="pajama", family="pajama",
                                   prompt_id=rp.prompt_id, model=res.model, system_prompt=rp.system, prompt=rp.user,
                                   template=self.template, template_version=rp.template_version, response=text,
                                   usage=dict(res.usage or {}), cost_usd=res.cost_usd, checks=chk.to_dict(),
                                   name=f"{rubric}_v{variant}",
                                   extra={"rubric": RUBRICS[rubric], "variant": variant,
                                          "example_ids": rp.example_ids, "client": type(self.client).__name__,
                                          "temperature": self.temperature, "probe_outputs": [float(v) if np.isfinite(v) else None
                                                            for v in vals]})
                    rep.programs.append(self.store.add(prog))
                    accepted.append(code)
                    seen_outputs.append(rounded)
                    done = True
                    break
                if not done:
                    rep.missing.append(f"{rubric}_v{variant}")
        return rep
