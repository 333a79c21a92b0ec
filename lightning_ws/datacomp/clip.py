"""CLIP pieces without Lightning: build an open_clip model offline, the contrastive loss, zero-shot classifiers.

* :func:`build_clip` makes an ``open_clip`` model from a config dict (e.g. :data:`TINY_CLIP_CONFIG`) or from any
  open_clip model name with optional **local** weights; nothing is downloaded.
* :func:`clip_contrastive_loss` is the symmetric InfoNCE loss of CLIP (Radford et al., arXiv 2103.00020) on features
  that may have been gathered from every data-parallel rank. With ``local_loss`` each rank scores only its own rows
  against all columns (open_clip's ``local_loss``; memory ``B x W B`` instead of ``W B x W B``). Both variants give
  the gradient of the *global-batch* loss when the gather carries gradients with sum semantics
  (``torch.distributed.nn.all_gather``) and DDP averages the parameter gradients: derivation in the docstring.
* :func:`zeroshot_classifier` averages the normalised text embeddings of class-name prompts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lightning_ws.errors import ConfigError

__all__ = ["TINY_CLIP_CONFIG", "build_clip", "clip_contrastive_loss", "zeroshot_classifier", "clip_image_transform",
           "get_tokenizer"]

#: A tiny CLIP for tests and CPU demos: 32 px ViT (patch 4, 2 layers, width 64) and a 2-layer text transformer
#: (context 32). About 3.6M parameters, most of them the 49,408 x 64 token embedding.
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 4, "head_width": 32, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2, "mlp_ratio": 2.0},
}


def build_clip(model_name: str | None = None, model_config: Mapping[str, Any] | None = None, *,
               pretrained: str | None = None, init_logit_scale: float | None = None) -> torch.nn.Module:
    """An ``open_clip`` CLIP model, built offline.

    Args:
        model_name: an open_clip model name (``open_clip.list_models()``), e.g. ``"ViT-B-32"``; ignored when
            ``model_config`` is given.
        model_config: an open_clip model config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``, ...).
        pretrained: a **local** checkpoint file to load (never a tag that would download).
        init_logit_scale: initial log temperature (open_clip's default ``log(1/0.07)`` when None).
    """
    from lightning_ws.extras import require
    require("open_clip", "datacomp", "CLIP (open_clip)")
    import open_clip

    if model_config is None and model_name is None:
        model_config = TINY_CLIP_CONFIG
    if model_config is not None:
        cfg = dict(model_config)
        if "embed_dim" not in cfg or "vision_cfg" not in cfg or "text_cfg" not in cfg:
            raise ConfigError(f"model_config needs embed_dim, vision_cfg and text_cfg; got keys {sorted(cfg)}.")
        model = open_clip.CLIP(**cfg)
    else:
        if model_name not in open_clip.list_models():
            raise ConfigError(f"unknown open_clip model {model_name!r}; see open_clip.list_models().")
        model = open_clip.create_model(model_name, pretrained=None)
    if pretrained is not None:
        path = Path(pretrained)
        if not path.is_file():
            raise ConfigError(f"pretrained must be a local checkpoint file; {path} does not exist (nothing is "
                              f"downloaded at run time).")
        open_clip.load_checkpoint(model, str(path))
    if init_logit_scale is not None:
        with torch.no_grad():
            model.logit_scale.fill_(float(init_logit_scale))
    return model


def get_tokenizer(context_length: int) -> Callable[[Sequence[str]], torch.Tensor]:
    """open_clip's CLIP BPE tokenizer (shipped with the package) at a given context length."""
    from lightning_ws.extras import require
    require("open_clip", "datacomp", "CLIP (open_clip)")
    import open_clip

    tok = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
    return lambda texts: tok(list(texts), context_length=context_length)


def clip_image_transform(image_size: int, mean: Sequence[float] = (0.48145466, 0.4578275, 0.40821073),
                         std: Sequence[float] = (0.26862954, 0.26130258, 0.27577711)) -> Callable[[Any], torch.Tensor]:
    """Deterministic preprocessing: resize the shorter side, centre crop, to tensor, normalise (CLIP statistics)."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(image_size),
                      T.ToTensor(), T.Normalize(mean, std)])


def clip_contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor, *,
                          all_image_features: torch.Tensor | None = None,
                          all_text_features: torch.Tensor | None = None, rank: int = 0,
                          local_loss: bool = False) -> torch.Tensor:
    """Symmetric contrastive loss of CLIP.

    Args:
        image_features, text_features: this rank's normalised features ``(B, D)`` (row ``i`` of each is a pair).
        logit_scale: the log temperature (a learnable scalar); logits are ``exp(logit_scale) * cos``.
        all_image_features, all_text_features: the features of every rank, concatenated in rank order ``(W B, D)``
            (None = single process: the local ones).
        rank: this rank (its rows are ``rank B .. rank B + B - 1`` of the gathered features).
        local_loss: score only this rank's rows against all columns.

    Returns the mean over pairs of ``(CE(image -> text) + CE(text -> image)) / 2``: with ``local_loss=False`` over
    the global batch (every rank computes the same value), with ``local_loss=True`` over this rank's pairs (the
    average over ranks is the global-batch loss when every rank has ``B`` pairs).

    Gradients: let ``L`` be the global loss. With a sum-semantics gathered backward, rank ``r`` gets
    ``sum_s dL_s / df_r`` for its features; DDP averages over ranks. Full loss (``L_s = L`` on every rank):
    ``(1/W) sum_r W dL/df_r df_r/dθ = dL/dθ``. Local loss (``L = (1/W) sum_s L_s``):
    ``(1/W) sum_r sum_s dL_s/df_r df_r/dθ = dL/dθ``. Both equal one process on the whole global batch.
    """
    scale = logit_scale.exp()
    all_img = image_features if all_image_features is None else all_image_features
    all_txt = text_features if all_text_features is None else all_text_features
    b = image_features.shape[0]
    if local_loss:
        labels = torch.arange(b, device=image_features.device) + rank * b
        logits_i = scale * image_features @ all_txt.T
        logits_t = scale * text_features @ all_img.T
    else:
        labels = torch.arange(all_img.shape[0], device=image_features.device)
        logits_i = scale * all_img @ all_txt.T
        logits_t = logits_i.T
    return 0.5 * (F.cross_entropy(logits_i, labels) + F.cross_entropy(logits_t, labels))


def zeroshot_classifier(encode_text: Callable[[torch.Tensor], torch.Tensor],
                        tokenize: Callable[[Sequence[str]], torch.Tensor], classnames: Sequence[str],
                        templates: Sequence[str], device: Any = None) -> torch.Tensor:
    """``(C, D)`` zero-shot weights: per class, the normalised mean of the normalised prompt embeddings."""
    if not classnames or not templates:
        raise ConfigError("zero-shot classification needs class names and at least one prompt template.")
    rows = []
    with torch.no_grad():
        for name in classnames:
            tokens = tokenize([t.format(name) for t in templates])
            if device is not None:
                tokens = tokens.to(device)
            emb = F.normalize(encode_text(tokens).float(), dim=-1).mean(0)
            rows.append(F.normalize(emb, dim=-1))
    return torch.stack(rows)


def default_logit_scale() -> float:
    """``log(1 / 0.07)``, CLIP's initial log temperature."""
    return math.log(1 / 0.07)
