"""Reducing per-sample losses under Grad-Mimic's ``all_params`` re-weighting (arXiv 2501.06708), Lightning-free.

A module's ``training_step`` calls :func:`reduce_per_sample_loss` on its ``(B,)`` per-sample losses. Without a
loss-weighting callback attached to the module's trainer that is the plain mean; with one (a callback whose
``reweights_loss`` is true, such as ``GradMimicCallback(mode="all_params")``) it is that callback's
``reduce_loss(per_sample_loss)``. Modules import this function from here, never from a callback.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lightning_ws.errors import ConfigError
from lightning_ws.tracked_layer import LossReweighter

__all__ = ["LossReweighter", "reduce_per_sample_loss"]


def reduce_per_sample_loss(module: Any, per_sample_loss: Tensor) -> Tensor:
    """Reduce per-sample losses in ``training_step``: the attached re-weighting callback's weighted sum, else the mean.

    ``module`` is the LightningModule (its trainer's callbacks are searched; a module outside a trainer, or not in
    training mode, gets ``per_sample_loss.mean()``).

    Raises:
        ConfigError: more than one attached callback re-weights the loss.
    """
    trainer = getattr(module, "_trainer", None)
    reweighters = [cb for cb in (trainer.callbacks if trainer is not None else [])
                   if isinstance(cb, LossReweighter) and cb.reweights_loss]
    if len(reweighters) > 1:
        names = sorted({type(cb).__name__ for cb in reweighters})
        raise ConfigError(f"{len(reweighters)} callbacks ({', '.join(names)}) re-weight the training loss (e.g. "
                          f"GradMimicCallback instances in mode='all_params'); at most one can set the loss.")
    if not reweighters or not module.training:
        return per_sample_loss.mean()
    return reweighters[0].reduce_loss(per_sample_loss)
