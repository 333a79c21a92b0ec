"""Alchemist's multimodal route: programs over named concept scores (arXiv 2407.11004, §4.2; spec §4.7).

A local model scores each item against a short description of each concept; the program sees only the dict
``{concept name: cosine similarity}`` and must be a pure function of it. Text and images take the same path: for
text the shipped MiniLM embeds both the items and the concept descriptions; for images pass CLIP encoders
(:meth:`ConceptScorer.from_open_clip`, with an open_clip model you built and loaded yourself: nothing is downloaded).
The score dicts go to the sandbox like texts do (``ProgramSandbox.run(programs, scorer.scores(items))``), so the
same programs, store, cache and label models serve both.

Steps: ask the LLM for discriminative concepts (:func:`render_concept_prompts` renders the concept query and, once
you have concepts, the program prompt of ``templates/alchemist_concepts.yaml``), score items, generate programs,
apply them, aggregate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from lightning_ws.errors import ConfigError

__all__ = ["ConceptScorer", "render_concept_prompts", "parse_concepts"]

Encoder = Callable[[Sequence[Any]], np.ndarray]


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class ConceptScorer:
    """Score items against named concepts: ``s(x)[c] = cos(f_item(x), f_text(description_c))``.

    Args:
        concepts: concept name -> description (the text embedded for it), e.g. ``{"wing_shape": "a photo of a bird
            with long pointed wings"}``. Names must be identifiers (programs index the dict by them).
        encode_items: items -> ``(n, d)`` embeddings (default: MiniLM sentence embeddings of texts).
        encode_texts: concept descriptions -> ``(c, d)`` embeddings in the same space (default: MiniLM).
        model_path: MiniLM folder for the defaults (``None`` = the shipped one).
        decimals: scores are rounded (stable cache keys, readable prompts).
    """

    def __init__(self, concepts: Mapping[str, str], *, encode_items: Encoder | None = None,
                 encode_texts: Encoder | None = None, model_path: str | None = None, batch_size: int = 64,
                 decimals: int = 4) -> None:
        if not concepts:
            raise ConfigError("ConceptScorer needs at least one concept.")
        bad = [c for c in concepts if not str(c).isidentifier()]
        if bad:
            raise ConfigError(f"concept names must be identifiers (programs read scores['name']); got {bad}.")
        self.concepts = dict(concepts)
        self.names = list(self.concepts)
        self.decimals = decimals
        if encode_items is None or encode_texts is None:
            from lightning_ws.sentence_embeddings import encode_sentences, load_sentence_encoder

            tok, model = load_sentence_encoder(model_path)

            def minilm(texts: Sequence[Any]) -> np.ndarray:
                return encode_sentences(tok, model, [str(t) for t in texts], batch_size=batch_size).numpy()

            encode_items = encode_items or minilm
            encode_texts = encode_texts or minilm
        self.encode_items = encode_items
        self._concept_emb = _normalize(encode_texts([self.concepts[c] for c in self.names]))

    @classmethod
    def from_open_clip(cls, model: Any, preprocess: Callable[[Any], Any], tokenizer: Callable[[list[str]], Any],
                       concepts: Mapping[str, str], *, device: str = "cpu", batch_size: int = 64,
                       **kwargs: Any) -> ConceptScorer:
        """CLIP similarities for images: ``model`` from ``open_clip.create_model_and_transforms`` (weights loaded by
        you), its ``preprocess`` and ``open_clip.get_tokenizer(...)``. Items are PIL images."""
        import torch

        def images(items: Sequence[Any]) -> np.ndarray:
            out = []
            for s in range(0, len(items), batch_size):
                x = torch.stack([preprocess(im) for im in items[s:s + batch_size]]).to(device)
                with torch.no_grad():
                    out.append(model.encode_image(x).float().cpu().numpy())
            return np.concatenate(out) if out else np.zeros((0, 1))

        def texts(t: Sequence[str]) -> np.ndarray:
            with torch.no_grad():
                return model.encode_text(tokenizer(list(t)).to(device)).float().cpu().numpy()

        return cls(concepts, encode_items=images, encode_texts=texts, **kwargs)

    def matrix(self, items: Sequence[Any]) -> np.ndarray:
        """``(n, c)`` cosine similarities, columns in :attr:`names` order."""
        if len(items) == 0:
            return np.zeros((0, len(self.names)))
        return np.round(_normalize(self.encode_items(items)) @ self._concept_emb.T, self.decimals)

    def scores(self, items: Sequence[Any]) -> list[dict[str, float]]:
        """One ``{concept: score}`` dict per item: the rows programs are applied to."""
        return [dict(zip(self.names, map(float, row))) for row in self.matrix(items)]


def parse_concepts(text: str) -> dict[str, str]:
    """Concepts from an LLM answer with lines ``name: description`` (bullets and numbering allowed)."""
    import re

    out: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"\s*(?:[-*\d.)]+\s*)?`?([A-Za-z_][A-Za-z0-9_]*)`?\s*[:=-]\s*(.+)", line)
        if m and m.group(1).lower() not in ("note", "concepts", "example"):
            out[m.group(1)] = m.group(2).strip()
    return out


def render_concept_prompts(task: Any, concepts: Mapping[str, str] | None = None, *, n_concepts: int = 6,
                           template: Any = "alchemist_concepts") -> Any:
    """The concept query (``concepts=None``) or the program prompt over the given concepts.

    Returns:
        A :class:`~lightning_ws.programs.prompts.RenderedPrompt`.
    """
    from lightning_ws.programs.prompts import RenderedPrompt, _fields, _fill, load_template

    tpl = load_template(template) if isinstance(template, str) else template
    fields = _fields(task, alchemist=False)
    fields["n_concepts"] = n_concepts
    if concepts is None:
        return RenderedPrompt(system=_fill(tpl.prior_system, fields, tpl.name),
                              user=_fill(tpl.prior_user, fields, tpl.name), prompt_id="concepts_query",
                              template=tpl.name, template_version=int(tpl.version), family=tpl.family, task=task.name)
    fields["concept_list"] = "\n".join(f"- {k}: {v}" for k, v in concepts.items())
    fields["signature"] = "def label(scores: dict) -> int:"
    user = tpl.joiner.join(_fill(b["text"], fields, f"{tpl.name} block {b['id']}") for b in tpl.blocks)
    return RenderedPrompt(system=_fill(tpl.system, fields, tpl.name), user=user, prompt_id="concept_programs",
                          template=tpl.name, template_version=int(tpl.version), family=tpl.family, task=task.name)
