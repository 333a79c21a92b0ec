"""A small classifier for Grad-Mimic experiments (arXiv 2501.06708): an optional MLP body and a linear ``head``.

The ``head`` is the natural mimic layer (the paper's linear-probing setting: ``heads.head`` of a ViT on frozen
features). ``training_step`` computes per-sample cross-entropy and reduces it with
:func:`lightning_ws.gradmimic.loss.reduce_per_sample_loss`, so the same module works with
``GradMimicCallback(mode="layer_only")`` (plain mean) and ``mode="all_params"`` (weighted sum).
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_ws.contracts import IDX, LABELS, X
from lightning_ws.errors import ConfigError
from lightning_ws.gradmimic.loss import reduce_per_sample_loss
from lightning_ws.io import save_tensors

__all__ = ["GradMimicClassifier"]


class GradMimicClassifier(pl.LightningModule):
    """Linear (``hidden_dims=[]``) or MLP classifier on feature vectors ``batch[X]`` with a mimic layer ``head``.

    Optimiser: AdamW by default (the Grad-Mimic code's choice; lr 1e-3 here because the features are not ViT features).

    Args:
        input_dim: feature dimension.
        num_classes: number of classes.
        hidden_dims: widths of ReLU hidden layers before the head (empty: a linear probe).
        lr: AdamW learning rate.
        weight_decay: weight decay (paper: 1e-5).
        optimizer: ``"adamw"`` (paper) or ``"sgd"`` (plain SGD, no momentum).
        export_path: when set, the final ``state_dict`` is written there as safetensors at the end of ``fit``
            (rank 0, atomic): the file a later run passes as ``GradMimicCallback(reference=...)``.

    Logged: ``train/loss``, ``val/loss``, ``val/acc``, ``test/loss``, ``test/acc``.
    """

    def __init__(self, input_dim: int = 64, num_classes: int = 10, hidden_dims: list[int] | None = None,
                 lr: float = 1e-3, weight_decay: float = 1e-5, optimizer: str = "adamw",
                 export_path: str | None = None) -> None:
        super().__init__()
        hidden_dims = list(hidden_dims or [])
        if input_dim < 1 or num_classes < 2 or any(h < 1 for h in hidden_dims):
            raise ConfigError(f"need input_dim >= 1, num_classes >= 2 and positive hidden widths; got {input_dim}, "
                              f"{num_classes}, {hidden_dims}.")
        if optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"optimizer must be 'adamw' or 'sgd', got {optimizer!r}.")
        if not lr > 0 or weight_decay < 0:
            raise ConfigError(f"need lr > 0 and weight_decay >= 0, got {lr}, {weight_decay}.")
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        d = input_dim
        for h in hidden_dims:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(d, num_classes)

    def setup(self, stage: str) -> None:
        """Check the datamodule's ``input_dim``/``num_classes`` (when it has them) against the model's."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        for attr in ("input_dim", "num_classes"):
            value = getattr(dm, attr, None)
            if isinstance(value, int) and value != self.hparams[attr]:
                raise ConfigError(f"the data has {attr}={value} but the model was built with {attr}="
                                  f"{self.hparams[attr]}; set model.init_args.{attr}: {value}.")

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` from features ``(B, ...)`` (flattened)."""
        return self.head(self.body(x.flatten(1).float()))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Per-sample cross-entropy (hard or soft labels), reduced by the Grad-Mimic protocol."""
        logits = self(batch[X])
        per = F.cross_entropy(logits, batch[LABELS], reduction="none")
        loss = reduce_per_sample_loss(self, per)
        self.log("train/loss", per.mean(), batch_size=len(per))
        return {"loss": loss, "per_sample_loss": per.detach()}

    def _eval(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        logits = self(batch[X])
        loss = F.cross_entropy(logits, batch[LABELS])
        acc = (logits.argmax(-1) == batch[LABELS]).float().mean()
        self.log_dict({f"{stage}/loss": loss, f"{stage}/acc": acc}, sync_dist=True, batch_size=len(logits))
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Validation loss and accuracy."""
        return self._eval(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Test loss and accuracy."""
        return self._eval(batch, "test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """``{"probs", "pred", "idx"}`` per example (``lightning-ws predict`` writes them to the run folder)."""
        probs = self(batch[X]).softmax(-1)
        out = {"probs": probs, "pred": probs.argmax(-1)}
        if IDX in batch:
            out[IDX] = batch[IDX]
        return out

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW (or SGD) over all trainable parameters."""
        params = [p for p in self.parameters() if p.requires_grad]
        if self.hparams.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        return torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def on_fit_end(self) -> None:
        """Export the weights as safetensors when ``export_path`` is set (global rank 0 only; no collective)."""
        if self.hparams.export_path and self.trainer.is_global_zero:
            save_tensors(self.hparams.export_path, self.state_dict(), metadata={"class": type(self).__name__})
