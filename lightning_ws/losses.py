"""Losses shared by lightning_ws modules (plain torch, no Lightning)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["soft_cross_entropy", "classification_loss"]


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy against soft targets (the noise-aware loss of data programming, Ratner et al., arXiv:1605.07723).

    ``-sum_c q_c log softmax(logits)_c`` per example, where ``q`` is a probability vector (e.g. a label model's
    posterior). With one-hot ``q`` it equals ``F.cross_entropy``.

    Args:
        logits: ``(B, k)`` unnormalised scores.
        targets: ``(B, k)`` non-negative rows summing to 1.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """
    if targets.shape != logits.shape:
        raise ValueError(f"soft targets must have the logits' shape {tuple(logits.shape)}, got {tuple(targets.shape)}.")
    loss = -(targets.to(logits.dtype) * F.log_softmax(logits, dim=-1)).sum(-1)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None,
                        label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example and reduced classification loss for hard (``(B,)`` int) or soft (``(B, k)`` float) labels.

    Args:
        logits: ``(B, k)``.
        labels: class ids ``(B,)`` or probability rows ``(B, k)``.
        weights: optional non-negative per-example weights ``(B,)``; the reduced loss is their weighted mean.
        label_smoothing: passed to ``F.cross_entropy`` for hard labels.

    Returns:
        ``(loss, per_example_loss)``.
    """
    if labels.dim() == 2 and labels.is_floating_point():
        per = soft_cross_entropy(logits, labels, reduction="none")
    else:
        per = F.cross_entropy(logits, labels.long(), reduction="none", label_smoothing=label_smoothing)
    if weights is None:
        return per.mean(), per
    w = weights.to(per.dtype)
    return (per * w).sum() / w.sum().clamp_min(torch.finfo(per.dtype).tiny), per
