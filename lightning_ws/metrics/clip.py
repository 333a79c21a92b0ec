"""torchmetrics metrics for CLIP evaluation: zero-shot classification and image-text retrieval recall@k.

* :class:`ZeroShotAccuracy`: top-k accuracy of image features against a zero-shot classifier built from class-name
  prompts (:meth:`ZeroShotAccuracy.set_classifier`, or :meth:`ZeroShotAccuracy.build_classifier` from the model's
  text encoder). The classifier is not metric state (it is rebuilt from the current model each evaluation).
* :class:`RetrievalRecallAtK`: image->text and text->image recall@k over a set of images with one or more captions
  each (COCO-style: an image query is correct if any of its captions is in the top k). Features are gathered across
  ranks (``dist_reduce_fx="cat"``); images are de-duplicated by their id.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_ws.errors import ConfigError

__all__ = ["ZeroShotAccuracy", "RetrievalRecallAtK"]


class ZeroShotAccuracy(Metric):
    """Zero-shot top-k accuracy from class-name prompts (CLIP, arXiv 2103.00020).

    Args:
        classnames: class names, in label order.
        templates: prompt templates with one ``{}`` (e.g. ``"a photo of a {}."``); embeddings are averaged.
        top_k: a prediction is correct if the target is among the ``top_k`` classes.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, classnames: Sequence[str], templates: Sequence[str] = ("a photo of a {}.",), top_k: int = 1,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if not classnames:
            raise ConfigError("ZeroShotAccuracy needs at least one class name.")
        if not templates or any("{}" not in t for t in templates):
            raise ConfigError(f"every template needs one '{{}}' for the class name, got {list(templates)}.")
        if not 1 <= top_k <= len(classnames):
            raise ConfigError(f"top_k must lie in [1, {len(classnames)}], got {top_k}.")
        self.classnames, self.templates, self.top_k = list(classnames), list(templates), int(top_k)
        self.classifier: torch.Tensor | None = None
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def set_classifier(self, weights: torch.Tensor) -> None:
        """Set the ``(C, D)`` class embeddings (normalised rows)."""
        if weights.ndim != 2 or weights.shape[0] != len(self.classnames):
            raise ConfigError(f"classifier must be (num_classes={len(self.classnames)}, D), got "
                              f"{tuple(weights.shape)}.")
        self.classifier = weights.detach()

    def build_classifier(self, encode_text: Callable[[torch.Tensor], torch.Tensor],
                         tokenize: Callable[[Sequence[str]], torch.Tensor], device: torch.device | None = None) -> None:
        """Build the classifier from a text encoder (e.g. ``model.encode_text``) and a tokenizer."""
        from lightning_ws.datacomp.clip import zeroshot_classifier

        self.set_classifier(zeroshot_classifier(encode_text, tokenize, self.classnames, self.templates, device))

    def update(self, image_features: torch.Tensor, target: torch.Tensor) -> None:
        if self.classifier is None:
            raise RuntimeError("ZeroShotAccuracy: call set_classifier / build_classifier before update.")
        logits = F.normalize(image_features.float(), dim=-1) @ self.classifier.to(image_features.device).T
        top = logits.topk(self.top_k, dim=1).indices
        self.correct += (top == target.view(-1, 1)).any(1).sum()
        self.total += target.numel()

    def compute(self) -> torch.Tensor:
        return self.correct.float() / self.total.clamp(min=1)


class RetrievalRecallAtK(Metric):
    """Image->text and text->image recall@k.

    ``update(image_features, text_features, image_ids)``: one row per (image, caption) pair; rows with the same
    ``image_id`` share an image. ``compute()`` returns ``{"i2t_R@k": ..., "t2i_R@k": ...}`` for each ``k``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, k: Sequence[int] = (1, 5), **kwargs) -> None:
        super().__init__(**kwargs)
        if not k or any(int(x) < 1 for x in k):
            raise ConfigError(f"k must be a non-empty list of integers >= 1, got {list(k)}.")
        self.k = sorted(int(x) for x in k)
        self.add_state("image_features", default=[], dist_reduce_fx="cat")
        self.add_state("text_features", default=[], dist_reduce_fx="cat")
        self.add_state("image_ids", default=[], dist_reduce_fx="cat")

    def update(self, image_features: torch.Tensor, text_features: torch.Tensor, image_ids: torch.Tensor) -> None:
        self.image_features.append(F.normalize(image_features.detach().float(), dim=-1))
        self.text_features.append(F.normalize(text_features.detach().float(), dim=-1))
        self.image_ids.append(image_ids.detach().long().view(-1))

    def compute(self) -> dict[str, torch.Tensor]:
        img, txt, ids = (dim_zero_cat(self.image_features), dim_zero_cat(self.text_features),
                         dim_zero_cat(self.image_ids))
        uniq, first = _first_occurrence(ids)
        img_u = img[first]  # one row per distinct image
        owner = torch.searchsorted(uniq, ids)  # image column of each caption
        sim = img_u @ txt.T  # (I, T)
        out = {}
        for k in self.k:
            kt = min(k, sim.shape[1])
            top_t = sim.topk(kt, dim=1).indices  # (I, k) captions
            i2t = (owner[top_t] == torch.arange(len(uniq), device=sim.device)[:, None]).any(1).float().mean()
            ki = min(k, sim.shape[0])
            top_i = sim.T.topk(ki, dim=1).indices  # (T, k) images
            t2i = (top_i == owner[:, None]).any(1).float().mean()
            out[f"i2t_R@{k}"], out[f"t2i_R@{k}"] = i2t, t2i
        return out


def _first_occurrence(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted unique ids and the index of each one's first row."""
    uniq, inverse = torch.unique(ids, sorted=True, return_inverse=True)
    first = torch.full((len(uniq),), len(ids), dtype=torch.long, device=ids.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(ids), device=ids.device), reduce="amin")
    return uniq, first
