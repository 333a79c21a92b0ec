"""Lightning side of the tracked-``nn.Linear`` machinery shared by :class:`~lightning_ws.callbacks.RnBCallback`,
:class:`~lightning_ws.callbacks.GradMimicCallback` and later layer-tracking callbacks.

:class:`TrackedLinear` is composed into a callback (not a base class, so the callback's own hooks stay explicit):

* the layer, resolved by dotted name with clear errors (:func:`~lightning_ws.tracked_layer.resolve_linear`);
* hook ownership: the callback's forward callback runs from the layer's one shared
  :class:`~lightning_ws.tracked_layer.LayerTap`, so two callbacks on one layer see the same plain output gradient in
  either order, and only one may re-weight it;
* the fit's fixed facts, read once per fit: world size, ``accumulate_grad_batches``, the active GradScaler (AMP),
  the logging cadence, whether a W&B logger is attached;
* rank-zero W&B output (:meth:`TrackedLinear.wandb_log`), with no collective inside.

State versioning is :func:`~lightning_ws.tracked_layer.check_state_version` (one error class for every callback).
Gradient accumulation: callbacks act once per optimizer step by comparing ``trainer.global_step`` with the step they
last acted on (:meth:`TrackedLinear.new_optimizer_step`).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from torch import nn

from lightning_ws.errors import ConfigError
from lightning_ws.tracked_layer import ForwardFn, LayerTap, TapHandle, resolve_linear

__all__ = ["StateKeyCache", "TrackedLinear", "active_scaler", "check_trainer", "gather_rows"]


def active_scaler(trainer: Any) -> Any:
    """The precision plugin's enabled ``GradScaler`` (AMP loss scaling), or ``None``."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    return scaler if scaler is not None and getattr(scaler, "is_enabled", lambda: False)() else None


def check_trainer(trainer: pl.Trainer, pl_module: pl.LightningModule, who: str, *, why_automatic: str) -> None:
    """Refuse what no layer tracker supports: sharded strategies (the layer may be split) and manual optimization."""
    strategy = type(trainer.strategy).__name__
    if "FSDP" in strategy or "DeepSpeed" in strategy:
        raise ConfigError(f"{who} does not support {strategy} (the tracked layer may be sharded); use DDP or a single "
                          f"device.")
    if not pl_module.automatic_optimization:
        raise ConfigError(f"{who} supports automatic optimization only ({why_automatic}); set "
                          f"automatic_optimization=True.")


class StateKeyCache:
    """A callback's ``state_key``, made once per identity (Lightning reads it on every hook call: profiler names)."""

    def __init__(self) -> None:
        self.ident: tuple[tuple[str, Any], ...] | None = None
        self.key = ""

    def get(self, callback: pl.Callback, **ident: Any) -> str:
        """``callback._generate_state_key(**ident)``, recomputed only when ``ident`` changed."""
        items = tuple((k, repr(v)) for k, v in ident.items())
        if items != self.ident:
            self.ident, self.key = items, callback._generate_state_key(**ident)
        return self.key


