"""Optimiser helpers shared by the lightning_ws modules (plain torch)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["adamw_with_head", "check_optim_args", "warmup_schedule"]


def check_optim_args(*, lr: float, head_lr: float | None, warmup_ratio: float, dropout: float) -> None:
    """Validate the optimisation arguments shared by the lightning_ws modules (``ConfigError`` naming the value)."""
    from lightning_ws.errors import ConfigError

    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}.")
    if lr <= 0 or (head_lr is not None and head_lr <= 0):
        raise ConfigError(f"learning rates must be > 0, got lr={lr}, head_lr={head_lr}.")
    if not 0.0 <= warmup_ratio < 1.0:
        raise ConfigError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}.")


def adamw_with_head(module: nn.Module, *, head_prefix: str, lr: float, head_lr: float | None,
                    weight_decay: float, eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over the trainable parameters: decoupled weight decay except on biases and norm weights, and a separate
    learning rate (``head_lr``, default ``lr``) for parameters whose name starts with ``head_prefix``; ``eps`` is
    AdamW's epsilon (default PyTorch's 1e-8)."""
    from lightning_ws.errors import ConfigError

    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ConfigError(f"eps must be a positive number, got {eps!r}.")
    decay, no_decay, head = [], [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith(head_prefix):
            head.append(param)
        elif param.dim() < 2 or "norm" in name.lower():
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr": lr},
              {"params": no_decay, "weight_decay": 0.0, "lr": lr},
              {"params": head, "weight_decay": weight_decay, "lr": head_lr or lr}]
    return torch.optim.AdamW([g for g in groups if g["params"]], eps=float(eps))


def warmup_schedule(total_steps: int, warmup_ratio: float, decay: str = "linear") -> Callable[[int], float]:
    """LR multiplier per optimizer step: linear warm-up over ``warmup_ratio * total_steps``, then ``"linear"`` or
    ``"cosine"`` decay to 0 at ``total_steps``."""
    total = max(1, int(total_steps))
    warmup = int(math.floor(warmup_ratio * total))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress)) if decay == "cosine" else max(0.0, 1.0 - progress)

    return schedule
