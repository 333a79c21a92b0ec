"""An LLM-as-a-judge through the project's chat clients, for comparison with program judges (same client classes
as program generation: OpenAI-compatible, transformers, replay; cached, token- and cost-accounted).

The prompt follows the reference's baseline (``SprocketLab/PAJAMA`` ``llm_judges``, spec §11.2): the question and
responses A and B, answer with only "A" or "B", temperature 0. Unlike the reference, :class:`BiasEvaluator` calls it
in both presentation orders. An answer that does not start with A or B is "no verdict".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

__all__ = ["LLMJudge", "estimate_tokens", "load_pajama_template"]

_TEMPLATES = Path(__file__).resolve().parent / "templates"


def load_pajama_template(name: str = "pajama") -> dict[str, Any]:
    """The PAJAMA prompt templates (``lightning_ws/pajama/templates/<name>.yaml``, or a path)."""
    from lightning_ws.errors import DataFileNotFoundError

    path = Path(name) if name.endswith((".yaml", ".yml")) else _TEMPLATES / f"{name}.yaml"
    if not path.is_file():
        raise DataFileNotFoundError(f"PAJAMA template not found: {path}.")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def estimate_tokens(text: str) -> int:
    """A tokenizer-free token estimate (4 characters per token, the usual rule of thumb for English)."""
    return max(1, (len(text) + 3) // 4)


class LLMJudge:
    """Pairwise LLM judge.

    Args:
        client: a :class:`~lightning_ws.programs.ChatClient`.
        template: template name or path (default the shipped ``pajama``; key ``llm_judge``).
        max_tokens: answer budget (default 4).
        max_chars: each text is cut to this many characters in the prompt (default 6000).
    """

    def __init__(self, client: Any, *, template: str = "pajama", max_tokens: int = 4, max_chars: int = 6000) -> None:
        self.client = client
        self.tpl = load_pajama_template(template)["llm_judge"]
        self.max_tokens = max_tokens
        self.max_chars = max_chars
        self.name = f"llm:{getattr(client, 'model', 'client')}"
        self.unparsed = 0

    def messages(self, query: str, a: str, b: str) -> list[dict[str, str]]:
        c = self.max_chars
        user = self.tpl["user"].format(query=query[:c], response_a=a[:c], response_b=b[:c])
        return [{"role": "system", "content": self.tpl["system"]}, {"role": "user", "content": user}]

    @staticmethod
    def parse(text: str) -> float:
        m = re.match(r"\s*[\"'(\[]*(?:response\s+)?([AB])\b", text or "", re.IGNORECASE)
        if not m:
            return 0.5
        return 1.0 if m.group(1).upper() == "B" else 0.0

    def __call__(self, queries: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> np.ndarray:
        reqs = [{"messages": self.messages(q, a, b), "n": 1, "temperature": 0.0, "max_tokens": self.max_tokens,
                 "prompt_id": "llm_judge", "task": "pajama"} for q, a, b in zip(queries, responses_a, responses_b)]
        out = self.client.complete_many(reqs)
        p = np.array([self.parse(r.texts[0] if r.texts else "") for r in out])
        self.unparsed += int((p == 0.5).sum())
        return p

    def prompt_tokens(self, query: str, a: str, b: str) -> int:
        """Estimated prompt tokens of one judgment (:func:`estimate_tokens` over both messages)."""
        return sum(estimate_tokens(m["content"]) for m in self.messages(query, a, b))