class TrackedLinear:
    """One callback's hold on its tracked ``nn.Linear`` and the facts of the running fit (see the module docstring).

    Attributes:
        module: the layer (``None`` before :meth:`attach`).
        handle: this callback's :class:`~lightning_ws.tracked_layer.TapHandle` on the layer's tap.
        world, accum, scaler, log_every, wandb: world size, ``accumulate_grad_batches``, the active GradScaler or
            ``None``, ``log_every_n_steps``, whether a ``WandbLogger`` is attached (read by :meth:`read_facts`).
    """

    def __init__(self, who: str) -> None:
        self.who = who
        self.module: nn.Linear | None = None
        self.handle: TapHandle | None = None
        self.world, self.accum, self.scaler, self.log_every, self.wandb = 1, 1, None, 50, False

    def attach(self, trainer: pl.Trainer, root: nn.Module, name: str, on_forward: ForwardFn, *, what: str = "layer",
               rewrites: bool = False) -> nn.Linear:
        """Resolve ``root.<name>``, read the fit's facts and register ``on_forward`` on the layer's tap (replacing a
        previous registration of this callback)."""
        module = resolve_linear(root, name, what=what, method=self.who)
        self.detach()
        self.read_facts(trainer)
        self.handle = LayerTap.attach(module, on_forward, rewrites=rewrites, who=self.who)
        self.module = module
        return module

    def detach(self) -> None:
        """Remove this callback's registration (idempotent)."""
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def read_facts(self, trainer: pl.Trainer) -> None:
        """Read the trainer's fixed settings once per fit (its properties cost microseconds per step)."""
        from lightning.pytorch.loggers import WandbLogger

        self.world = max(1, int(trainer.world_size))
        self.accum = int(trainer.accumulate_grad_batches)
        self.scaler = active_scaler(trainer)
        self.log_every = max(1, int(getattr(trainer, "log_every_n_steps", 50) or 1))
        self.wandb = any(isinstance(lg, WandbLogger) for lg in trainer.loggers)

    def loss_scale(self) -> float | None:
        """The GradScaler's current scale (a device sync), or ``None`` without loss scaling."""
        return float(self.scaler.get_scale()) if self.scaler is not None else None

    def unscale_replacement(self, grads: list[Any], optimizer: Any) -> list[Any] | None:
        """Gradients a callback writes into ``.grad`` in ``on_before_optimizer_step`` under AMP loss scaling: divided
        by the scale where Lightning has already unscaled ``.grad`` (optimizers without their own AMP step), and
        ``None`` when any is non-finite (an overflow step the scaler skips: the plain gradient is kept). Without a
        GradScaler they are returned as they are (no finiteness check, which would cost a device sync per step)."""
        if self.scaler is None:
            return grads
        if not getattr(optimizer, "_step_supports_amp_scaling", False):
            inv = 1.0 / self.loss_scale()
            grads = [g * inv if g is not None else None for g in grads]
        import torch

        return grads if all(g is None or bool(torch.isfinite(g).all()) for g in grads) else None

    def replace_grad(self, trainer: pl.Trainer, optimizer: Any, weight: Any, bias: Any = None) -> bool:
        """Write a replacement gradient of the layer into its ``.grad`` in ``on_before_optimizer_step``: summed over
        ranks (every rank must call it once per optimizer step), unscaled by :meth:`unscale_replacement`; nothing is
        written when the layer has no gradient or on an AMP overflow step. Returns whether it was written."""
        if self.world > 1:
            weight = trainer.strategy.reduce(weight, reduce_op="sum")
            if bias is not None:
                bias = trainer.strategy.reduce(bias, reduce_op="sum")
        layer = self.module
        if layer.weight.grad is None:
            return False
        unscaled = self.unscale_replacement([weight, bias], optimizer)
        if unscaled is None:  # an AMP overflow step (the scaler skips it): keep the plain gradient
            return False
        weight, bias = unscaled
        layer.weight.grad.copy_(weight)
        if bias is not None and layer.bias is not None and layer.bias.grad is not None:
            layer.bias.grad.copy_(bias)
        return True

    @staticmethod
    def new_optimizer_step(trainer: pl.Trainer, last_step: int) -> bool:
        """Whether an optimizer step ran since ``last_step`` (``False`` while micro-batches are accumulated)."""
        return int(trainer.global_step) != int(last_step)

    @staticmethod
    def wandb_log(trainer: pl.Trainer, payload: dict[str, Any]) -> None:
        """Log ``payload`` (plus ``trainer/global_step``) to every ``WandbLogger``, on global rank zero only."""
        from lightning.pytorch.loggers import WandbLogger

        if not trainer.is_global_zero:
            return
        for lg in trainer.loggers:
            if isinstance(lg, WandbLogger):
                lg.experiment.log({**payload, "trainer/global_step": trainer.global_step})


def gather_rows(trainer: pl.Trainer | None, t: Any) -> tuple[Any, int]:
    """All-gather a ``(n, ...)`` tensor over ranks (``n`` may differ per rank); return it and this rank's offset.
    Every rank must call it (a collective)."""
    import torch

    if trainer is None or trainer.world_size <= 1:
        return t, 0
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = trainer.strategy.all_gather(n).reshape(-1).tolist()
    pad = max(sizes) - t.shape[0]
    padded = torch.cat([t, t.new_zeros((pad, *t.shape[1:]))]) if pad else t
    allv = trainer.strategy.all_gather(padded)
    return torch.cat([allv[r, : sizes[r]] for r in range(len(sizes))]), int(sum(sizes[: trainer.global_rank]))
